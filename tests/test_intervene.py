"""gdx.intervene: r' = r (1 - a) + v a on chosen units inside a region; hooks always removed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gdx
from gdx.errors import InterventionError
from gdx.intervention import Edit, intervene, pool_region
from gdx.sampling import layer_output
from gdx.values import insertion_values, unit_quantiles
from gdx.tracing import count_hooks


class Identity4(nn.Module):
    """A 'generator' whose layer ``feat`` is the identity on its 4-d input maps."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.out = nn.Identity()

    def forward(self, x):
        return self.out(self.feat(x))


@pytest.fixture
def net():
    return Identity4()


def test_ablation_zeroes_only_chosen_units(net):
    x = torch.randn(2, 5, 4, 4) + 3
    with intervene(net, "feat", [1, 3]):
        y = net(x)
    assert torch.all(y[:, [1, 3]] == 0)
    assert torch.equal(y[:, [0, 2, 4]], x[:, [0, 2, 4]])
    assert torch.equal(net(x), x)  # edit gone after exit


def test_value_forms(net):
    x = torch.randn(2, 5, 4, 4)
    with intervene(net, "feat", [0, 2], value=7.0):
        assert torch.all(net(x)[:, [0, 2]] == 7.0)
    with intervene(net, "feat", [0, 2], value=[1.0, 2.0]):  # per chosen unit, as a list
        assert torch.all(net(x)[:, 2] == 2.0)
    with intervene(net, "feat", [0, 2], value=torch.tensor([1.0, 2.0])):  # per chosen unit
        y = net(x)
        assert torch.all(y[:, 0] == 1.0) and torch.all(y[:, 2] == 2.0)
    full = torch.arange(5.0) * 10
    with intervene(net, "feat", [1, 4], value=full):  # one per unit of the layer
        y = net(x)
        assert torch.all(y[:, 1] == 10.0) and torch.all(y[:, 4] == 40.0)
    with intervene(net, "feat", [1], value="q99", stats=full):
        assert torch.all(net(x)[:, 1] == 10.0)
    with pytest.raises(InterventionError, match="per chosen unit"):
        with intervene(net, "feat", [1, 2], value=torch.ones(3)):
            net(x)


def test_region_mask_blends_and_max_pools(net):
    x = torch.ones(1, 3, 4, 4)
    region = torch.zeros(16, 16)
    region[0, 0] = 1  # one pixel of a 16x16 brush -> the whole top-left cell
    with intervene(net, "feat", [0], value=5.0, region=region):
        y = net(x)
    assert y[0, 0, 0, 0] == 5.0
    assert torch.all(y[0, 0].flatten()[1:] == 1.0)
    assert torch.all(y[0, 1:] == 1.0)
    soft = torch.full((4, 4), 0.25)
    with intervene(net, "feat", [2], value=5.0, region=soft):
        y = net(x)
    assert torch.allclose(y[0, 2], torch.full((4, 4), 1.0 * 0.75 + 5.0 * 0.25))


def test_per_image_regions(net):
    x = torch.zeros(2, 1, 2, 2)
    region = torch.zeros(2, 2, 2, dtype=torch.bool)
    region[0, 0, 0] = True
    region[1, 1, 1] = True
    with intervene(net, "feat", [0], value=1.0, region=region):
        y = net(x)
    assert y[0, 0].tolist() == [[1, 0], [0, 0]]
    assert y[1, 0].tolist() == [[0, 0], [0, 1]]
    with pytest.raises(InterventionError, match="region has 2 masks"):
        with intervene(net, "feat", [0], value=1.0, region=region):
            net(torch.zeros(3, 1, 2, 2))


