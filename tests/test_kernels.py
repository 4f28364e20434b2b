"""The compiled counting loops (gdx.kernels, numba) give the torch path's integers, bit for bit."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import gdx
from gdx import kernels
from gdx.labelstats import LabelTracker
from gdx.stats import LevelCounts

pytest.importorskip("numba")


def _levels(units: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """Ascending per-unit levels with ties, a unit whose levels are all equal, and a one-level unit."""
    lv = torch.randn(units, count, generator=gen).sort(1).values
    lv[:, 3] = lv[:, 2]  # a tie
    lv[0] = 0.25  # all equal
    return lv


#: (layer h, w) -> (segmentation H, W): small outputs (torch's separable kernel: upsampled by
#: F.interpolate, counted compiled), large ones with integer and non-integer ratios
#: (upsampled inside the compiled loops where they match F.interpolate bit for bit).
SHAPES = [((5, 6), (20, 24)), ((5, 6), (15, 18)), ((4, 4), (72, 72)), ((5, 7), (70, 90)), ((8, 8), (128, 128))]


def _inputs(gen: torch.Generator, n: int = 3, units: int = 7, heads: int = 2, hw: tuple[int, int] = (5, 6),
            size: tuple[int, int] = (20, 24)) -> tuple[torch.Tensor, torch.Tensor]:
    acts = torch.randn(n, units, *hw, generator=gen)
    acts[:, :, 0, 0] = 0.25  # values equal to a level once upsampled: a corner pixel keeps its value
    seg = torch.randint(-1, 9, (n, heads, *size), generator=gen)
    return acts, seg


def _counts(levels: torch.Tensor, acts: torch.Tensor, seg: torch.Tensor, compiled: bool,
            monkeypatch: pytest.MonkeyPatch) -> LevelCounts:
    monkeypatch.setenv("GDX_KERNELS", "" if compiled else "torch")
    counts = LevelCounts(levels, 9, unit_chunk=3)
    counts.update(acts, seg)
    return counts


@pytest.mark.parametrize("num_levels", [1, 2, 41])
@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("shape", SHAPES)
def test_all_level_counts_equal_the_torch_path(num_levels: int, heads: int, shape: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(num_levels)
    levels = _levels(7, max(num_levels, 4), gen)[:, :num_levels].contiguous()
    levels[1:] = levels[1:] * 0.2  # most pixels above the lowest level: the dense path
    acts, seg = _inputs(gen, heads=heads, hw=shape[0], size=shape[1])
    a = _counts(levels, acts, seg, True, monkeypatch)
    b = _counts(levels, acts, seg, False, monkeypatch)
    assert torch.equal(a.above, b.above) and torch.equal(a.cooc, b.cooc)
    assert int(a.above.sum()) > 0


def test_the_compiled_upsampling_is_used_only_where_it_equals_torch() -> None:
    gen = torch.Generator().manual_seed(3)
    used = []
    for hw, size in SHAPES:
        axes = kernels.bilinear_axes((2, 7, *hw), size)
        used.append(axes is not None)
        if axes is None:
            continue
        acts = torch.randn(2, 7, *hw, generator=gen) * 10
        got = torch.empty(2, 7, *size)
        kernels._compiled().upsample(acts.numpy(), axes, got.numpy())  # type: ignore[union-attr]
        assert torch.equal(got, torch.nn.functional.interpolate(acts, size=size, mode="bilinear",
                                                                align_corners=False)), (hw, size)
    assert used[-1], "the usual case (8x8 -> 128x128) should be upsampled in the loops"


@pytest.mark.parametrize("shape", SHAPES)
def test_one_level_label_moments_equal_the_torch_path(shape: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(5)
    acts, seg = _inputs(gen, n=4, hw=shape[0], size=shape[1])
    level = (torch.rand(7, 1, generator=gen) - 0.8)  # low levels: most pixels above, the dense path
    partner = torch.tensor([2, -1, 0, 1])
    out = []
    for compiled in (True, False):
        monkeypatch.setenv("GDX_KERNELS", "" if compiled else "torch")
        tracker = LabelTracker(7, 1, 9, at_level=torch.zeros(7, dtype=torch.long))
        tracker.begin(seg, partner)
        LevelCounts(level, 9, unit_chunk=3).update(acts, seg, sink=tracker, count=False)
        out.append(tracker.state_dict())
    for name in out[0]:
        assert torch.equal(out[0][name], out[1][name]), name
    assert int(out[0]["null.cooc"].sum()) > 0 and int(out[0]["observed.above"].sum()) > 0


def test_available_only_on_cpu_and_when_not_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDX_KERNELS", "")
    assert kernels.available(torch.zeros(1))
    assert not kernels.available(torch.zeros(1, device="meta"))
    monkeypatch.setenv("GDX_KERNELS", "torch")
    assert not kernels.available(torch.zeros(1))


def test_a_dissection_is_the_same_with_and_without_the_compiled_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    from gdx.stats import LevelCounts

    ran = []
    compiled = LevelCounts._compiled

    def spy(self: LevelCounts, *args: Any) -> bool:
        ran.append(compiled(self, *args))
        return ran[-1]

    monkeypatch.setattr(LevelCounts, "_compiled", spy)
    gen, seg = gdx.load_generator("toy"), gdx.load_segmenter("toy")
    results = []
    for mode in ("", "torch"):
        monkeypatch.setenv("GDX_KERNELS", mode)
        results.append(gdx.dissect(gen, seg, "features", samples=48, batch_size=16, threshold="iqr", progress=False))
    assert any(ran)  # the compiled loops counted the first run
    a, b = (vars(r) for r in results)
    compared = [name for name, value in a.items() if isinstance(value, torch.Tensor)]
    assert "iqr" in compared and "iou_ci" in compared
    for name in compared:
        assert torch.equal(a[name], b[name]), name
