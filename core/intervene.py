"""Edit a generator's layer: ablate units, insert them, inside a region.

Under :func:`intervene` the layer's output ``r`` becomes ``r * (1 - a) + v * a``
(SPEC §2), where ``a`` is 1 on the chosen units inside the region and 0 elsewhere,
and ``v`` is the value: 0 ablates, a unit's insertion constant (or its 0.99
quantile) inserts. The edit is a forward hook installed through :class:`gdx.Trace`,
so it is removed on exit, also after an exception.

>>> with gdx.intervene(gen, "layer4", [12, 40, 301]):          # ablate 3 units
...     images = gen.generate(z)
>>> k = gdx.insertion_values(gen, seg, "layer4", "tree", samples=200)
>>> with gdx.intervene(gen, "layer4", tree_units, value=k, region=brush):
...     images = gen.generate(z)                                  # paint trees
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from gdx.checks import check_segmentation
from gdx.dissect import resize_for
from gdx.errors import GdxError
from gdx.interfaces import Generator, Segmenter
from gdx.tracing import Trace, resolve_layers, run_to_layers

#: A value spec: a number, a tensor (per chosen unit, or per unit of the layer),
#: ``"q99"`` (each unit's 0.99 quantile; ``"q999"`` 0.999, ``"q50"`` median), or
#: ``("insert", concept)`` (the unit's insertion constant for ``concept``).
ValueSpec = Union[float, int, torch.Tensor, str, tuple]
UnitSpec = Union[Sequence[int], torch.Tensor, int, None]

DEFAULT_BATCH_SIZE = 16
#: Cap on the activations kept per unit when computing exact quantiles.
MAX_QUANTILE_VALUES = 2_000_000


class InterventionError(GdxError, ValueError):
    """An edit that cannot be applied (bad units, value or region)."""


# -- models and data ---------------------------------------------------------------


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
    import difflib

    close = difflib.get_close_matches(str(concept), labels, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise InterventionError(
        f"the segmenter has no label {concept!r}.{hint} Its labels: {', '.join(labels[:60])}"
        + (" ..." if len(labels) > 60 else "")
    )


def segment_images(segmenter: Segmenter, images: torch.Tensor) -> torch.Tensor:
    """Segment ``images`` (N x 3 x H x W in [-1, 1]) as dissection does: N x K x H' x W' int64.

    Images are resized to the segmenter's ``input_size`` with bilinear interpolation
    (``align_corners=False``, antialiased when shrinking; :func:`gdx.dissect.resize_for`)
    and the output is validated (:func:`gdx.checks.check_segmentation`).
    """
    seg = segmenter.segment(resize_for(segmenter, images))
    return check_segmentation(
        seg, n=images.shape[0], num_labels=len(segmenter.labels), batch=0, name=getattr(segmenter, "name", "?")
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
    out = run_to_layers(lambda: generator.generate(z), generator.module, layer)
    if layer not in out:
        raise InterventionError(f"layer {layer!r} did not run during generate(); pick a layer on the path to the image")
    return out[layer]


# -- statistics for values ---------------------------------------------------------


def _quantile_rows(values: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row ``q`` quantile with linear interpolation (torch.quantile refuses > 16M elements)."""
    ordered, _ = values.sort(dim=1)
    pos = q * (ordered.shape[1] - 1)
    lo = int(pos)
    hi = min(lo + 1, ordered.shape[1] - 1)
    frac = pos - lo
    return ordered[:, lo] * (1 - frac) + ordered[:, hi] * frac