def test_pool_region_shapes():
    assert pool_region(torch.ones(8, 8), (4, 4)).shape == (1, 1, 4, 4)
    assert pool_region(torch.ones(3, 8, 8), (2, 2)).shape == (3, 1, 2, 2)
    small = torch.zeros(2, 2)
    small[1, 1] = 1
    up = pool_region(small, (4, 4))[0, 0]
    assert up.sum() == 4 and up[3, 3] == 1 and up[0, 0] == 0
    with pytest.raises(InterventionError):
        pool_region(torch.ones(2, 3, 4, 4), (2, 2))


def test_edits_compose_as_list_and_nested(net):
    x = torch.ones(1, 4, 2, 2)
    net2 = nn.Sequential(net.feat, nn.Identity())
    edits = [Edit("0", [0], 2.0), Edit("0", [0, 1], 0.0), Edit("1", [3], 9.0)]
    with intervene(net2, edits):
        y = net2(x)
    assert y[0, :, 0, 0].tolist() == [0.0, 0.0, 1.0, 9.0]
    with intervene(net2, "0", [2], value=3.0):
        with intervene(net2, "1", [2], value=4.0):
            assert torch.all(net2(x)[:, 2] == 4.0)
        assert torch.all(net2(x)[:, 2] == 3.0)
    assert count_hooks(net2) == 0


def test_hooks_removed_after_exception(net):
    before = count_hooks(net)
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(net, "feat", [0]):
            assert count_hooks(net) == before + 1
            raise RuntimeError("boom")
    assert count_hooks(net) == before
    # an error raised inside the hook itself (bad value length) also leaves nothing behind
    with pytest.raises(InterventionError):
        with intervene(net, "feat", [0, 1], value=torch.ones(7)):
            net(torch.zeros(1, 3, 2, 2))
    assert count_hooks(net) == before


def test_errors_name_the_problem(net):
    with pytest.raises(gdx.UnknownLayerError, match="feat"):
        intervene(net, "feet", [0])
    with pytest.raises(InterventionError, match="0..2"):
        with intervene(net, "feat", [5]):
            net(torch.zeros(1, 3, 2, 2))
    with pytest.raises(InterventionError, match="unknown value"):
        with intervene(net, "feat", [0], value="bogus"):
            pass
    with pytest.raises(InterventionError, match="segmenter"):
        with intervene(net, "feat", [0], value=("insert", "tree")):
            pass


def test_generator_edits_flow_to_image(toy_pair):
    gen, _seg = toy_pair
    z = gen.sample_latents(4, seed=0)
    base = gen.generate(z)
    with intervene(gen, "features", [0, 4]):  # the toy's sun units
        edited = gen.generate(z)
    assert not torch.allclose(base, edited)
    with intervene(gen, "features", [9]):  # read by nothing
        assert torch.allclose(gen.generate(z), base)


def test_q99_and_insert_values_from_samples(toy_pair):
    gen, seg = toy_pair
    q = unit_quantiles(gen, "features", 0.99, samples=20, seed=3)
    acts = []
    for z in gen.sample_latents(20, seed=3).split(8):
        acts.append(layer_output(gen, "features", z))
    flat = torch.cat(acts).transpose(0, 1).reshape(10, -1)
    assert torch.allclose(q, torch.quantile(flat, 0.99, dim=1), atol=1e-5)
    k = insertion_values(gen, seg, "features", "sun", samples=40, seed=0)
    assert k.shape == (10,)
    assert float(k[0]) > 1.0 > float(k[1])  # the sun unit is high where sun is, the tree unit low
    z = gen.sample_latents(2, seed=0)
    with intervene(gen, "features", [0], value=("insert", "sun"), segmenter=seg, samples=40) as iv:
        gen.generate(z)
    assert torch.allclose(iv.values[0], k)
    with intervene(gen, "features", [0], value="q99", samples=20, seed=3) as iv:
        gen.generate(z)
    assert torch.allclose(iv.values[0], q)


def test_public_facade():
    assert gdx.intervene is intervene
    for name in ("causal_effect", "optimize_units", "find_artifact_units", "insertion_values", "location_map"):
        assert name in gdx.__all__ and callable(getattr(gdx, name))
