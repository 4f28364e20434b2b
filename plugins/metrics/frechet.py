"""Image-quality metrics: Fréchet distance on a pluggable feature space, and a realism score.

* :class:`FrechetDistance` streams the mean and covariance of features of generated
  images (mergeable across shards) and compares them with a reference (real) set:
  ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``.
* Feature extractors: :class:`InceptionFeatures` (torchvision Inception-v3 with
  weights the user supplies; nothing is downloaded) gives the FID of the
  literature's feature space only when given the standard weights.
  :class:`ModuleFeatures` pools a layer of any network, e.g. the bundled scene
  segmenter's encoder: that is a *domain* feature space, and its numbers are not
  comparable with published FIDs.
* :class:`RealismScore` averages a discriminator's output (higher = more real),
  for when no real images are at hand.

The matrix square root is an eigen-decomposition in float64 torch by default
(``sqrtm="torch"``); ``sqrtm="scipy"`` uses ``scipy.linalg.sqrtm`` when scipy is
installed (an optional, independent check).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import gdx
from gdx.errors import GdxError, MetricSetupError
from gdx.interfaces import Metric
from gdx.tracing import Trace
from gdx.hookspecs import Register


# -- linear algebra ----------------------------------------------------------------


def trace_sqrt_product(cov1: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """tr((S1 S2)^(1/2)) for PSD S1, S2, via eigh in float64.

    S1 S2 is similar to S1^(1/2) S2 S1^(1/2), which is symmetric PSD, so the trace of
    the square root is the sum of the square roots of its (clamped) eigenvalues.
    """
    a = cov1.double()
    b = cov2.double()
    w, v = torch.linalg.eigh((a + a.T) / 2)
    root = (v * w.clamp(min=0).sqrt()) @ v.T
    m = root @ b @ root
    ev = torch.linalg.eigvalsh((m + m.T) / 2)
    return ev.clamp(min=0).sqrt().sum()


def frechet_distance(
    mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor, *, sqrtm: str = "torch"
) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2)."""
    mu1, mu2, cov1, cov2 = (t.detach().double().cpu() for t in (mu1, mu2, cov1, cov2))
    diff = float(((mu1 - mu2) ** 2).sum())
    if sqrtm == "torch":
        tr_root = float(trace_sqrt_product(cov1, cov2))
    elif sqrtm == "scipy":
        try:
            import numpy as np
            import scipy.linalg
        except ImportError:
            raise MetricSetupError("sqrtm='scipy' needs scipy: pip install scipy, or use sqrtm='torch'") from None
        root = scipy.linalg.sqrtm(cov1.numpy() @ cov2.numpy())
        tr_root = float(np.real(np.trace(root)))
    else:
        raise MetricSetupError(f"unknown sqrtm {sqrtm!r}: use 'torch' or 'scipy'")
    return diff + float(torch.trace(cov1)) + float(torch.trace(cov2)) - 2.0 * tr_root


# -- streaming statistics ----------------------------------------------------------


