"""Regenerate each unit's top activating samples and highlight where the unit fires.

A dissection keeps, per unit, the indices of its top-k samples (by peak activation),
not the images: images are cheap to regenerate from the run's latent recipe
(``generator.sample_latents(samples, seed)``) and expensive to store. Each unit gets
ONE strip image (k tiles side by side), so a 512-unit report loads 512 lazy images,
not 10 000.

Highlighting follows the dissection (docs/dissection.md): the unit's map is upsampled
bilinearly (``align_corners=False``) to the tile size and compared with the unit's
threshold; outside the region the image is dimmed, and the region's border is drawn.
With a segmenter (``overlay``), the pixels the segmenter gives the unit's concept are
tinted too, so the tile shows how the unit's region and the concept overlap.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gdx.interfaces import Generator, Segmenter
from gdx.plots import to_uint8
from gdx.results import Dissection
from gdx.sampling import concept_mask, segment_images
from gdx.tracing import Trace

#: Colour of the region's border (RGB).
OUTLINE = np.array([255, 214, 0], dtype=np.float32)
#: Tint of the unit's concept where the segmenter finds it (the overlay), and its opacity.
CONCEPT_TINT = np.array([0, 190, 255], dtype=np.float32)
TINT_ALPHA = 0.45
#: Width in CSS px a strip may take by default, so a unit table row fits a 1400 px window.
STRIP_BUDGET = 860


@dataclass(frozen=True)
class StripSpec:
    """Where unit strips go and how they look."""

    folder: Path
    k: int
    tile: int
    pad: int = 2
    quality: int = 80


def strip_name(unit: int) -> str:
    """File name of a unit's strip (relative to its layer folder)."""
    return f"unit_{unit:04d}.jpg"


def highlight(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Dim ``image`` (H x W x 3 uint8) outside ``region`` (H x W bool) and outline the region."""
    out = image.astype(np.float32)
    inside = region[..., None]
    out = np.where(inside, out, out * 0.3 + 40.0)
    padded = np.pad(region, 1, mode="edge")
    interior = (
        padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )
    border = region & ~interior
    out[border] = OUTLINE
    return out.clip(0, 255).astype(np.uint8)


def tint(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend :data:`CONCEPT_TINT` into ``image`` (H x W x 3 uint8) where ``mask`` (H x W bool) holds."""
    out = image.astype(np.float32)
    out[mask] = out[mask] * (1 - TINT_ALPHA) + CONCEPT_TINT * TINT_ALPHA
    return out.clip(0, 255).astype(np.uint8)


def _save_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    from PIL import Image  # Pillow: a declared dependency (comes with torchvision)

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="JPEG", quality=quality, optimize=True)


@torch.no_grad()
def render_unit_strips(
    generator: Generator,
    dissection: Dissection,
    spec: StripSpec,
    *,
    units: Iterable[int] | None = None,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
    segmenter: Segmenter | None = None,
) -> dict[int, str]:
    """Write one strip per unit (its top ``spec.k`` samples, region highlighted).

    Returns ``{unit: file name}``. Samples are regenerated once each, however many
    units share them; only the (unit, sample) maps that are needed are kept. With a
    ``segmenter``, each tile also tints where it finds the unit's concept (its label).
    """
    settings = dissection.settings
    chosen = sorted(set(range(dissection.units) if units is None else (int(u) for u in units)))
    k = min(spec.k, int(dissection.top_indices.shape[1]))
    top = dissection.top_indices[:, :k].long()
    wanted: dict[int, list[tuple[int, int]]] = defaultdict(list)  # sample -> [(unit, rank)]
    for u in chosen:
        for rank, s in enumerate(top[u].tolist()):
            if s >= 0:
                wanted[int(s)].append((u, rank))
    order = sorted(wanted)
    if not order:
        return {}
    z_all = generator.sample_latents(settings.samples, seed=settings.seed)
    labels = list(dissection.labels)
    concept_of = {u.unit: labels.index(u.label) for u in dissection.unit_labels if u.label in labels}
    tiles: dict[tuple[int, int], np.ndarray] = {}
    thresholds = dissection.thresholds.float()
    done = 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        z = z_all[torch.as_tensor(idx)].to(generator.device)
        with Trace(generator, dissection.layer) as tr:
            images = generator.generate(z)
        r = tr[dissection.layer].float()
        seg = segment_images(segmenter, images) if segmenter is not None else None
        for b, s in enumerate(idx):
            image = to_uint8(images[b], spec.tile)
            pairs = wanted[s]
            unit_idx = torch.as_tensor([u for u, _ in pairs])
            maps = F.interpolate(r[b : b + 1, unit_idx], size=(spec.tile, spec.tile), mode="bilinear",
                                 align_corners=False)[0].cpu()
            regions = (maps > thresholds[unit_idx].view(-1, 1, 1)).numpy()
            for j, (u, rank) in enumerate(pairs):
                base = image
                if seg is not None and u in concept_of:
                    mask = concept_mask(seg[b : b + 1], concept_of[u]).float()[:, None]
                    tile_mask = F.interpolate(mask, size=(spec.tile, spec.tile), mode="nearest")[0, 0] > 0.5
                    base = tint(image, tile_mask.cpu().numpy())
                tiles[(u, rank)] = highlight(base, regions[j])
        done += len(idx)
        if progress:
            progress(done, len(order))
    names: dict[int, str] = {}
    t, pad = spec.tile, spec.pad
    for u in chosen:
        ranks = [rank for rank in range(k) if (u, rank) in tiles]
        if not ranks:
            continue
        strip = np.full((t, len(ranks) * (t + pad) - pad, 3), 255, dtype=np.uint8)
        for i, rank in enumerate(ranks):
            strip[:, i * (t + pad) : i * (t + pad) + t] = tiles.pop((u, rank))
        name = strip_name(u)
        _save_jpeg(spec.folder / name, strip, spec.quality)
        names[u] = name
    return names


def tile_size(image_size: Sequence[int], requested: int | None, k: int = 8, *, pad: int = 2,
              budget: int = STRIP_BUDGET) -> int:
    """The tile edge: ``requested``, else the image height within 96..128 px, shrunk so
    ``k`` tiles fit in ``budget`` px (at least 32 px).

    Small images (the 64 px scene world) are shown enlarged to 96 px; 128 px and larger
    ones at most at 128 px, and narrower when ``k`` tiles of that size would not fit a
    1400 px window beside the table's other columns.
    """
    if requested:
        return int(requested)
    want = max(96, min(128, int(image_size[0])))
    fit = (budget + pad) // max(1, k) - pad
    return int(max(32, min(want, fit)))
