"""Layers at a step: a generator whose blocks run once per denoising step (docs/diffusion.md).

A toy 3-step loop over one conv block stands in for a sampler; every expectation is a
hand-written loop over the same weights.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gdx
from gdx.tracing import LayerHooks, count_hooks

STEPS = 3


class Loop(nn.Module):
    """h = inp(z); STEPS times: h = h + tanh(blk(h)); image = tanh(out(h))."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Conv2d(3, 4, 1)
        self.blk = nn.Conv2d(4, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 3, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.inp(z)
        for _ in range(STEPS):
            h = h + torch.tanh(self.blk(h))
        return torch.tanh(self.out(h))


class LoopGen(gdx.Generator):
    name = "loop"
    steps_per_image = STEPS
    default_layer = "blk@1"

    def __init__(self) -> None:
        self._module = Loop().eval()

    @property
    def module(self) -> nn.Module:
        return self._module

    def sample_latents(self, n: int, *, seed: int) -> torch.Tensor:
        return gdx.seeded_normal(n, (3, 8, 8), seed)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return self._module(z)


def by_hand(m: Loop, z: torch.Tensor, *, zero: tuple[int, ...] = (), at: tuple[int, ...] = ()):
    """(image, [blk output at each step]) with ``zero`` units of blk zeroed at steps ``at``."""
    h, acts = m.inp(z), []
    for k in range(STEPS):
        a = m.blk(h)
        if k in at:
            a = a.clone()
            a[:, list(zero)] = 0
        acts.append(a)
        h = h + torch.tanh(a)
    return torch.tanh(m.out(h)), acts


@pytest.fixture
def gen() -> LoopGen:
    return LoopGen()


@torch.no_grad()
def test_reading_a_step_equals_the_hand_loop(gen):
    z = gen.sample_latents(2, seed=1)
    _, acts = by_hand(gen.module, z)
    with gdx.Trace(gen, ["blk@0", "blk@1", "blk@2"]) as tr:
        gen.generate(z)
    for k in range(STEPS):
        assert torch.allclose(tr[f"blk@{k}"], acts[k], atol=1e-6)
    with gdx.Trace(gen, "blk@1", stop=True) as tr:  # stop after the addressed call
        assert gen.generate(z) is None
    assert torch.allclose(tr["blk@1"], acts[1], atol=1e-6)
    assert torch.allclose(gdx.sampling.layer_output(gen, "blk@2", z), acts[2], atol=1e-6)
    assert count_hooks(gen.module) == 0


@torch.no_grad()
def test_ablating_a_window_equals_the_hand_loop(gen):
    z = gen.sample_latents(2, seed=2)
    want, _ = by_hand(gen.module, z, zero=(0, 2), at=(0, 1))
    with gdx.intervene(gen, "blk@0-1", [0, 2]):
        got = gen.generate(z)
    assert torch.allclose(got, want, atol=1e-6)
    plain, _ = by_hand(gen.module, z)
    assert not torch.allclose(got, plain, atol=1e-4)
    # the generator option ablate= and a repair's hook take addresses too
    hooks = gdx.UnitAblation.parse("blk@0-1:0,2").apply(gen).gdx_ablation_handles  # type: ignore[attr-defined]
    try:
        assert torch.allclose(gen.generate(z), want, atol=1e-6)
        assert torch.allclose(gen.generate(z), want, atol=1e-6)  # the count restarts per generate()
    finally:
        for h in hooks:
            h.remove()
    assert count_hooks(gen.module) == 0 and torch.allclose(gen.generate(z), plain, atol=1e-6)


@torch.no_grad()
def test_statistics_at_a_window_are_per_step(gen):
    z = gen.sample_latents(1, seed=3)
    with gdx.intervene(gen, "blk@1-2", [1], value="q99", samples=8) as iv:
        edited = gen.generate(z)
    rows = iv.values[0]
    assert rows.shape == (2, 4)
    for i, k in enumerate((1, 2)):
        assert torch.allclose(rows[i], gdx.unit_quantiles(gen, f"blk@{k}", 0.99, samples=8))
    h, _ = gen.module.inp(z), None
    for k in range(STEPS):
        a = gen.module.blk(h)
        if k >= 1:
            a = a.clone()
            a[:, 1] = rows[k - 1][1]
        h = h + torch.tanh(a)
    assert torch.allclose(edited, torch.tanh(gen.module.out(h)), atol=1e-6)


def test_bare_names_and_wrong_steps_are_refused_with_the_step_count(gen):
    with pytest.raises(gdx.LayerAddressError, match=r"3 times per image.*blk@1") as err:
        gdx.Trace(gen, "blk")
    assert "bare block name" in str(err.value) and isinstance(err.value, gdx.UnknownLayerError)
    with pytest.raises(gdx.LayerAddressError, match="step 3 does not exist"):
        gdx.intervene(gen, "blk@1-3", [0])
    with pytest.raises(gdx.LayerAddressError, match="no block named 'blc'"):
        gdx.Trace(gen, "blc@1")
    for bad in ("blk@", "blk@x", "@1", "blk@2-1"):
        with pytest.raises(gdx.LayerAddressError):
            gdx.Trace(gen, bad)
    assert gen.layer_names()[:4] == ["inp@0", "inp@1", "inp@2", "blk@0"]
    assert gen.block_names() == ["inp", "blk", "out"]


def test_dissection_reads_a_step_and_refuses_a_window(gen):
    seg = gdx.wrap_segmenter(lambda im: (im[:, 0] > 0).long(), labels=["dark", "bright"])
    d = gdx.dissect(gen, seg, "blk@1", samples=8, batch_size=4, seed=0)
    assert d.layer == "blk@1" and d.units == 4
    with pytest.raises(gdx.LayerAddressError, match="window of 2 steps.*blk@0, blk@1"):
        gdx.dissect(gen, seg, "blk@0-1", samples=8)


@torch.no_grad()
def test_an_interrupted_sample_leaves_no_hooks_and_the_next_is_exact(gen):
    """The hook-leak test: an exception at step 1 of 3, then a full sample under a new trace."""
    z = gen.sample_latents(2, seed=4)
    want, acts = by_hand(gen.module, z, zero=(3,), at=(2,))
    before = count_hooks(gen.module)

    def boom(name: str, out: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("interrupted at step 1")

    with pytest.raises(RuntimeError, match="interrupted"):
        with gdx.Trace(gen, "blk@1", edit=boom, record=False), gdx.intervene(gen, "blk@2", [3]):
            gen.generate(z)
    assert count_hooks(gen.module) == before
    # a permanent hook (ablate=) sees an interrupted sample too: its count restarts on the next one
    hooks = LayerHooks(gen, {"blk@2": lambda _n, out, _k: out.index_fill(1, torch.tensor([3]), 0.0)}).install()
    try:
        with pytest.raises(RuntimeError, match="interrupted"):
            with gdx.Trace(gen, "blk@1", edit=boom, record=False):
                gen.generate(z)
        with gdx.Trace(gen, ["blk@0", "blk@2"]) as tr:
            assert torch.allclose(gen.generate(z), want, atol=1e-6)
        assert torch.allclose(tr["blk@0"], acts[0], atol=1e-6)
    finally:
        hooks.remove()
    assert count_hooks(gen.module) == before


@torch.no_grad()
def test_a_generate_that_bypasses_its_module_is_caught(gen):
    """generate() must call ``module`` once: otherwise the count would go stale, silently."""

    class Bypass(LoopGen):
        def generate(self, z: torch.Tensor) -> torch.Tensor:
            return Loop.forward(self._module, z)  # runs the steps without calling the module

    bad = Bypass()
    z = bad.sample_latents(1, seed=0)
    with pytest.raises(gdx.StepCountError, match="steps_per_image=3"):
        with gdx.intervene(bad, "blk@0", [0]):
            bad.generate(z)
            bad.generate(z)
    assert count_hooks(bad.module) == 0


@torch.no_grad()
def test_a_one_step_generator_is_unchanged():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Tanh(), nn.Conv2d(4, 3, 1), nn.Tanh())
    g = gdx.wrap_generator(net, latent_shape=(3, 4, 4))
    assert g.steps_per_image == 1 and g.layer_names() == ["0", "1", "2", "3"]
    z = g.sample_latents(2, seed=0)
    with gdx.Trace(g, ["0", "2@0"]) as tr:
        g.generate(z)
    assert torch.equal(tr["0"], net[0](z)) and torch.equal(tr["2@0"], net[2](net[1](net[0](z))))
    with pytest.raises(gdx.LayerAddressError, match="once per image"):
        gdx.intervene(g, "0@1", [0])
    with gdx.intervene(g, "0", [1]):
        a = g.generate(z)
    with gdx.intervene(g, "0@0", [1]):
        assert torch.equal(g.generate(z), a)


def test_paint_and_causal_effects_take_a_step_address(gen):
    from gdx.paint.engine import PaintEngine, Stroke

    seg = gdx.wrap_segmenter(lambda im: (im[:, 0] > 0).long(), labels=["dark", "bright"])
    d = gdx.dissect(gen, seg, "blk@1", samples=8, batch_size=4, seed=0)
    engine = PaintEngine.build(gen, d, samples=8, iou_min=0.0)
    assert engine.grid == (8, 8)
    concept = next(iter(engine.concepts))
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:6, 2:6] = True
    before = engine.render(0)
    after = engine.render(0, [Stroke(concept, "remove", mask)], n_units=2)
    assert (before != after).any() and count_hooks(gen.module) == 0
    # painting a window with the units ranked at one step: per-step draw values, edits at every step
    window = PaintEngine.build(gen, d, samples=8, iou_min=0.0, edit_layer="blk@0-2")
    assert window.layer == "blk@0-2" and window.quantiles.shape == (3, 4)
    painted = window.render(0, [Stroke(concept, "draw", mask)], n_units=2)
    assert (painted != before).any() and count_hooks(gen.module) == 0
    with pytest.raises(gdx.PaintError, match="not a step window of the dissected block"):
        PaintEngine(gen, d, torch.zeros(4), edit_layer="out@0-2")
    from gdx.paint.models import dissected_step, ranking_step

    assert ranking_step("blk@0-2") == "blk@2" and ranking_step("blk@1") == "blk@1"
    assert dissected_step("blk@0-2", ["inp@1", "blk@1", "blk@0"]) == "blk@1"
    effect = gdx.causal_effect(gen, seg, "blk@0-2", [0, 1], "bright", samples=8)
    assert effect.layer == "blk@0-2" and -1.0 <= effect.removed <= 1.0 and count_hooks(gen.module) == 0
    # insertion values at a window are per step, the same numbers as at each step
    k = gdx.insertion_values(gen, seg, "blk@0-2", "bright", samples=8)
    assert k.shape == (3, 4)
    assert torch.allclose(k[1], gdx.insertion_values(gen, seg, "blk@1", "bright", samples=8))
    assert len(effect.insertion_value) == 12
    # the learned alpha runs per step too
    def probs(images: torch.Tensor) -> torch.Tensor:  # soft "bright" vs "dark", differentiable
        p = torch.sigmoid(8 * images[:, 0])
        return torch.stack([1 - p, p], dim=1)

    rank = gdx.optimize_units(gen, seg, "blk@0-2", "bright", samples=8, epochs=1, probs=probs)
    assert rank.layer == "blk@0-2" and count_hooks(gen.module) == 0


@torch.no_grad()
def test_a_repair_at_a_window_hooks_its_steps_and_refuses_weights(gen):
    from gdx.repair.search import ArtifactRepair

    fields = dict(metric="m", higher_is_better=True, candidates=[0, 2], scores=[0.0, 0.0], units=[0, 2], before=0.0,
                  after=0.0, held_out_before=0.0, held_out_after=0.0, confirmed=True, samples=1, seed=0, held_out=1,
                  held_out_seed=1)
    repair = ArtifactRepair(layer="blk@0-1", **fields)
    z = gen.sample_latents(2, seed=5)
    want, _ = by_hand(gen.module, z, zero=(0, 2), at=(0, 1))
    fixed = repair.apply(gen)
    assert torch.allclose(fixed.generate(z), want, atol=1e-6)
    fixed.gdx_repair_handle.remove()
    assert count_hooks(fixed.module) == 0
    with pytest.raises(gdx.RepairError, match="mode='hook'"):
        repair.apply(gen, mode="weights")
