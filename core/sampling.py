"""From latents to images to labels, in one place: the recipe every measurement shares.

Dissection, intervention, causal effects, repair and paint all draw latents with
``generator.sample_latents(n, seed=seed)`` in fixed batches, resize images to the
segmenter's ``input_size`` the same way and check what the segmenter returns, so a
sample here is the same image everywhere.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from gdx.checks import check_segmentation
from gdx.errors import InterventionError
from gdx.interfaces import Generator, Segmenter
from gdx.tracing import run_to_layers

#: Samples per forward pass when a caller does not choose (measurements, not dissection).
DEFAULT_BATCH_SIZE = 16


def resize_for(segmenter: Segmenter, images: torch.Tensor) -> torch.Tensor:
    """Resize images to the segmenter's preferred input size (bilinear, antialiased down)."""
    size = segmenter.input_size
    if size is None or tuple(images.shape[-2:]) == tuple(size):
        return images
    down = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False, antialias=down)


def module_of(generator: Generator | nn.Module) -> nn.Module:
    """The ``nn.Module`` whose layers are edited (a Generator's ``module``, or the module itself)."""
    if isinstance(generator, Generator):
        return generator.module
    if isinstance(generator, nn.Module):
        return generator
    raise TypeError(f"expected a gdx.Generator or nn.Module, got {type(generator).__name__}")


def latent_batches(
    generator: Generator, samples: int, *, seed: int, batch_size: int | None = None
) -> Iterator[torch.Tensor]:
    """Latents of samples ``0..samples-1`` for ``seed`` (the dissection recipe), in batches, on the device."""
    if samples < 1:
        raise InterventionError(f"samples must be >= 1, got {samples}")
    bs = batch_size or DEFAULT_BATCH_SIZE
    z = generator.sample_latents(samples, seed=seed)
    for start in range(0, samples, bs):
        yield z[start : start + bs].to(generator.device)


def concept_index(segmenter: Segmenter, concept: str | int) -> int:
    """Index of ``concept`` (a label name or an index) in ``segmenter.labels``."""
    labels = list(segmenter.labels)
    if isinstance(concept, int) and not isinstance(concept, bool):
        if 0 <= concept < len(labels):
            return concept
        raise InterventionError(f"concept index {concept} is out of range: the segmenter has {len(labels)} labels")
    if concept in labels:
        return labels.index(concept)
    close = difflib.get_close_matches(str(concept), labels, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise InterventionError(
        f"the segmenter has no label {concept!r}.{hint} Its labels: {', '.join(labels[:60])}"
        + (" ..." if len(labels) > 60 else "")
    )


def segment_images(segmenter: Segmenter, images: torch.Tensor, *, batch: int = 0) -> torch.Tensor:
    """Segment ``images`` (N x 3 x H x W in [-1, 1]) as every measurement does: N x K x H' x W' int64.

    Images are resized to the segmenter's ``input_size`` with bilinear interpolation
    (``align_corners=False``, antialiased when shrinking; :func:`resize_for`)
    and the output is validated (:func:`gdx.checks.check_segmentation`; ``batch``
    names the batch in its errors). Dissection and intervention share this one path.
    """
    seg = segmenter.segment(resize_for(segmenter, images))
    return check_segmentation(
        seg, n=images.shape[0], num_labels=len(segmenter.labels), batch=batch, name=getattr(segmenter, "name", "?")
    )


def concept_mask(seg: torch.Tensor, index: int) -> torch.Tensor:
    """Bool N x H x W: where the concept is present (any of the K labels, for N x K x H x W)."""
    if seg.dim() == 4:
        return (seg == index).any(dim=1)
    return seg == index


def label_fractions(seg: torch.Tensor, n_labels: int) -> torch.Tensor:
    """Pixel fraction of every label per image, N x L (a pixel counts once per label)."""
    n = seg.shape[0]
    if seg.dim() == 3:
        seg = seg[:, None]
    flat = (seg.reshape(n, seg.shape[1], -1) + 1).clamp(0, n_labels)  # -1 (none) -> 0
    hw = flat.shape[-1]
    present = torch.zeros(n, n_labels + 1, hw, dtype=torch.bool, device=seg.device)
    present.scatter_(1, flat, True)
    return present[:, 1:].sum(-1).double() / hw


def layer_output(generator: Generator, layer: str, z: torch.Tensor) -> torch.Tensor:
    """The layer's output for latents ``z`` (the rest of the network is skipped)."""
    out = run_to_layers(lambda: generator.generate(z), generator, layer)
    if layer not in out:
        raise InterventionError(f"layer {layer!r} did not run during generate(); pick a layer on the path to the image")
    return out[layer]