@torch.no_grad()
def unit_quantiles(
    generator: Generator,
    layer: str,
    q: float = 0.99,
    *,
    samples: int = 200,
    seed: int = 0,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Each unit's ``q`` quantile over all feature cells of ``samples`` samples (U floats).

    GANPaint's "draw" value is the 0.99 quantile. The quantile is exact over the
    values kept; when a unit would exceed ``MAX_QUANTILE_VALUES`` values, every cell
    of a deterministic stride is kept instead.
    """
    if not 0.0 <= q <= 1.0:
        raise InterventionError(f"quantile q must be in [0, 1], got {q}")
    chunks: list[torch.Tensor] = []
    stride = 1
    for z in latent_batches(generator, samples, seed=seed, batch_size=batch_size):
        r = layer_output(generator, layer, z).float()
        per_unit = r.transpose(0, 1).reshape(r.shape[1], -1)
        if stride == 1:
            total = per_unit.shape[1] * samples / max(1, r.shape[0])
            stride = max(1, int(total // MAX_QUANTILE_VALUES) + (total % MAX_QUANTILE_VALUES > 0))
        chunks.append(per_unit[:, ::stride].cpu())
    return _quantile_rows(torch.cat(chunks, dim=1), q)


@torch.no_grad()
def insertion_values(
    generator: Generator,
    segmenter: Segmenter,
    layer: str,
    concept: str | int,
    *,
    samples: int = 200,
    seed: int = 0,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Each unit's insertion constant k_u for ``concept`` (U floats; SPEC §2).

    k_u is the mean of unit u's activation over the feature cells where the concept
    is present, each cell weighted by the fraction of its pixels the concept covers
    (the segmentation average-pooled to the layer's grid). This is the reference's
    default ("weighted mean present feature").
    """
    index = concept_index(segmenter, concept)
    num: torch.Tensor | None = None
    den = 0.0
    for z in latent_batches(generator, samples, seed=seed, batch_size=batch_size):
        with Trace(generator.module, layer) as tr:
            images = generator.generate(z)
        r = tr[layer].double()
        mask = concept_mask(segment_images(segmenter, images), index).double()
        w = F.adaptive_avg_pool2d(mask[:, None], r.shape[-2:])
        contrib = (r * w).sum(dim=(0, 2, 3)).cpu()
        num = contrib if num is None else num + contrib
        den += float(w.sum())
    if num is None or den <= 0:
        raise InterventionError(
            f"concept {segmenter.labels[index]!r} never appears in {samples} samples (seed {seed}): "
            "its insertion values are undefined. Use more samples, or pass value= explicitly."
        )
    return (num / den).float()


# -- the edit ----------------------------------------------------------------------


@dataclasses.dataclass
class Edit:
    """One edit: on ``layer``, units ``units`` (None = all) take ``value`` inside ``region``.

    ``region`` is a mask H x W or N x H x W (bool or float in [0, 1], any resolution),
    max-pooled to the layer's grid so a brush stroke covers every cell it touches.
    """

    layer: str
    units: UnitSpec = None
    value: ValueSpec = 0.0
    region: torch.Tensor | None = None


def _unit_index(units: UnitSpec, n_units: int, layer: str) -> torch.Tensor:
    if units is None:
        return torch.arange(n_units)
    idx = torch.as_tensor([units] if isinstance(units, int) else units, dtype=torch.long).reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_units):
        raise InterventionError(
            f"unit indices must lie in 0..{n_units - 1} for layer {layer!r} ({n_units} units); got "
            f"{idx.min().item()}..{idx.max().item()}"
        )
    return idx


