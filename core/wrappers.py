"""Adapters for plain models: any ``nn.Module`` generator, any segmentation callable."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from gdx.checks import check_labels
from gdx.interfaces import Generator, LatentRows, Segmenter


def seeded_normal(n: int, latent_shape: Sequence[int], seed: int) -> torch.Tensor:
    """The documented latent recipe: ``torch.randn((n, *shape), generator=manual_seed(seed))``.

    Any tool can reproduce gdx's samples from this one line.
    """
    return torch.randn((n, *latent_shape), generator=torch.Generator().manual_seed(int(seed)))


class SeededNormalRows(LatentRows):
    """Rows of ``seeded_normal(n, shape, seed)`` drawn batch by batch: memory that does not grow with ``n``.

    Bit for bit the same as slicing the whole tensor. torch's CPU ``randn`` of a float32
    tensor of 16 or more values draws one uniform per value in order, turns each aligned
    block of 16 into normals (Box-Muller), and redraws the last 16 values when the size is
    not a multiple of 16. Drawing the same stream in pieces that start at multiples of 16,
    with a last piece of at least 16 values, therefore gives the same numbers.
    """

    _CHUNK = 1 << 20  # values drawn at once when skipping ahead

    def __init__(self, n: int, latent_shape: Sequence[int], seed: int) -> None:
        self.n, self.shape, self.seed = int(n), tuple(int(x) for x in latent_shape), int(seed)
        self.per_row = 1
        for x in self.shape:
            self.per_row *= x
        self.total = self.n * self.per_row
        self._restart()

    def _restart(self) -> None:
        self._gen = torch.Generator().manual_seed(self.seed)
        self._pos = 0                      # values drawn so far
        self._buf = torch.empty(0)         # values [self._buf_start, self._pos)
        self._buf_start = 0

    def _draw(self, target: int) -> torch.Tensor:
        """Draw the next piece, up to ``target`` rounded to the rules above."""
        end = min(self.total, -(-target // 16) * 16)
        if self.total - end < 16:
            end = self.total
        piece = torch.randn(end - self._pos, generator=self._gen, dtype=torch.float32)
        self._pos = end
        return piece

    def rows(self, start: int, stop: int) -> torch.Tensor:
        if torch.get_default_dtype() != torch.float32:  # the recipe's other dtypes: the whole tensor
            return seeded_normal(self.n, self.shape, self.seed)[start:stop]
        first, last = start * self.per_row, stop * self.per_row
        if first < self._buf_start:
            self._restart()
        while self._pos < first:  # skip ahead (a shard or a resumed run), in bounded pieces
            begin = self._pos
            piece = self._draw(min(first, begin + self._CHUNK))
            self._buf, self._buf_start = piece[max(first - begin, 0):], max(first, begin)
        if self._buf_start < first:
            self._buf, self._buf_start = self._buf[first - self._buf_start:], first
        pieces = [self._buf]
        while self._pos < last:
            pieces.append(self._draw(last))
        values = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        out = values[: last - first].reshape(stop - start, *self.shape).clone()
        self._buf, self._buf_start = values[last - first:], last
        return out


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

    def latent_rows(self, n: int, *, seed: int) -> LatentRows:
        if type(self).sample_latents is not ModuleGenerator.sample_latents:
            return super().latent_rows(n, seed=seed)  # a subclass with its own recipe
        return SeededNormalRows(n, self.latent_shape, seed)

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
        self._labels = check_labels(labels, name=name or "wrapped")
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
