"""find_artifact_units: a planted blotch unit is found, confirmed on held-out samples, removable."""

from __future__ import annotations

import pytest
import torch

from gdx.plugins.metrics.frechet import FrechetDistance, RealismScore
from gdx.errors import RepairError
from gdx.repair import ArtifactRepair, find_artifact_units
from gdx.tracing import count_hooks
from intervene_worlds import artifact_generator, clean_images, magenta_critic, quadrant_features

ARTIFACT_UNIT = 4


@pytest.fixture(scope="module")
def fd_repair():
    gen = artifact_generator()
    fd = FrechetDistance(quadrant_features)
    return gen, find_artifact_units(
        gen, "features", metric=fd, real=clean_images(400, seed=7), samples=120, held_out=120, seed=0, top=3
    )


def test_planted_artifact_unit_is_top_and_held_out_improves(fd_repair):
    _gen, rep = fd_repair
    assert rep.ranking()[0][0] == ARTIFACT_UNIT
    assert rep.units and rep.units[0] == ARTIFACT_UNIT
    assert rep.held_out_after < rep.held_out_before
    assert rep.confirmed
    assert rep.held_out_seed == 1 and not rep.higher_is_better


def test_apply_makes_a_permanent_edit_and_saves(fd_repair, tmp_path):
    gen, rep = fd_repair
    z = gen.sample_latents(8, seed=5)
    fixed = rep.apply(gen)
    assert count_hooks(gen.module) == 0  # the original is untouched
    with torch.no_grad():
        from gdx.intervention import intervene

        with intervene(gen, "features", rep.units):
            expected = gen.generate(z)
        assert torch.allclose(fixed.generate(z), expected)
    back = ArtifactRepair.load(rep.save(tmp_path / "repair.json"))
    assert back.units == rep.units and back.scores == rep.scores
    fixed.gdx_repair_handle.remove()
    assert count_hooks(fixed.module) == 0


def test_weights_mode_needs_a_conv_layer(fd_repair):
    gen, rep = fd_repair
    with pytest.raises(RepairError, match="mode='hook'"):
        rep.apply(gen, mode="weights")


def test_weights_mode_zeroes_conv_outputs():
    import gdx
    from torch import nn

    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.Tanh())
    gen = gdx.wrap_generator(net, latent_shape=(2, 4, 4))
    rep = ArtifactRepair("0", "x", False, [0, 1, 2], [0.0, 1.0, 0.0], [1], 1.0, 0.5, 1.0, 0.5, True, 1, 0, 1, 1)
    fixed = rep.apply(gen, mode="weights")
    out = fixed.generate(gen.sample_latents(2, seed=0))
    assert torch.all(out[:, 1] == 0) and not torch.all(out[:, 0] == 0)
    assert float(fixed.module[0].weight[1].detach().abs().sum()) == 0
    assert float(net[0].weight[1].detach().abs().sum()) > 0


def test_discriminator_score_without_real_data():
    gen = artifact_generator()
    rep = find_artifact_units(
        gen, "features", metric=RealismScore(magenta_critic), samples=60, held_out=60, top=2
    )
    assert rep.units == [ARTIFACT_UNIT]
    assert rep.higher_is_better and rep.held_out_after > rep.held_out_before


def test_frechet_without_real_data_is_refused():
    with pytest.raises(RepairError, match="real"):
        find_artifact_units(artifact_generator(), "features", metric=FrechetDistance(quadrant_features))


# -- the search that does not overfit (issue 16) -------------------------------------


@pytest.fixture(scope="module")
def checked_repair():
    """The artifact world with a second score, the label check and random controls."""
    from intervene_worlds import PaletteSegmenter, ART_PALETTE

    gen = artifact_generator()
    seg = PaletteSegmenter(ART_PALETTE, ["red", "green", "blue", "yellow", "magenta"])
    fd = FrechetDistance(quadrant_features)
    rep = find_artifact_units(gen, "features", metric=fd, real=clean_images(300, seed=7),
                              held_out_real=clean_images(300, seed=8), samples=100, held_out=100, top=3,
                              check=RealismScore(magenta_critic), segmenter=seg, control_draws=4, bootstrap=300)
    return gen, rep


