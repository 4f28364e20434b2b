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
