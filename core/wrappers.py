"""Adapters for plain models: any ``nn.Module`` generator, any segmentation callable."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from gdx.interfaces import Generator, Segmenter


def seeded_normal(n: int, latent_shape: Sequence[int], seed: int) -> torch.Tensor:
    """The documented latent recipe: ``torch.randn((n, *shape), generator=manual_seed(seed))``.

    Any tool can reproduce gdx's samples from this one line.
    """
    return torch.randn((n, *latent_shape), generator=torch.Generator().manual_seed(int(seed)))


class ModuleGenerator(Generator):
    """A :class:`Generator` around an ``nn.Module`` mapping latents to images in [-1, 1]."""

    def __init__(self, module: nn.Module, *, latent_shape: Sequence[int], name: str | None = None,
                 default_layer: str | None = None) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"wrap_generator needs an nn.Module, got {type(module).__name__}")
        self._module = module.eval()
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.name = name or type(module).__name__
        self.default_layer = default_layer

    @property
    def module(self) -> nn.Module:
        return self._module

    def sample_latents(self, n: int, *, seed: int) -> torch.Tensor:
        return seeded_normal(n, self.latent_shape, seed)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return self._module(z)


def wrap_generator(module: nn.Module, *, latent_shape: Sequence[int], name: str | None = None,
                   default_layer: str | None = None) -> Generator:
    """Wrap any ``nn.Module`` that maps latents (N x *latent_shape) to images in [-1, 1].

    Latents for ``n`` samples and seed ``s`` are
    ``torch.randn((n, *latent_shape), generator=torch.Generator().manual_seed(s))``.

    >>> gen = gdx.wrap_generator(my_gan, latent_shape=(512,))
    >>> gdx.dissect(gen, seg, "layer4", samples=1000)
    """
    return ModuleGenerator(module, latent_shape=latent_shape, name=name, default_layer=default_layer)


class CallableSegmenter(Segmenter):
    """A :class:`Segmenter` around a callable mapping images to label maps."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        *,
        labels: Sequence[str],
        categories: Mapping[str, str] | None = None,
        name: str | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"wrap_segmenter needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self._labels = list(labels)
        if not self._labels:
            raise ValueError("wrap_segmenter needs at least one label name")
        self._categories = dict(categories or {})
        unknown = set(self._categories) - set(self._labels)
        if unknown:
            raise ValueError(f"categories name labels that are not in labels: {sorted(unknown)}")
        fn_name: str = getattr(fn, "__name__", type(fn).__name__)
        self.name = name or fn_name
        self.input_size = input_size

    @property
    def labels(self) -> list[str]:
        return self._labels

    @property
    def categories(self) -> dict[str, str]:
        return self._categories

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images)

    def to(self, device: torch.device | str) -> "CallableSegmenter":
        if isinstance(self.fn, nn.Module):
            self.fn.to(device)
        return self


def wrap_segmenter(
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    labels: Sequence[str],
    categories: Mapping[str, str] | None = None,
    name: str | None = None,
    input_size: tuple[int, int] | None = None,
) -> Segmenter:
    """Wrap a callable mapping images (N x 3 x H x W in [-1, 1]) to labels.

    ``fn`` returns int labels N x H x W (or N x K x H x W) indexing ``labels``, -1 for
    none. ``categories`` optionally maps label -> category ("object", "part", ...).

    >>> seg = gdx.wrap_segmenter(lambda x: model(x).argmax(1), labels=["sky", "tree"])
    """
    return CallableSegmenter(fn, labels=labels, categories=categories, name=name, input_size=input_size)