class FeatureStats(Metric):
    """Streaming mean and covariance of feature vectors (N x D batches), in float64.

    Mergeable (sums add) and checkpointable (``state_dict``).
    """

    name = "feature-stats"
    kind = "statistic"

    def __init__(self, dim: int | None = None) -> None:
        self.n = 0
        self.sum: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None
        if dim is not None:
            self.sum = torch.zeros(dim, dtype=torch.float64)
            self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, features: torch.Tensor) -> None:
        f = features.detach().double().cpu()
        if f.dim() != 2:
            f = f.reshape(f.shape[0], -1)
        if self.sum is None or self.outer is None:
            self.sum = torch.zeros(f.shape[1], dtype=torch.float64)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
        if f.shape[1] != self.sum.numel():
            raise MetricSetupError(f"features have {f.shape[1]} dims; earlier batches had {self.sum.numel()}")
        self.n += f.shape[0]
        self.sum.add_(f.sum(0))
        self.outer.add_(f.T @ f)

    def merge(self, other: "Metric") -> None:
        if not isinstance(other, FeatureStats):
            raise TypeError(f"cannot merge {type(other).__name__} into FeatureStats")
        if other.sum is None or other.outer is None:
            return
        if self.sum is None or self.outer is None:
            self.sum, self.outer = other.sum.clone(), other.outer.clone()
        else:
            self.sum.add_(other.sum)
            self.outer.add_(other.outer)
        self.n += other.n

    @property
    def mean(self) -> torch.Tensor:
        total, _ = self._sums(1)
        return total / self.n

    @property
    def cov(self) -> torch.Tensor:
        """Unbiased covariance (divides by n - 1)."""
        total, outer = self._sums(2)
        mu = total / self.n
        return (outer - self.n * torch.outer(mu, mu)) / (self.n - 1)

    def _check(self, need: int) -> None:
        if self.n < need:
            raise MetricSetupError(f"feature statistics need at least {need} samples; have {self.n}")

    def _sums(self, need: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The running sum and sum of outer products, once ``need`` samples were seen."""
        self._check(need)
        if self.sum is None or self.outer is None:
            raise MetricSetupError(f"feature statistics hold {self.n} samples but no sums (a damaged state dict?)")
        return self.sum, self.outer

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean, self.cov

    def state_dict(self) -> dict[str, Any]:
        return {"n": torch.tensor(self.n), "sum": self.sum, "outer": self.outer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n = int(state["n"])
        self.sum = None if state.get("sum") is None else state["sum"].double()
        self.outer = None if state.get("outer") is None else state["outer"].double()


# -- feature extractors ------------------------------------------------------------


class InceptionFeatures(nn.Module):
    """2048-d pool features of torchvision's Inception-v3, from a weights file you supply.

    ``weights``: a torchvision-format state dict (e.g. ``inception_v3_google-0cc3c7bd.pth``),
    read with ``weights_only=True``. Images in [-1, 1] are resized to 299 x 299
    (bilinear) and fed as they are: the Google weights expect inputs in [-1, 1]
    (torchvision's ``transform_input`` maps ImageNet-normalised inputs to that range).
    Nothing is downloaded. pytorch-fid's FID-Inception weights are a different
    network and are not accepted.
    """

    def __init__(self, weights: str | os.PathLike[str]) -> None:
        super().__init__()
        try:
            from torchvision.models import inception_v3
        except ImportError:
            raise MetricSetupError("Inception features need torchvision: pip install torchvision") from None
        from gdx.checkpoints import load_torch_file, unwrap_state_dict

        state = unwrap_state_dict(load_torch_file(weights, what="Inception-v3 weights"), what="Inception-v3 weights")
        net = inception_v3(weights=None, aux_logits=True, transform_input=False, init_weights=False)
        missing, unexpected = net.load_state_dict(state, strict=False)
        important = [k for k in missing if not k.startswith("AuxLogits")]
        if important or unexpected:
            raise gdx.CheckpointError(
                f"{weights} is not a torchvision Inception-v3 state dict (missing {important[:5]}, "
                f"unexpected {list(unexpected)[:5]}); use torchvision's inception_v3_google weights"
            )
        net.fc = nn.Identity()
        net.AuxLogits = None
        net.aux_logits = False
        self.net = net.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(x)


class ModuleFeatures(nn.Module):
    """Global-average-pooled output of ``layer`` of ``module`` (element ``stage`` if it returns a list).

    Use a segmenter's encoder for a domain feature space: ``ModuleFeatures(seg_net,
    "encoder", input_size=(128, 128))``. Images in [-1, 1] are passed through
    ``preprocess`` (default: identity) after resizing to ``input_size``. ``stage`` picks
    one map of an encoder that returns a list, coarse last (default -1, the deepest);
    earlier stages see texture rather than layout.
    """

    def __init__(
        self,
        module: nn.Module,
        layer: str | None = None,
        *,
        input_size: tuple[int, int] | None = None,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        stage: int = -1,
    ) -> None:
        super().__init__()
        self.module = module.eval()
        self.layer = layer
        self.input_size = input_size
        self.preprocess = preprocess
        self.stage = stage

    def _pool(self, out: Any) -> torch.Tensor:
        if isinstance(out, (list, tuple)):
            if not -len(out) <= self.stage < len(out):
                raise MetricSetupError(
                    f"feature stage {self.stage} does not exist: the layer returns {len(out)} maps "
                    f"(stages {-len(out)}..{len(out) - 1})"
                )
            out = out[self.stage]
        if out.dim() == 4:
            return out.mean(dim=(2, 3))
        return out.reshape(out.shape[0], -1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.input_size is not None and tuple(x.shape[-2:]) != tuple(self.input_size):
            x = F.interpolate(x, size=tuple(self.input_size), mode="bilinear", align_corners=False)
        if self.preprocess is not None:
            x = self.preprocess(x)
        if self.layer is None:
            return self._pool(self.module(x))
        captured: dict[str, Any] = {}

        def grab(_name: str, out: Any) -> Any:
            captured["out"] = out
            return None

        with Trace(self.module, self.layer, edit=grab, record=False, stop=True):
            try:
                self.module(x)
            except gdx.StopForward:
                pass
        return self._pool(captured["out"])


def segmenter_features(segmenter: Any, layer: str | None = None, *, stage: int = -1) -> ModuleFeatures:
    """A domain feature space from a segmenter's network (its encoder by default).

    Finds the ``nn.Module`` of the segmenter (``.module``, ``.model``, ``.net`` or a
    wrapped module ``.fn``); ``layer`` defaults to the outermost sub-module named
    ``encoder`` (smp models: its feature maps, ``stage`` -1 the deepest), else the
    network's output. For the bundled scene segmenter, ``stage=3`` (24 channels at 1/8
    of the input) separates scene-GAN samples from rendered scenes 18-25x above the
    rendered-vs-rendered floor, the deepest stage 4-5x (docs/intervention.md).
    """
    net = None
    for attr in ("module", "model", "net", "fn"):
        cand = getattr(segmenter, attr, None)
        if isinstance(cand, nn.Module):
            net = cand
            break
    if net is None:
        raise MetricSetupError(
            f"segmenter {getattr(segmenter, 'name', '?')!r} exposes no nn.Module (.module/.model/.net/.fn); "
            "build gdx.plugins.metrics.frechet.ModuleFeatures(your_network, layer) instead"
        )
    if layer is None:
        encoders = [n for n, _ in net.named_modules() if n.split(".")[-1] == "encoder"]
        layer = min(encoders, key=len) if encoders else None
    return ModuleFeatures(net, layer, input_size=getattr(segmenter, "input_size", None), stage=stage)


# -- metrics -----------------------------------------------------------------------


class FrechetDistance(Metric):
    """Fréchet distance between features of the images seen and a reference set.

    ``update(images)`` folds in generated images (N x 3 x H x W in [-1, 1]);
    ``set_reference(...)`` takes real images (a tensor or an iterable of batches) or
    a ready :class:`FeatureStats`. ``result()`` is the distance (lower is better).
    ``fresh()`` gives an empty copy sharing the extractor and the reference.

    >>> fd = FrechetDistance(InceptionFeatures("inception_v3_google.pth"))
    >>> fd.set_reference(real_batches)
    >>> fd.update(gen.generate(z)); fd.result()
    """

    name = "frechet"
    kind = "quality"
    higher_is_better = False

    def __init__(
        self,
        extractor: Callable[[torch.Tensor], torch.Tensor],
        reference: FeatureStats | None = None,
        *,
        sqrtm: str = "torch",
    ) -> None:
        self.extractor = extractor
        self.reference = reference
        self.sqrtm = sqrtm
        self.stats = FeatureStats()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.extractor(images)

    def set_reference(self, real: FeatureStats | torch.Tensor | Iterable[torch.Tensor]) -> "FrechetDistance":
        if isinstance(real, FeatureStats):
            self.reference = real
            return self
        stats = FeatureStats()
        batches = [real] if isinstance(real, torch.Tensor) else real
        for batch in batches:
            stats.update(self.features(batch))
        self.reference = stats
        return self

    def update(self, images: torch.Tensor) -> None:
        self.stats.update(self.features(images))

    def merge(self, other: Metric) -> None:
        if not isinstance(other, FrechetDistance):
            raise TypeError(f"cannot merge {type(other).__name__} into FrechetDistance")
        self.stats.merge(other.stats)

    def result(self) -> float:
        if self.reference is None:
            raise MetricSetupError("FrechetDistance has no reference: call set_reference(real_images) first")
        mu1, cov1 = self.stats.result()
        mu2, cov2 = self.reference.result()
        return frechet_distance(mu1, cov1, mu2, cov2, sqrtm=self.sqrtm)

    def fresh(self) -> "FrechetDistance":
        return FrechetDistance(self.extractor, self.reference, sqrtm=self.sqrtm)

    def sample_values(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image features (N x D, float64): what :meth:`score_values` turns into the distance.

        Why per image: a bootstrap over samples (``gdx.find_artifact_units``) resamples
        these rows instead of running the extractor again for every draw.
        """
        f = self.features(images).detach().double().cpu()
        return f.reshape(f.shape[0], -1)

    def score_values(self, values: torch.Tensor) -> float:
        """The distance of the features ``values`` (N x D, N >= 2) to the reference."""
        if self.reference is None:
            raise MetricSetupError("FrechetDistance has no reference: call set_reference(real_images) first")
        if values.shape[0] < 2:
            raise MetricSetupError(f"a Fréchet distance needs at least 2 samples; have {values.shape[0]}")
        v = values.double()
        mu2, cov2 = self.reference.result()
        return frechet_distance(v.mean(0), torch.cov(v.T).reshape(v.shape[1], v.shape[1]), mu2, cov2, sqrtm=self.sqrtm)

    def state_dict(self) -> dict[str, Any]:
        out = {f"stats/{k}": v for k, v in self.stats.state_dict().items()}
        if self.reference is not None:
            out.update({f"reference/{k}": v for k, v in self.reference.state_dict().items()})
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("stats/")})
        ref = {k[10:]: v for k, v in state.items() if k.startswith("reference/")}
        if ref:
            self.reference = FeatureStats()
            self.reference.load_state_dict(ref)


