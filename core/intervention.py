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

from gdx.errors import InterventionError
from gdx.interfaces import Generator, Segmenter
from gdx.sampling import module_of
from gdx.tracing import Trace, resolve_layers
from gdx.values import insertion_values, unit_quantiles

#: A value spec: a number, a tensor (per chosen unit, or per unit of the layer),
#: ``"q99"`` (each unit's 0.99 quantile; ``"q999"`` 0.999, ``"q50"`` median), or
#: ``("insert", concept)`` (the unit's insertion constant for ``concept``).
ValueSpec = Union[float, int, torch.Tensor, str, tuple]
UnitSpec = Union[Sequence[int], torch.Tensor, int, None]






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