def pool_region(region: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """A region mask (H x W, N x H x W or N x 1 x H x W) as N x 1 x h x w floats on ``grid``.

    Larger masks are adaptive-max-pooled (a cell is on if any of its pixels is);
    smaller ones are upsampled nearest-neighbour.
    """
    m = torch.as_tensor(region)
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        m = m[:, None]
    elif m.dim() != 4 or m.shape[1] != 1:
        raise InterventionError(f"region must be H x W, N x H x W or N x 1 x H x W; got shape {tuple(m.shape)}")
    m = m.float()
    h, w = int(grid[0]), int(grid[1])
    if m.shape[-2] >= h and m.shape[-1] >= w:
        return F.adaptive_max_pool2d(m, (h, w))
    return F.interpolate(m, size=(h, w), mode="nearest")


def apply_edit(r: torch.Tensor, units: torch.Tensor, value: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
    """``r * (1 - a) + v * a`` on the chosen units (differentiable; ``r`` is not modified).

    ``value`` is a scalar, one value per chosen unit, or anything broadcastable to
    N x len(units) x h x w; ``region`` is None (everywhere) or N|1 x 1 x h x w.
    """
    units = units.to(r.device)
    sub = r.index_select(1, units)
    v = value.to(r.device, r.dtype)
    if v.dim() == 1:
        v = v.view(1, -1, 1, 1)
    if region is None:
        new = v.expand_as(sub)
    else:
        a = region.to(r.device, r.dtype)
        if a.shape[0] not in (1, r.shape[0]):
            raise InterventionError(
                f"region has {a.shape[0]} masks but the batch has {r.shape[0]} images: pass one mask or one per image"
            )
        new = sub * (1 - a) + v * a
    return r.index_copy(1, units, new.to(r.dtype))


def _parse_quantile(text: str) -> float | None:
    m = re.fullmatch(r"q(\d+)", text.strip())
    if not m:
        return None
    digits = m.group(1)
    return float("0." + digits) if len(digits) > 2 or digits.startswith("0") else int(digits) / 100.0


class Intervention(contextlib.AbstractContextManager):
    """Apply :class:`Edit` s to a generator while the context is open (see :func:`intervene`).

    Values that need statistics (``"q99"``, ``("insert", concept)``) are computed on
    entry, before the hooks go in, from ``samples`` samples of ``seed`` — or taken
    from ``stats`` (a U-vector of precomputed per-unit values) when given.
    """

    def __init__(
        self,
        generator: Generator | nn.Module,
        edits: Sequence[Edit],
        *,
        segmenter: Segmenter | None = None,
        stats: torch.Tensor | None = None,
        samples: int = 200,
        seed: int = 0,
    ) -> None:
        self.generator = generator
        self.module = module_of(generator)
        self.edits = list(edits)
        if not self.edits:
            raise InterventionError("intervene needs at least one edit")
        resolve_layers(self.module, [e.layer for e in self.edits])
        self.segmenter = segmenter
        self.stats = stats
        self.samples = samples
        self.seed = seed
        self._values: list[torch.Tensor] = []
        self._regions: list[torch.Tensor | None] = []
        self._stack = contextlib.ExitStack()

    def _resolve_value(self, edit: Edit) -> torch.Tensor:
        value = edit.value
        if isinstance(value, torch.Tensor):
            return value.detach().float() if not value.requires_grad else value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return torch.tensor(float(value))
        if isinstance(value, list):
            return torch.tensor([float(v) for v in value])
        if self.stats is not None and (isinstance(value, str) or isinstance(value, tuple)):
            return torch.as_tensor(self.stats).float()
        needs_generator = "value " + repr(value) + " needs statistics from samples: pass a gdx.Generator"
        if isinstance(value, str):
            q = _parse_quantile(value)
            if q is None:
                raise InterventionError(
                    f"unknown value {value!r}: use a number, a tensor, 'q99' (0.99 quantile) or ('insert', concept)"
                )
            if not isinstance(self.generator, Generator):
                raise InterventionError(needs_generator + " or stats=<per-unit tensor>")
            return unit_quantiles(self.generator, edit.layer, q, samples=self.samples, seed=self.seed)
        if isinstance(value, tuple) and len(value) == 2 and value[0] == "insert":
            if self.segmenter is None or not isinstance(self.generator, Generator):
                raise InterventionError(
                    f"value {value!r} needs segmenter=<gdx.Segmenter> and a gdx.Generator to find the insertion "
                    "constants, or stats=gdx.insertion_values(...) precomputed"
                )
            return insertion_values(
                self.generator, self.segmenter, edit.layer, value[1], samples=self.samples, seed=self.seed
            )
        raise InterventionError(
            f"unknown value {value!r}: use a number, a tensor, 'q99' (0.99 quantile) or ('insert', concept)"
        )

    def _edit_fn(self, indices: list[int]):
        def edit(name: str, out: Any) -> torch.Tensor:
            if not isinstance(out, torch.Tensor) or out.dim() != 4:
                raise InterventionError(
                    f"layer {name!r} outputs {type(out).__name__}"
                    + (f" of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else "")
                    + "; intervene edits N x U x h x w feature maps: choose a convolutional layer"
                )
            for i in indices:
                e = self.edits[i]
                n_units = out.shape[1]
                units = _unit_index(e.units, n_units, name)
                value = self._values[i]
                if value.dim() == 1 and value.numel() != units.numel():
                    if value.numel() != n_units:
                        raise InterventionError(
                            f"value has {value.numel()} entries; expected one per chosen unit ({units.numel()}) "
                            f"or one per unit of {name!r} ({n_units})"
                        )
                    value = value.to(units.device)[units]
                region = None
                if self._regions[i] is not None:
                    region = pool_region(self._regions[i], out.shape[-2:])
                out = apply_edit(out, units, value, region)
            return out

        return edit

    def __enter__(self) -> "Intervention":
        self._values = [self._resolve_value(e) for e in self.edits]
        self._regions = [None if e.region is None else torch.as_tensor(e.region) for e in self.edits]
        by_layer: dict[str, list[int]] = {}
        for i, e in enumerate(self.edits):
            by_layer.setdefault(e.layer, []).append(i)
        try:
            for layer, indices in by_layer.items():
                self._stack.enter_context(Trace(self.module, layer, edit=self._edit_fn(indices), record=False))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._stack.close()
        return False

    @property
    def values(self) -> list[torch.Tensor]:
        """The resolved value of each edit (available inside the context)."""
        return list(self._values)


def intervene(
    generator: Generator | nn.Module,
    layer: str | Sequence[Edit],
    units: UnitSpec = None,
    *,
    value: ValueSpec = 0.0,
    region: torch.Tensor | None = None,
    segmenter: Segmenter | None = None,
    stats: torch.Tensor | None = None,
    samples: int = 200,
    seed: int = 0,
) -> Intervention:
    """Context manager: ``layer``'s output becomes ``r * (1 - a) + v * a`` (SPEC §2).

    ``units``: unit indices (None = all). ``value``: a number (0 ablates), a tensor
    (one value per chosen unit, or one per unit of the layer), ``"q99"`` (each unit's
    0.99 quantile over ``samples`` samples of ``seed``; ``"q999"`` for 0.999), or
    ``("insert", concept)`` (the insertion constants of :func:`insertion_values`,
    which needs ``segmenter``). ``stats`` supplies precomputed per-unit values for the
    last two and skips the sampling. ``region``: a mask at any resolution (H x W for
    all images, N x H x W per image; bool or float), max-pooled to the layer's grid.

    Several edits compose: pass a list of :class:`Edit` as ``layer``, or nest
    contexts (inner edits see the outer edits' output). Hooks are removed on exit,
    also after an exception.

    >>> with gdx.intervene(gen, "layer4", [3, 17], value="q99", region=brush):
    ...     painted = gen.generate(z)
    >>> edits = [gdx.Edit("layer4", trees), gdx.Edit("layer6", domes, value=0.0)]
    >>> with gdx.intervene(gen, edits):
    ...     images = gen.generate(z)
    """
    if isinstance(layer, str):
        edits = [Edit(layer, units, value, region)]
    else:
        edits = list(layer)
        if not all(isinstance(e, Edit) for e in edits):
            raise InterventionError("intervene(generator, layer, ...) takes a layer name or a list of gdx.Edit")
    return Intervention(generator, edits, segmenter=segmenter, stats=stats, samples=samples, seed=seed)
