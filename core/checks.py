"""Run-time checks of what adapters return, with errors that say which batch and how to fix."""

from __future__ import annotations

import torch

from collections import Counter
from collections.abc import Sequence

from gdx.errors import GeneratorOutputError, NonFiniteError, SegmenterOutputError

#: Generated images must be "nominally in [-1, 1]": ProGAN's unclamped output strays a
#: little outside, but values beyond this are images in another range (0..255, say).
IMAGE_LIMIT = 10.0


def _bad_samples(x: torch.Tensor, sample_index: torch.Tensor) -> list[int]:
    bad = ~torch.isfinite(x.detach()).flatten(1).all(1)
    return sample_index[bad.cpu()].tolist()


def check_finite(what: str, x: torch.Tensor, *, batch: int, sample_index: torch.Tensor) -> None:
    """Raise :class:`NonFiniteError` naming ``what``, the batch and the bad samples."""
    # One summing pass: a finite sum means every element is finite; a sum that overflowed
    # (huge but finite values) falls through to the exact element-wise check.
    if x.is_floating_point() and not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        bad = _bad_samples(x, sample_index)
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        raise NonFiniteError(
            f"NaN/Inf in {what} at batch {batch}, samples {shown}. Check the model's weights and "
            "numerics (e.g. run in float32, lower the latent truncation), or exclude those samples."
        )


def check_images(images: object, *, n: int, batch: int, sample_index: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise GeneratorOutputError(
            f"the generator returned a {type(images).__name__}, not a tensor of images; "
            "its generate(z) must return N x 3 x H x W floats in [-1, 1]."
        )
    if images.ndim != 4 or images.shape[0] != n or images.shape[1] != 3 or not images.is_floating_point():
        raise GeneratorOutputError(
            f"the generator returned {tuple(images.shape)} {images.dtype}; expected ({n}, 3, H, W) "
            "float RGB in [-1, 1]. Wrap the model so generate(z) returns that (e.g. drop extra outputs)."
        )
    check_finite("generated images", images, batch=batch, sample_index=sample_index)
    lo, hi = float(images.min()), float(images.max())
    if lo < -IMAGE_LIMIT or hi > IMAGE_LIMIT:
        raise GeneratorOutputError(
            f"the generator returned image values {lo:.4g}..{hi:.4g} at batch {batch}; generate(z) must "
            "return RGB in [-1, 1]. Rescale in the adapter (0..255: x / 127.5 - 1; 0..1: x * 2 - 1)."
        )
    return images


def check_labels(labels: Sequence[object], *, name: str) -> list[str]:
    """A segmenter's label names: at least one, each a string, no two the same."""
    labels = list(labels)
    if not labels:
        raise SegmenterOutputError(f"segmenter {name!r} declares no labels; it needs at least one label name.")
    odd = [repr(x) for x in labels if not isinstance(x, str)]
    if odd:
        raise SegmenterOutputError(
            f"segmenter {name!r} has labels that are not strings ({', '.join(odd[:5])}); name each label with a string."
        )
    twice = sorted(x for x, k in Counter(str(x) for x in labels).items() if k > 1)
    if twice:
        raise SegmenterOutputError(
            f"segmenter {name!r} names {', '.join(map(repr, twice[:5]))} more than once; label names must be unique "
            "(merge the classes in the segmenter's output, or name them apart)."
        )
    return [str(x) for x in labels]


def check_stable_segmentation(seg: torch.Tensor, first: tuple[int, ...] | None, *, batch: int,
                              name: str) -> tuple[int, ...]:
    """The K x H x W of ``seg``; an error when it differs from ``first`` (the first batch's)."""
    shape = tuple(int(x) for x in seg.shape[1:])
    if first is not None and shape != first:
        raise SegmenterOutputError(
            f"segmenter {name!r} returned {shape[0]} label maps of {shape[1]}x{shape[2]} at batch {batch}, "
            f"but {first[0]} of {first[1]}x{first[2]} at the first batch; a segmenter must give every image "
            "the same number of label maps at the same size."
        )
    return shape


def check_segmentation(seg: object, *, n: int, num_labels: int, batch: int, name: str) -> torch.Tensor:
    """Validate a segmenter's output and return it as n x K x H x W int64."""
    if not isinstance(seg, torch.Tensor):
        raise SegmenterOutputError(
            f"segmenter {name!r} returned a {type(seg).__name__}; segment() must return a LongTensor "
            "N x H x W (or N x K x H x W) of label indices."
        )
    if seg.dtype == torch.bool:
        raise SegmenterOutputError(
            f"segmenter {name!r} returned a bool mask at batch {batch}; segment() must return integer "
            "label indices (for a one-concept mask: mask.long(), with labels [\"background\", \"thing\"])."
        )
    if seg.is_floating_point() or seg.is_complex():
        raise SegmenterOutputError(
            f"segmenter {name!r} returned {seg.dtype} values at batch {batch}; segment() must return "
            "integer label indices (e.g. logits.argmax(1)), not scores."
        )
    if seg.ndim == 3:
        seg = seg[:, None]
    if seg.ndim != 4 or seg.shape[0] != n:
        raise SegmenterOutputError(
            f"segmenter {name!r} returned shape {tuple(seg.shape)} at batch {batch}; expected "
            f"({n}, H, W) or ({n}, K, H, W) for {n} images."
        )
    seg = seg.long()
    lo, hi = int(seg.min()), int(seg.max())
    if lo < -1 or hi >= num_labels:
        raise SegmenterOutputError(
            f"segmenter {name!r} returned label values {lo}..{hi} at batch {batch}, outside "
            f"-1..{num_labels - 1} (it declares {num_labels} labels; -1 means none). Fix its labels "
            "list or its output mapping."
        )
    return seg
