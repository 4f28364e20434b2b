"""Fréchet distance: closed form on Gaussians, agreement with scipy, streaming and merging."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gdx
from gdx.plugins.metrics.frechet import (
    FeatureStats,
    FrechetDistance,
    InceptionFeatures,
    MetricSetupError,
    ModuleFeatures,
    RealismScore,
    frechet_distance,
    segmenter_features,
)


def _random_cov(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_closed_form_for_diagonal_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    s1, s2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 1.0])
    expected = float(((mu1 - mu2) ** 2).sum() + ((s1.sqrt() - s2.sqrt()) ** 2).sum())
    got = frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2))
    assert got == pytest.approx(expected, abs=1e-3)


def test_closed_form_for_commuting_and_general_covariances():
    # Same covariance: the distance is the squared mean difference.
    cov = _random_cov(6, 0)
    mu1, mu2 = torch.zeros(6), torch.full((6,), 0.5)
    assert frechet_distance(mu1, cov, mu2, cov) == pytest.approx(6 * 0.25, abs=1e-3)
    # Scaled covariance c^2 S: tr(S) (1 - c)^2.
    assert frechet_distance(mu1, cov, mu1, 4 * cov) == pytest.approx(float(torch.trace(cov)), abs=1e-3)


def test_streamed_estimate_of_known_gaussians():
    d = 4
    cov = _random_cov(d, 1)
    chol = torch.linalg.cholesky(cov)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200_000, d, generator=g, dtype=torch.float64) @ chol.T
    y = torch.randn(200_000, d, generator=g, dtype=torch.float64) @ chol.T * 2 + 1
    fx, fy = FeatureStats(), FeatureStats()
    for part in x.split(30_000):
        fx.update(part)
    fy.update(y)
    expected = d * 1.0 + float(torch.trace(cov))  # |mu|^2 = d, covariance 4S: tr(S)(1-2)^2
    got = frechet_distance(*fx.result(), *fy.result())
    assert got == pytest.approx(expected, rel=0.02)


def test_matches_scipy_on_random_features():
    pytest.importorskip("scipy")
    g = torch.Generator().manual_seed(3)
    a = torch.randn(300, 16, generator=g)
    b = torch.randn(250, 16, generator=g) @ torch.randn(16, 16, generator=g) * 0.3 + 0.2
    sa, sb = FeatureStats(), FeatureStats()
    sa.update(a)
    sb.update(b)
    ours = frechet_distance(*sa.result(), *sb.result(), sqrtm="torch")
    ref = frechet_distance(*sa.result(), *sb.result(), sqrtm="scipy")
    assert ours == pytest.approx(ref, abs=1e-3)
    # and the covariance is numpy's unbiased one
    import numpy as np

    assert np.allclose(sa.cov.numpy(), np.cov(a.double().numpy(), rowvar=False))


def test_merge_and_state_dict_equal_one_pass():
    x = torch.randn(100, 5)
    whole, left, right = FeatureStats(), FeatureStats(), FeatureStats()
    whole.update(x)
    left.update(x[:37])
    right.update(x[37:])
    left.merge(right)
    assert torch.allclose(left.cov, whole.cov) and torch.allclose(left.mean, whole.mean)
    copy = FeatureStats()
    copy.load_state_dict(whole.state_dict())
    assert torch.equal(copy.outer, whole.outer) and copy.n == 100


def test_frechet_metric_on_images():
    extractor = lambda images: images.mean(dim=(2, 3))  # noqa: E731
    real = torch.rand(64, 3, 8, 8) * 2 - 1
    fd = FrechetDistance(extractor).set_reference(real.split(16))
    same = fd.fresh()
    same.update(real)
    assert same.result() == pytest.approx(0.0, abs=1e-6)
    shifted = fd.fresh()
    shifted.update((real[:32] + 0.5))
    shifted.update((real[32:] + 0.5))
    assert shifted.result() > 0.7  # 3 channels x 0.5^2 = 0.75
    halves = [fd.fresh(), fd.fresh()]
    halves[0].update(real[:20] + 0.5)
    halves[1].update(real[20:] + 0.5)
    halves[0].merge(halves[1])
    assert halves[0].result() == pytest.approx(shifted.result(), abs=1e-9)
    restored = fd.fresh()
    restored.reference = None
    restored.load_state_dict(shifted.state_dict())
    assert restored.result() == pytest.approx(shifted.result(), abs=1e-9)
    with pytest.raises(MetricSetupError, match="set_reference"):
        FrechetDistance(extractor).result()


def test_realism_score():
    critic = lambda images: -images.abs().mean(dim=(1, 2, 3))  # noqa: E731
    m = RealismScore(critic)
    m.update(torch.zeros(4, 3, 2, 2))
    m.update(torch.ones(4, 3, 2, 2))
    assert m.result() == pytest.approx(-0.5)
    other = m.fresh()
    other.load_state_dict(m.state_dict())
    assert other.result() == m.result() and m.higher_is_better


def test_module_features_pool_a_named_layer_and_segmenter_encoder():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    feats = ModuleFeatures(net, "1", input_size=(16, 16))
    x = torch.randn(2, 3, 8, 8)
    out = feats(x)
    up = nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(out, net[1](net[0](up)).mean(dim=(2, 3)))

    class Seg(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Conv2d(3, 5, 1)
            self.head = nn.Conv2d(5, 2, 1)

        def forward(self, x):
            return self.head(self.encoder(x))

    wrapped = gdx.wrap_segmenter(Seg(), labels=["a", "b"])
    f = segmenter_features(wrapped)
    assert f.layer == "encoder" and f(x).shape == (2, 5)
    with pytest.raises(MetricSetupError, match="nn.Module"):
        segmenter_features(gdx.wrap_segmenter(lambda x: x, labels=["a"]))


def test_registered_and_needs_weights():
    reg = gdx.default_registry()
    assert "frechet" in reg.infos("metric")
    with pytest.raises(MetricSetupError, match="weights=PATH"):
        reg.build("metric", "frechet")


@pytest.mark.slow
def test_inception_features_from_a_local_weights_file(tmp_path):
    tv = pytest.importorskip("torchvision")
    net = tv.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "inception.pth"
    torch.save(net.state_dict(), path)
    feats = InceptionFeatures(path)
    out = feats(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert out.shape == (2, 2048) and torch.isfinite(out).all()
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(gdx.CheckpointError, match="Inception"):
        InceptionFeatures(tmp_path / "bad.pth")
    assert not math.isnan(float(out.sum()))
