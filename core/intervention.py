"""Edit a generator's layer: ablate units, insert them, inside a region.

Under :func:`intervene` the layer's output ``r`` becomes ``r * (1 - a) + v * a``
(docs/method.md, "Intervention"), where ``a`` is 1 on the chosen units inside the region and 0 elsewhere,
and ``v`` is the :class:`Value`: 0 ablates, a unit's insertion constant (or its 0.99
quantile) inserts. The edit is a forward hook installed through :class:`gdx.Trace`,
so it is removed on exit, also after an exception.

>>> with gdx.intervene(gen, "layer4", [12, 40, 301]):          # ablate 3 units
...     images = gen.generate(z)
>>> k = gdx.insertion_values(gen, seg, "layer4", "tree", samples=200)
>>> with gdx.intervene(gen, "layer4", tree_units, value=k, region=brush):
...     images = gen.generate(z)                                  # paint trees
>>> with gdx.intervene(gen, "layer4", tree_units, value=gdx.Value.insertion("tree"), segmenter=seg):
...     images = gen.generate(z)                                  # the same, k computed on entry
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal, Union, overload

import torch
import torch.nn.functional as F
from torch import nn

from gdx.errors import InterventionError
from gdx.interfaces import Generator, Segmenter
from gdx.sampling import module_of
from gdx.tracing import LayerAddress, Trace, resolve_layers
from gdx.values import insertion_values, unit_quantiles

UnitSpec = Union[Sequence[int], torch.Tensor, int, None]

#: What :meth:`Value.parse` accepts, to name the accepted forms in errors.
_VALUE_FORMS = (
    "a number (0 ablates), a list or tensor (one value per chosen unit, or one per unit of the layer), "
    "'q99' (each unit's 0.99 quantile; 'q999' = 0.999, 'q50' = median, 'q100' = max), "
    "('insert', concept) (the insertion constants), or a gdx.Value "
    "(Value.constant(x), Value.per_unit(t), Value.quantile(q), Value.insertion(concept))"
)

ValueKind = Literal["constant", "per_unit", "quantile", "insertion"]


# -- the value -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class Value:
    """What the chosen units are set to: ``v`` in ``r * (1 - a) + v * a``.

    Build one with a constructor; :meth:`parse` also reads the short forms that
    ``intervene(..., value=...)`` and :class:`Edit` accept (``0.0``, ``[1.0, 2.0]``, a
    tensor, ``"q99"``, ``("insert", "tree")``).

    * ``Value.constant(x)``: every chosen unit takes ``x`` (``0.0`` ablates).
    * ``Value.per_unit(t)``: one value per chosen unit, or one per unit of the layer
      (a tensor keeps its autograd graph, so the value can be optimised). At a step
      window ``blk@A-B`` it may have one row per step (steps x U), applied step by step.
    * ``Value.quantile(q)``: each unit's ``q`` quantile over samples
      (:func:`gdx.unit_quantiles`; GANPaint's "draw" value is ``q=0.99``).
    * ``Value.insertion(concept)``: each unit's insertion constant for ``concept``
      (:func:`gdx.insertion_values`; needs ``segmenter=``).

    The last two need statistics: they are computed when the intervention is
    entered, or taken from ``intervene(..., stats=...)``.
    """

    kind: ValueKind
    #: The constant (``constant``) or the quantile in [0, 1] (``quantile``); else None.
    number: float | None = None
    #: The values (``per_unit``); else None.
    tensor: torch.Tensor | None = None
    #: The concept name or label index (``insertion``); else None.
    concept: str | int | None = None

    @classmethod
    def constant(cls, x: float) -> Value:
        """Every chosen unit takes ``x`` (``Value.constant(0.0)`` ablates)."""
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise InterventionError(f"Value.constant takes a number, got {x!r}; for per-unit values use Value.per_unit")
        return cls("constant", number=float(x))

    @classmethod
    def per_unit(cls, values: torch.Tensor | Sequence[float]) -> Value:
        """One value per chosen unit, or one per unit of the layer (a tensor or a list of numbers)."""
        if isinstance(values, torch.Tensor):
            return cls("per_unit", tensor=values)
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise InterventionError(f"Value.per_unit takes a tensor or a list of numbers, got {values!r}")
        return cls("per_unit", tensor=torch.tensor([float(v) for v in values]))

    @classmethod
    def quantile(cls, q: float) -> Value:
        """Each unit's ``q`` quantile (0 <= q <= 1) over the samples' feature cells."""
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 <= float(q) <= 1.0:
            raise InterventionError(
                f"a quantile must be a number between 0 and 1, got {q!r}: write Value.quantile(0.99) "
                "(or 'q99') for the 0.99 quantile, not Value.quantile(99)"
            )
        return cls("quantile", number=float(q))

    @classmethod
    def insertion(cls, concept: str | int) -> Value:
        """Each unit's insertion constant for ``concept`` (a label name or index; :func:`gdx.insertion_values`)."""
        if isinstance(concept, bool) or not isinstance(concept, (str, int)):
            raise InterventionError(f"Value.insertion takes a concept name or label index, got {concept!r}")
        return cls("insertion", concept=concept)

    @classmethod
    def parse(cls, obj: ValueLike) -> Value:
        """A :class:`Value` from any accepted form (a ``Value`` is returned as is).

        A number is a constant; a list or tensor is per-unit; ``"qNN..."`` is a quantile
        in percent, the digits after ``q`` read with a decimal point after the second
        (``"q99"`` = 0.99, ``"q999"`` = 0.999, ``"q50"`` = 0.5, ``"q5"`` = 0.05) and
        ``"q100"`` = 1.0; ``("insert", concept)`` is an insertion value.
        """
        if isinstance(obj, Value):
            return obj
        if isinstance(obj, torch.Tensor):
            return cls.per_unit(obj)
        if isinstance(obj, (int, float)) and not isinstance(obj, bool):
            return cls.constant(obj)
        if isinstance(obj, list):
            return cls.per_unit(obj)
        if isinstance(obj, str):
            q = _parse_quantile(obj)
            if q is not None:
                return cls.quantile(q)
        if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "insert":
            return cls.insertion(obj[1])
        raise InterventionError(f"unknown value {obj!r}: use {_VALUE_FORMS}")

    @property
    def needs_statistics(self) -> bool:
        """Whether the value is computed from samples (quantile, insertion)."""
        return self.kind in ("quantile", "insertion")

    def __repr__(self) -> str:
        if self.kind == "per_unit":
            assert self.tensor is not None
            return f"Value.per_unit(<tensor of shape {tuple(self.tensor.shape)}>)"
        arg = self.concept if self.kind == "insertion" else self.number
        return f"Value.{self.kind}({arg!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Value):
            return NotImplemented
        if (self.kind, self.number, self.concept) != (other.kind, other.number, other.concept):
            return False
        if self.tensor is None or other.tensor is None:
            return self.tensor is other.tensor
        return bool(torch.equal(self.tensor, other.tensor))

    def __hash__(self) -> int:
        return hash((self.kind, self.number, self.concept))


def _parse_quantile(text: str) -> float | None:
    """``"q99"`` -> 0.99, ``"q999"`` -> 0.999, ``"q5"`` -> 0.05, ``"q100"`` -> 1.0; else None.

    Digits after ``q`` are a percentile with an implied decimal point after the second
    digit. ``"q100"`` is 100 %; longer strings starting with ``100`` (``"q1000"``) are
    refused as ambiguous.
    """
    m = re.fullmatch(r"q(\d+)", text.strip())
    if not m:
        return None
    digits = m.group(1)
    if digits == "100":
        return 1.0
    if digits.startswith("100"):
        return None
    return float("0." + digits.zfill(2))


#: A value as ``intervene`` and :class:`Edit` take it: a :class:`Value`, or a short
#: form :meth:`Value.parse` reads: a number, a list or tensor, ``"q99"`` (each unit's
#: 0.99 quantile; ``"q999"`` 0.999, ``"q50"`` median) or ``("insert", concept)``.
ValueLike = Union[Value, float, int, torch.Tensor, list[float], str, tuple[str, Union[str, int]]]
#: The old name of :data:`ValueLike`.
ValueSpec = ValueLike


# -- the edit ----------------------------------------------------------------------


def per_step_rows(layer: str, value: torch.Tensor) -> bool:
    """Whether ``value`` holds one row per step of the window ``layer`` (steps x U): statistics at a
    window, or a per-unit value given that way. Such a value is applied row by row, step by step."""
    window = LayerAddress.parse(layer)
    return window.is_window and value.dim() == 2 and value.shape[0] == len(window.calls())


@dataclasses.dataclass
class Edit:
    """One edit: on ``layer``, units ``units`` (None = all) take ``value`` inside ``region``.

    ``value`` is a :class:`Value` or any form :meth:`Value.parse` reads (``0.0``,
    a tensor, ``"q99"``, ``("insert", concept)``); it is stored parsed, as a ``Value``.
    ``region`` is a mask H x W or N x H x W (bool or float in [0, 1], any resolution),
    max-pooled to the layer's grid so a brush stroke covers every cell it touches.
    """

    layer: str
    units: UnitSpec = None
    value: ValueLike = 0.0
    region: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.value = Value.parse(self.value)  # fails early, naming the accepted forms


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


class Intervention(contextlib.AbstractContextManager["Intervention"]):
    """Apply :class:`Edit` s to a generator while the context is open (see :func:`intervene`).

    Values that need statistics (:meth:`Value.quantile` or ``"q99"``,
    :meth:`Value.insertion` or ``("insert", concept)``) are computed on
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
        resolve_layers(generator, [e.layer for e in self.edits])
        self.segmenter = segmenter
        self.stats = stats
        self.samples = samples
        self.seed = seed
        self._values: list[torch.Tensor] = []
        self._per_step: set[int] = set()
        self._regions: list[torch.Tensor | None] = []
        self._stack = contextlib.ExitStack()

    def _resolve_value(self, edit: Edit) -> torch.Tensor:
        """The edit's value; a statistic at a step window (``blk@A-B``) is steps x U, one row
        per step (:func:`unit_quantiles`, :func:`insertion_values`): a unit's activations differ by step."""
        value = Value.parse(edit.value)
        if value.kind == "constant":
            assert value.number is not None
            return torch.tensor(value.number)
        if value.kind == "per_unit":
            assert value.tensor is not None
            t = value.tensor
            return t.detach().float() if not t.requires_grad else t
        if self.stats is not None:
            return torch.as_tensor(self.stats).float()
        if value.kind == "quantile":
            assert value.number is not None
            if not isinstance(self.generator, Generator):
                raise InterventionError(
                    f"value {value!r} needs statistics from samples: pass a gdx.Generator or stats=<per-unit tensor>"
                )
            return unit_quantiles(self.generator, edit.layer, value.number, samples=self.samples, seed=self.seed)
        assert value.kind == "insertion" and value.concept is not None
        if self.segmenter is None or not isinstance(self.generator, Generator):
            raise InterventionError(
                f"value {value!r} needs segmenter=<gdx.Segmenter> and a gdx.Generator to find the insertion "
                "constants, or stats=gdx.insertion_values(...) precomputed"
            )
        return insertion_values(
            self.generator, self.segmenter, edit.layer, value.concept, samples=self.samples, seed=self.seed
        )

    def _edit_fn(self, indices: list[int], trace: Trace) -> Callable[[str, Any], torch.Tensor]:
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
                if i in self._per_step:  # statistics of a window, one row per step: this step's
                    first = LayerAddress.parse(name).first or 0
                    value = value[trace.call_index(name) - first]
                if value.dim() == 1 and value.numel() != units.numel():
                    if value.numel() != n_units:
                        raise InterventionError(
                            f"value has {value.numel()} entries; expected one per chosen unit ({units.numel()}) "
                            f"or one per unit of {name!r} ({n_units})"
                        )
                    value = value.to(units.device)[units]
                mask = self._regions[i]
                region = None if mask is None else pool_region(mask, out.shape[-2:])
                out = apply_edit(out, units, value, region)
            return out

        return edit

    def __enter__(self) -> "Intervention":
        self._values = [self._resolve_value(e) for e in self.edits]
        self._per_step = {i for i, e in enumerate(self.edits) if per_step_rows(e.layer, self._values[i])}
        self._regions = [None if e.region is None else torch.as_tensor(e.region) for e in self.edits]
        by_layer: dict[str, list[int]] = {}
        for i, e in enumerate(self.edits):
            by_layer.setdefault(e.layer, []).append(i)
        try:
            for layer, indices in by_layer.items():
                trace = Trace(self.generator, layer, record=False)
                trace.edit = self._edit_fn(indices, trace)
                self._stack.enter_context(trace)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        self._stack.close()
        return False

    @property
    def values(self) -> list[torch.Tensor]:
        """The resolved value of each edit (available inside the context); a statistic
        (quantile, insertion) at a step window ``blk@A-B`` is steps x U, one row per step."""
        return list(self._values)


@overload
def intervene(
    generator: Generator | nn.Module,
    layer: str,
    units: UnitSpec = None,
    *,
    value: ValueLike = 0.0,
    region: torch.Tensor | None = None,
    segmenter: Segmenter | None = None,
    stats: torch.Tensor | None = None,
    samples: int = 200,
    seed: int = 0,
) -> Intervention: ...


@overload
def intervene(
    generator: Generator | nn.Module,
    layer: Sequence[Edit],
    *,
    segmenter: Segmenter | None = None,
    stats: torch.Tensor | None = None,
    samples: int = 200,
    seed: int = 0,
) -> Intervention: ...


def intervene(
    generator: Generator | nn.Module,
    layer: str | Sequence[Edit],
    units: UnitSpec = None,
    *,
    value: ValueLike = 0.0,
    region: torch.Tensor | None = None,
    segmenter: Segmenter | None = None,
    stats: torch.Tensor | None = None,
    samples: int = 200,
    seed: int = 0,
) -> Intervention:
    """Context manager: ``layer``'s output becomes ``r * (1 - a) + v * a`` (docs/method.md, "Intervention").

    Two forms: ``intervene(gen, "layer4", units, value=..., region=...)`` edits one
    layer; ``intervene(gen, [Edit(...), ...])`` applies several edits at once (each
    :class:`Edit` carries its own units, value and region).

    ``units``: unit indices (None = all). ``value``: a :class:`Value`, or a short form
    :meth:`Value.parse` reads: a number (0 ablates), a list or tensor (one value per
    chosen unit, or one per unit of the layer), ``"q99"`` (each unit's 0.99 quantile
    over ``samples`` samples of ``seed``; ``"q999"`` for 0.999), or
    ``("insert", concept)`` (the insertion constants of :func:`insertion_values`,
    which needs ``segmenter``). ``stats`` supplies precomputed per-unit values for the
    last two and skips the sampling. ``region``: a mask at any resolution (H x W for
    all images, N x H x W per image; bool or float), max-pooled to the layer's grid.

    Several edits compose: pass a list of :class:`Edit` as ``layer``, or nest
    contexts (inner edits see the outer edits' output). Hooks are removed on exit,
    also after an exception.

    >>> with gdx.intervene(gen, "layer4", [3, 17], value=gdx.Value.quantile(0.99), region=brush):
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
