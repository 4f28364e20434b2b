"""The compiled counting loops (gdx.kernels, numba) give the torch path's integers, bit for bit."""

from __future__ import annotations

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


def _inputs(gen: torch.Generator, n: int = 3, units: int = 7, heads: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    acts = torch.randn(n, units, 5, 6, generator=gen)
    acts[:, :, 0, 0] = 0.25  # values equal to a level once upsampled: a corner pixel keeps its value
    seg = torch.randint(-1, 9, (n, heads, 20, 24), generator=gen)
    return acts, seg


def _counts(levels: torch.Tensor, acts: torch.Tensor, seg: torch.Tensor, compiled: bool,
            monkeypatch: pytest.MonkeyPatch) -> LevelCounts:
    monkeypatch.setenv("GDX_KERNELS", "" if compiled else "torch")
    counts = LevelCounts(levels, 9, unit_chunk=3)
    counts.update(acts, seg)
    return counts


@pytest.mark.parametrize("num_levels", [1, 2, 41])
@pytest.mark.parametrize("heads", [1, 2])
def test_all_level_counts_equal_the_torch_path(num_levels: int, heads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(num_levels)
    levels = _levels(7, max(num_levels, 4), gen)[:, :num_levels].contiguous()
    levels[1:] = levels[1:] * 0.2  # most pixels above the lowest level: the dense path
    acts, seg = _inputs(gen, heads=heads)
    seg_int = seg[:, :, :15, :18]  # 3x upsampling (integer scale) and 20x24 from 5x6 (4x)
    for s in (seg, seg_int):
        a = _counts(levels, acts, s, True, monkeypatch)
        b = _counts(levels, acts, s, False, monkeypatch)
        assert torch.equal(a.above, b.above) and torch.equal(a.cooc, b.cooc)
        assert int(a.above.sum()) > 0


def test_one_level_label_moments_equal_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(5)
    acts, seg = _inputs(gen, n=4)
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

    def spy(self: LevelCounts, up: torch.Tensor, labels: torch.Tensor, start: int) -> bool:
        ran.append(compiled(self, up, labels, start))
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