class RealismScore(Metric):
    """Mean discriminator output over the images seen (higher = judged more real).

    ``discriminator(images) -> N`` (or N x 1) scores for images in [-1, 1], e.g. the
    GAN's own critic. No real data needed; the score is only as good as the critic.
    """

    name = "realism"
    kind = "quality"
    higher_is_better = True

    def __init__(self, discriminator: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if not callable(discriminator):
            raise MetricSetupError("RealismScore needs a callable discriminator(images) -> N scores")
        self.discriminator = discriminator
        self.total = 0.0
        self.count = 0

    def update(self, images: torch.Tensor) -> None:
        with torch.no_grad():
            scores = self.discriminator(images).double().reshape(images.shape[0], -1).mean(1)
        self.total += float(scores.sum())
        self.count += int(scores.numel())

    def merge(self, other: Metric) -> None:
        if not isinstance(other, RealismScore):
            raise TypeError(f"cannot merge {type(other).__name__} into RealismScore")
        self.total += other.total
        self.count += other.count

    def result(self) -> float:
        if self.count == 0:
            raise MetricSetupError("RealismScore has seen no images")
        return self.total / self.count

    def fresh(self) -> "RealismScore":
        return RealismScore(self.discriminator)

    def sample_values(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image scores (N x 1, float64); their mean is :meth:`score_values`."""
        with torch.no_grad():
            return self.discriminator(images).detach().double().cpu().reshape(images.shape[0], -1).mean(1, keepdim=True)

    def score_values(self, values: torch.Tensor) -> float:
        """The mean score of ``values`` (N x 1)."""
        if values.shape[0] == 0:
            raise MetricSetupError("RealismScore has seen no images")
        return float(values.double().mean())

    def state_dict(self) -> dict[str, Any]:
        return {"total": torch.tensor(self.total, dtype=torch.float64), "count": torch.tensor(self.count)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = float(state["total"])
        self.count = int(state["count"])


def build_frechet(features: str = "inception", weights: str = "", segmenter: str = "scene", layer: str = "",
                  stage: int = -1) -> FrechetDistance:
    """Fréchet distance on Inception-v3 (weights=PATH) or segmenter-encoder features (a domain FD, not FID).

    Args:
        features: "inception" (the literature's FID features) or "segmenter" (a registered segmenter's encoder)
        weights: Inception-v3 weights file (torchvision format) for features=inception
        segmenter: the registered segmenter whose encoder gives the features for features=segmenter
        layer: that segmenter's module to read the features from (default: its encoder output)
        stage: which map of an encoder that returns several (-1: the deepest; 3: the scene segmenter's texture stage)
    """
    if features == "inception":
        if not weights:
            raise MetricSetupError(
                "frechet with features=inception needs weights=PATH to torchvision Inception-v3 weights "
                "(nothing is downloaded); or use features=segmenter for the bundled scene world"
            )
        return FrechetDistance(InceptionFeatures(weights))
    if features == "segmenter":
        seg = gdx.load_segmenter(segmenter)
        return FrechetDistance(segmenter_features(seg, layer or None, stage=stage))
    raise MetricSetupError(f"unknown features {features!r}: use 'inception' or 'segmenter'")


@gdx.hookimpl
def register_metrics(register: Register) -> None:
    register("frechet", build_frechet)