def test_confirmation_is_an_interval_that_excludes_no_change(checked_repair):
    _gen, rep = checked_repair
    assert rep.units == [ARTIFACT_UNIT] and rep.method == "greedy"
    lo, hi = rep.interval
    assert 0 < lo <= rep.improvement <= hi
    assert rep.confirmed and rep.noise > 0 and len(rep.path) == 1


def test_random_sets_of_the_same_size_do_not_improve(checked_repair):
    _gen, rep = checked_repair
    assert len(rep.control) == 4
    assert sum(rep.control) / 4 < rep.improvement / 2


def test_second_score_and_labels_are_measured_on_the_held_out_samples(checked_repair):
    _gen, rep = checked_repair
    assert rep.check["name"] == "realism" and rep.check["after"] > rep.check["before"]
    assert rep.check["low"] > 0
    before, after = rep.label_tv
    assert after < before  # the magenta blotch is the one label real images lack


def test_a_step_within_the_noise_is_not_taken():
    gen = artifact_generator()
    rep = find_artifact_units(gen, "features", metric=FrechetDistance(quadrant_features),
                              real=clean_images(200, seed=7), samples=60, held_out=60, top=3, min_z=1e6,
                              bootstrap=50)
    assert rep.units == [] and not rep.confirmed and rep.interval == [] and rep.ablate == ""


def test_the_saved_repair_is_a_generator_option(checked_repair, tmp_path):
    from gdx.ablation import UnitAblation

    gen, rep = checked_repair
    path = rep.save(tmp_path / "repair.json")
    assert rep.ablate == f"features:{ARTIFACT_UNIT}"
    fixed = UnitAblation.parse(str(path)).apply(artifact_generator())
    z = gen.sample_latents(4, seed=3)
    with torch.no_grad():
        assert torch.allclose(fixed.generate(z), rep.apply(gen).generate(z))
    back = ArtifactRepair.load(path)
    assert back.interval == rep.interval and back.check == rep.check and back.control == rep.control


def test_the_cached_chain_gives_the_same_repair_as_whole_generation():
    from collections import OrderedDict

    import gdx
    from torch import nn
    from intervene_worlds import ArtifactDecoder, ArtifactFeatures

    chain = gdx.wrap_generator(nn.Sequential(OrderedDict(features=ArtifactFeatures(), decoder=ArtifactDecoder())),
                               latent_shape=(12,))
    kw = dict(metric=FrechetDistance(quadrant_features), real=clean_images(200, seed=7), samples=60, held_out=60,
              top=2, bootstrap=50)
    fast = find_artifact_units(chain, "features", **kw)
    slow = find_artifact_units(artifact_generator(), "features", **kw)
    assert fast.units == slow.units == [ARTIFACT_UNIT]
    assert fast.scores == pytest.approx(slow.scores, abs=1e-6)
    assert fast.held_out_after == pytest.approx(slow.held_out_after, abs=1e-6)


def test_unit_evidence_shows_the_blotch_and_its_removal():
    from gdx.repair import unit_evidence

    gen = artifact_generator()
    (ev,) = unit_evidence(gen, "features", [ARTIFACT_UNIT], samples=40, worst=3)
    magenta = lambda x: float((-magenta_critic(x)).mean())  # noqa: E731
    assert len(ev.indices) == 3 and ev.activation.shape[0] == 3
    assert magenta(ev.images) > 0.02 and magenta(ev.ablated) < magenta(ev.images) / 10


def test_score_spread_shrinks_with_samples():
    from gdx.repair import score_spread

    spread = score_spread(artifact_generator(), FrechetDistance(quadrant_features), [20, 200], draws=4,
                          real=clean_images(300, seed=7))
    assert spread.sizes == [20, 200] and spread.sds[1] < spread.sds[0]
    assert spread.means[1] < spread.means[0]  # the small-sample bias of a Fréchet distance


def test_bootstrap_interval_of_no_change_is_zero_and_of_a_shift_excludes_it():
    from gdx.repair import bootstrap_interval

    v = torch.randn(200, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 5.0
    mean = lambda x: float(x.mean())  # noqa: E731
    assert bootstrap_interval(mean, v, v, higher=True, draws=100)[1:] == (0.0, 0.0)
    _sd, lo, hi = bootstrap_interval(mean, v, v + 0.5, higher=True, draws=100)
    assert 0 < lo < 0.1 < hi
