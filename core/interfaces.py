"""The three contracts every adapter implements: Generator, Segmenter, Metric.

The engine never looks inside a model beyond these. Shapes and ranges are part of
the contract and the engine checks them at run time (see :mod:`gdx.checks`).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn


class Generator(abc.ABC):
    """A latent-to-image model whose layers can be read and edited by name.

    Contract:
      * ``sample_latents(n, seed=s)`` returns the latents of samples ``0..n-1`` for seed
        ``s``; the same call always returns the same tensor (see docs/method.md, "Setting").
      * ``generate(z)`` maps a batch of latents (N x ...) to images N x 3 x H x W, float,
        RGB, nominally in [-1, 1] (values slightly outside are tolerated, as ProGAN's
        output is unclamped).
      * ``module`` is the ``nn.Module`` that ``generate`` runs; its ``named_modules()``
        names the layers that dissection and intervention hook. A forward hook on any
        of those modules must see the tensor that flows on to the image.
    """

    #: Short name shown in reports and listings.
    name: str = "generator"
    #: The layer ``gdx run`` dissects when no ``--layer`` is given (None: the user must say).
    default_layer: str | None = None
    #: The layer ``gdx paint`` edits when no ``--layer`` is given (None: :attr:`default_layer`).
    #: Where concepts are best *found* and where they *paint* can differ (docs/paint.md).
    paint_layer: str | None = None
    #: How many times each layer module runs while ``generate(z)`` makes one batch (a
    #: diffusion sampler: one call per denoising step). With more than 1, a layer is a
    #: block at a call, ``"BLOCK@K"`` (or a window ``"BLOCK@A-B"`` for edits), and
    #: ``generate`` must call :attr:`module` exactly once, running every step inside that
    #: call (the engine restarts its call count there). docs/diffusion.md, "Layers at a step".
    steps_per_image: int = 1

    @property
    @abc.abstractmethod
    def module(self) -> nn.Module:
        """The ``nn.Module`` whose sub-modules are the layers."""

    @abc.abstractmethod
    def sample_latents(self, n: int, *, seed: int) -> torch.Tensor:
        """Latents for samples ``0..n-1`` of seed ``seed`` (on the CPU), N x latent shape."""

    @abc.abstractmethod
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Images N x 3 x H x W in [-1, 1] for latents ``z`` (already on :attr:`device`)."""

    def feature_view(self, block: str) -> Any:
        """How hooks see ``block``'s output: None (as it is), or a :class:`gdx.tracing.FeatureView`
        turning it into N x U x h x w features (tokens to a grid, one half of a guided batch)."""
        return None

    def block_names(self) -> list[str]:
        """Names of the hookable modules (non-empty ``named_modules()`` names), without steps."""
        return [name for name, _ in self.module.named_modules() if name]

    def layer_names(self) -> list[str]:
        """Names of the hookable layers: the blocks, or for a multi-step generator every
        block at every step (``BLOCK@0`` .. ``BLOCK@{steps_per_image-1}``, block by block)."""
        blocks = self.block_names()
        steps = int(self.steps_per_image)
        if steps <= 1:
            return blocks
        return [f"{b}@{k}" for b in blocks for k in range(steps)]

    @property
    def device(self) -> torch.device:
        """Where the module's parameters live (CPU for a module without any)."""
        for p in self.module.parameters():
            return p.device
        for b in self.module.buffers():
            return b.device
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> "Generator":
        """Move the module to ``device`` and return ``self``."""
        self.module.to(device)
        return self

    def describe(self) -> str:
        return f"{self.name} ({type(self.module).__name__})"

    def latent_rows(self, n: int, *, seed: int) -> "LatentRows":
        """Rows of ``sample_latents(n, seed=seed)`` handed out batch by batch.

        The default calls ``sample_latents(n)`` once and slices it (memory grows with
        ``n``). Adapters whose latents are :func:`gdx.seeded_normal` return
        ``gdx.wrappers.SeededNormalRows``, which draws them batch by batch with the same bits.
        """
        return WholeLatents(self, n, seed)


class LatentRows(abc.ABC):
    """Rows ``[start, stop)`` of a generator's ``sample_latents(n, seed)``, bit for bit."""

    n: int

    @abc.abstractmethod
    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Latents of samples ``start..stop-1`` (CPU), cheapest when asked in increasing order."""


class WholeLatents(LatentRows):
    """The default :class:`LatentRows`: ``sample_latents(n)`` made once, then sliced."""

    def __init__(self, generator: Generator, n: int, seed: int) -> None:
        self.generator, self.n, self.seed = generator, int(n), int(seed)
        self._all: torch.Tensor | None = None

    def rows(self, start: int, stop: int) -> torch.Tensor:
        if self._all is None:
            self._all = self.generator.sample_latents(self.n, seed=self.seed)
            if len(self._all) != self.n:
                from gdx.errors import SettingsError

                raise SettingsError(
                    f"generator {self.generator.name!r} returned {len(self._all)} latents for "
                    f"sample_latents({self.n}); it must return exactly n."
                )
        return self._all[start:stop]


class Segmenter(abc.ABC):
    """An image-to-labels model: which concept is at each pixel.

    Contract:
      * ``segment(images)`` takes RGB images N x 3 x H x W, float in [-1, 1], and returns
        a LongTensor of label indices N x H' x W' (one label per pixel) or N x K x H' x W'
        (K labels per pixel, e.g. object, part, material). Values index :attr:`labels`;
        ``-1`` means no label. The engine resizes its input to :attr:`input_size` first.
      * ``labels`` lists concept names; ``categories`` optionally maps each label to a
        category such as ``"object"``, ``"part"`` or ``"material"``.
    """

    name: str = "segmenter"

    @property
    @abc.abstractmethod
    def labels(self) -> Sequence[str]:
        """Concept names; label ``i`` of ``segment`` is ``labels[i]``."""

    @property
    def categories(self) -> Mapping[str, str]:
        """Label name -> category (empty when the segmenter has none)."""
        return {}

    #: Preferred input (H, W); ``None`` segments at the generator's resolution.
    input_size: tuple[int, int] | None = None

    @abc.abstractmethod
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Label map N x H x W (or N x K x H x W), int64, values in ``-1..len(labels)-1``."""

    def to(self, device: torch.device | str) -> "Segmenter":
        """Move to ``device`` (a no-op for segmenters without torch state)."""
        return self

    def describe(self) -> str:
        return f"{self.name} ({len(self.labels)} labels)"


class Metric(abc.ABC):
    """A named, streaming, mergeable statistic.

    ``update`` folds in one batch, ``merge`` folds in another instance's partial state
    (from another shard or process), ``result`` reads the answer. ``state_dict`` /
    ``load_state_dict`` carry the partial state across processes and checkpoints.
    Two instances that saw disjoint shards and were merged must give the same
    ``result`` as one instance that saw everything.

    Dissection scores (IoU at a quantile, IQR) are metrics of kind ``"dissection"``
    (see :class:`gdx.scores.DissectionMetric`); image-quality scores (FID) are kind
    ``"quality"``.
    """

    name: str = "metric"
    kind: str = "generic"

    @abc.abstractmethod
    def update(self, batch: Any) -> None:
        """Fold one batch into the statistic."""

    @abc.abstractmethod
    def merge(self, other: "Metric") -> None:
        """Fold another instance's partial state into this one."""

    @abc.abstractmethod
    def result(self) -> Any:
        """The statistic's value for everything seen so far."""

    def state_dict(self) -> dict[str, Any]:
        """Partial state as tensors and plain values (for checkpoints and transfer)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be checkpointed")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be checkpointed")
