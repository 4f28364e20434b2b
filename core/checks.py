"""Run-time checks of what adapters return, with errors that say which batch and how to fix."""

from __future__ import annotations

import torch

from gdx.errors import GeneratorOutputError, NonFiniteError, SegmenterOutputError


def _bad_samples(x: torch.Tensor, sample_index: torch.Tensor) -> list[int]:
    bad = ~torch.isfinite(x.detach()).flatten(1).all(1)
    return sample_index[bad.cpu()].tolist()


def check_finite(what: str, x: torch.Tensor, *, batch: int, sample_index: torch.Tensor) -> None:
    """Raise :class:`NonFiniteError` naming ``what``, the batch and the bad samples."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
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
    return images


def check_segmentation(seg: object, *, n: int, num_labels: int, batch: int, name: str) -> torch.Tensor:
    """Validate a segmenter's output and return it as n x K x H x W int64."""
    if not isinstance(seg, torch.Tensor):
        raise SegmenterOutputError(
            f"segmenter {name!r} returned a {type(seg).__name__}; segment() must return a LongTensor "
            "N x H x W (or N x K x H x W) of label indices."
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
