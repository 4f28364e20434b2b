"""Causal effects of units on concepts (SPEC §2): ablate, insert, rank, optimise, locate.

Dissection says which units *correlate* with a concept; this module measures which
units *cause* it, by editing the layer (:func:`gdx.intervene`) and segmenting the
result. All measurements use the dissection latents recipe
(``generator.sample_latents(n, seed=seed)``) and segment at the segmenter's
``input_size``, so a sample here is the same image as in a dissection.

>>> eff = gdx.causal_effect(gen, seg, "layer4", tree_units, "tree", samples=200)
>>> eff.removed, eff.added, eff.ace
>>> rank = gdx.optimize_units(gen, seg, "layer4", "tree", init=dissection)
>>> curve = gdx.cumulative_effect(gen, seg, "layer4", rank, "tree", n_max=20)
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gdx.errors import GdxError, NotDifferentiableError, ResultFormatError
from gdx.interfaces import Generator, Segmenter
from gdx.errors import InterventionError
from gdx.intervention import intervene
from gdx.sampling import concept_index, concept_mask, label_fractions, latent_batches, resize_for, segment_images
from gdx.values import insertion_values
from gdx.results import atomic_write_json
from gdx.tracing import Trace

#: Concepts covering less than this fraction of pixels get no side-effect figure.
MIN_SIDE_COVERAGE = 1e-3


# -- results -----------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class _JsonResult:
    """save/load as one JSON file; tensor fields are listed in ``_tensors``."""

    _tensors: tuple[str, ...] = ()
    _kind: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": self._kind, "version": 1}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _jsonable(getattr(self, f.name))
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the result as JSON to ``path`` (atomically)."""
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if data.get("kind") != cls._kind:
            raise ResultFormatError(f"expected a saved {cls._kind!r} result, found kind {data.get('kind')!r}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kwargs = {k: v for k, v in data.items() if k in names}
        for name in cls._tensors:
            if kwargs.get(name) is not None:
                value = kwargs[name]
                kwargs[name] = torch.tensor(value, dtype=torch.bool if name == "contains" else torch.float32)
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike[str]):
        """Read a result written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            raise ResultFormatError(f"no such result file: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ResultFormatError(f"{path} is not valid JSON ({exc}); was it written by gdx?") from None
        return cls.from_dict(data)


@dataclasses.dataclass
class CausalEffect(_JsonResult):
    """The effect of ablating / inserting a set of units on a concept (SPEC §2).

    ``removed``: 1 - (pixels of the concept after ablating the units everywhere) /
    (pixels before), summed over the samples that contain the concept.
    ``added``: mean gain of the concept's pixel fraction when the units are set to
    their insertion values everywhere (all samples). ``ace``: E[s_c | do(U=k)] -
    E[s_c | do(U=0)] with s_c the pixel fraction. Per-sample pixel fractions
    (``before``, ``ablated``, ``inserted``; N floats) are kept for plots.
    ``side_effects``: relative change (after / before - 1, summed over all samples)
    of every other concept covering at least 0.1% of pixels, under ablation;
    ``side_effects_abs``: the mean change of their pixel fractions.
    """

    layer: str
    units: list[int]
    concept: str
    samples: int
    seed: int
    removed: float
    added: float | None
    ace: float | None
    before: torch.Tensor
    ablated: torch.Tensor
    inserted: torch.Tensor | None
    contains: torch.Tensor
    side_effects: dict[str, float]
    side_effects_abs: dict[str, float]
    insertion_value: list[float] | None = None

    _tensors = ("before", "ablated", "inserted", "contains")
    _kind = "causal_effect"

    def max_side_effect(self) -> float:
        """The largest |relative change| of any other concept (0 when there is none)."""
        return max((abs(v) for v in self.side_effects.values()), default=0.0)


@dataclasses.dataclass
class UnitRanking(_JsonResult):
    """Units of ``layer`` scored for ``concept`` by ``method`` ("iou", "ace" or "alpha").

    ``scores`` has one float per unit, higher = more causal; ``history`` is the
    optimisation loss per epoch (alpha only).
    """

    layer: str
    concept: str
    method: str
    scores: torch.Tensor
    history: list[float] = dataclasses.field(default_factory=list)
    tiebreak: torch.Tensor | None = None

    _tensors = ("scores", "tiebreak")
    _kind = "unit_ranking"

    @property
    def order(self) -> list[int]:
        """Unit indices, best first; equal scores are ordered by ``tiebreak`` (higher
        first), then by the lower index.

        For alpha, many units can sit at the clamp (alpha = 1) for a large concept;
        ``tiebreak`` is then the data term's pull on each unit over the last epoch
        (minus its gradient), i.e. how much further it would go unclamped.
        """
        tb = self.tiebreak if self.tiebreak is not None else torch.zeros_like(self.scores)
        return sorted(range(self.scores.numel()), key=lambda u: (-float(self.scores[u]), -float(tb[u]), u))

    def top(self, n: int = 20) -> list[int]:
        return self.order[:n]


@dataclasses.dataclass
class CumulativeCurve(_JsonResult):
    """Effect of ablating / inserting the top-n units, n = 1..n_max (the paper's plot)."""

    layer: str
    concept: str
    units: list[int]
    n: list[int]
    removed: list[float]
    added: list[float] | None
    ace: list[float] | None
    samples: int
    seed: int

    _kind = "cumulative_curve"


# -- measurement engine ------------------------------------------------------------


class EffectRunner:
    """Measures pixel fractions of every label under edits, on fixed latents.

    The baseline (no edit) is computed once and cached, together with the
    concept's insertion values, so ranking many unit sets costs one edited pass each.
    """

    def __init__(
        self,
        generator: Generator,
        segmenter: Segmenter,
        layer: str,
        concept: str | int,
        *,
        samples: int = 200,
        seed: int = 0,
        batch_size: int | None = None,
        value: torch.Tensor | float | None = None,
    ) -> None:
        self.generator = generator
        self.segmenter = segmenter
        self.layer = layer
        self.index = concept_index(segmenter, concept)
        self.concept = list(segmenter.labels)[self.index]
        self.n_labels = len(segmenter.labels)
        self.samples = samples
        self.seed = seed
        self.batch_size = batch_size
        self._value = None if value is None else torch.as_tensor(value, dtype=torch.float32)
        self._baseline: torch.Tensor | None = None
        self.n_units: int | None = None
        self.grid: tuple[int, int] | None = None

    def batches(self):
        return latent_batches(self.generator, self.samples, seed=self.seed, batch_size=self.batch_size)

    @torch.no_grad()
    def baseline(self) -> torch.Tensor:
        """Pixel fractions N x L of the unedited samples (and the insertion values, in the same pass)."""
        if self._baseline is None:
            fractions = []
            num = None
            den = 0.0
            for z in self.batches():
                with Trace(self.generator.module, self.layer) as tr:
                    images = self.generator.generate(z)
                r = tr[self.layer].double()
                self.n_units, self.grid = r.shape[1], (r.shape[2], r.shape[3])
                seg = segment_images(self.segmenter, images)
                fractions.append(label_fractions(seg, self.n_labels).cpu())
                w = F.adaptive_avg_pool2d(concept_mask(seg, self.index).double()[:, None], r.shape[-2:])
                contrib = (r * w).sum(dim=(0, 2, 3)).cpu()
                num = contrib if num is None else num + contrib
                den += float(w.sum())
            self._baseline = torch.cat(fractions)
            if self._value is None and num is not None and den > 0:
                self._value = (num / den).float()
        return self._baseline

    @property
    def value(self) -> torch.Tensor:
        """Insertion values (U floats, or a scalar) for the concept."""
        self.baseline()
        if self._value is None:
            raise InterventionError(
                f"concept {self.concept!r} never appears in {self.samples} samples (seed {self.seed}); its "
                "insertion values are undefined. Use more samples or pass value= explicitly."
            )
        return self._value

    @torch.no_grad()
    def under(self, units: Sequence[int], *, insert: bool) -> torch.Tensor:
        """Pixel fractions N x L with ``units`` ablated (or set to the insertion value) everywhere."""
        value = self.value if insert else 0.0
        out = []
        for z in self.batches():
            with intervene(self.generator, self.layer, list(units), value=value):
                images = self.generator.generate(z)
            out.append(label_fractions(segment_images(self.segmenter, images), self.n_labels).cpu())
        return torch.cat(out)

    def effect(self, units: Sequence[int], *, insert: bool = True) -> CausalEffect:
        before = self.baseline()
        ablated = self.under(units, insert=False)
        c = self.index
        contains = before[:, c] > 0
        total_before = float(before[contains, c].sum())
        removed = 1.0 - float(ablated[contains, c].sum()) / total_before if total_before > 0 else float("nan")
        inserted = added = ace = None
        if insert:
            ins = self.under(units, insert=True)
            inserted = ins[:, c].float()
            added = float((ins[:, c] - before[:, c]).mean())
            ace = float(ins[:, c].mean() - ablated[:, c].mean())
        labels = list(self.segmenter.labels)
        side, side_abs = {}, {}
        for j, name in enumerate(labels):
            if j == c or float(before[:, j].mean()) < MIN_SIDE_COVERAGE:
                continue
            side[name] = float(ablated[:, j].sum() / before[:, j].sum() - 1.0)
            side_abs[name] = float((ablated[:, j] - before[:, j]).mean())
        value = self._value
        return CausalEffect(
            layer=self.layer,
            units=[int(u) for u in units],
            concept=self.concept,
            samples=self.samples,
            seed=self.seed,
            removed=removed,
            added=added,
            ace=ace,
            before=before[:, c].float(),
            ablated=ablated[:, c].float(),
            inserted=inserted,
            contains=contains,
            side_effects=side,
            side_effects_abs=side_abs,
            insertion_value=None if (value is None or not insert) else value.reshape(-1).tolist(),
        )


def causal_effect(
    generator: Generator,
    segmenter: Segmenter,
    layer: str,
    units: Sequence[int],
    concept: str | int,
    *,
    samples: int = 200,
    seed: int = 0,
    batch_size: int | None = None,
    value: torch.Tensor | float | None = None,
    insert: bool = True,
) -> CausalEffect:
    """Ablate ``units`` of ``layer`` everywhere, then insert them, and measure ``concept``.

    ``value`` is the insertion value (a number or one per unit of the layer); by
    default the insertion constants of :func:`gdx.insertion_values`, computed from
    the same ``samples`` samples. ``insert=False`` skips the insertion pass
    (``added`` and ``ace`` are then None).

    >>> eff = gdx.causal_effect(gen, seg, "layer4", [3, 17, 41], "tree", samples=500)
    >>> print(f"{eff.removed:.0%} of tree pixels removed, ACE {eff.ace:+.3f}")
    """
    runner = EffectRunner(
        generator, segmenter, layer, concept, samples=samples, seed=seed, batch_size=batch_size, value=value
    )
    return runner.effect(units, insert=insert)


# -- ranking -----------------------------------------------------------------------


def _iou_column(iou: Any, concept: str | int, labels: Sequence[str] | None) -> tuple[torch.Tensor, str]:
    table = getattr(iou, "iou", iou)
    labels = list(getattr(iou, "labels", labels) or [])
    table = torch.as_tensor(table, dtype=torch.float32)
    if table.dim() == 1:
        return table, str(concept)
    if isinstance(concept, str):
        if concept not in labels:
            raise InterventionError(f"no label {concept!r} in the IoU table's labels ({', '.join(labels[:40])})")
        col = labels.index(concept)
    else:
        col = int(concept)
    return table[:, col], (labels[col] if labels else str(concept))


def rank_by_iou(iou: Any, concept: str | int, *, labels: Sequence[str] | None = None, layer: str = "") -> UnitRanking:
    """Rank units by IoU with ``concept``.

    ``iou`` is a :class:`gdx.Dissection` (its ``.iou`` units x labels and ``.labels``)
    or a plain units x labels tensor with ``labels``.
    """
    scores, name = _iou_column(iou, concept, labels)
    return UnitRanking(layer=layer or getattr(iou, "layer", ""), concept=name, method="iou", scores=scores)


def rank_by_ace(
    generator: Generator,
    segmenter: Segmenter,
    layer: str,
    concept: str | int,
    *,
    units: Sequence[int] | None = None,
    samples: int = 100,
    seed: int = 0,
    batch_size: int | None = None,
) -> UnitRanking:
    """Rank units by their single-unit ACE for ``concept`` (one ablation + one insertion pass per unit).

    ``units`` restricts the candidates (others score -inf).
    """
    runner = EffectRunner(generator, segmenter, layer, concept, samples=samples, seed=seed, batch_size=batch_size)
    runner.baseline()
    n_units = int(runner.n_units or 0)
    scores = torch.full((n_units,), float("-inf"))
    for u in units if units is not None else range(n_units):
        eff = runner.effect([int(u)], insert=True)
        scores[int(u)] = float(eff.ace if eff.ace is not None else 0.0)
    return UnitRanking(layer=layer, concept=runner.concept, method="ace", scores=scores)


def random_units(n_units: int, n: int, *, seed: int = 1) -> list[int]:
    """``n`` distinct random units of ``n_units`` (a seeded control set)."""
    return sorted(random.Random(seed).sample(range(n_units), min(n, n_units)))


# -- learned soft mask alpha -------------------------------------------------------


def segment_probs(segmenter: Segmenter, images: torch.Tensor) -> torch.Tensor:
    """Differentiable class probabilities N x L x H' x W' for ``images`` in [-1, 1].

    Uses the segmenter's optional ``segment_probs(images)`` (probabilities) or
    ``segment_logits(images)`` (softmaxed over labels) method, after resizing to its
    ``input_size``. A segmenter that only returns labels cannot be optimised
    through: :class:`NotDifferentiableError` says how to add the method.
    """
    x = resize_for(segmenter, images)
    for target in (segmenter, getattr(segmenter, "fn", None)):
        if target is None:
            continue
        if callable(getattr(target, "segment_probs", None)):
            return target.segment_probs(x)
        if callable(getattr(target, "segment_logits", None)):
            return torch.softmax(target.segment_logits(x), dim=1)
    raise NotDifferentiableError(
        f"segmenter {getattr(segmenter, 'name', type(segmenter).__name__)!r} only returns labels; optimizing "
        "units needs soft class probabilities. Give it a method segment_logits(images) -> N x L x H x W "
        "logits (or segment_probs(images) -> probabilities), or pass probs=<callable> to optimize_units."
    )


def _normalised_init(init: Any, concept: str | int, labels: Sequence[str], n_units: int) -> torch.Tensor:
    if init is None:
        return torch.zeros(n_units)
    if isinstance(init, UnitRanking):
        col = init.scores.float()
    else:
        table = getattr(init, "iou", init)
        table = torch.as_tensor(table, dtype=torch.float32)
        col = table if table.dim() == 1 else _iou_column(init, concept, getattr(init, "labels", labels))[0]
    if col.numel() != n_units:
        raise InterventionError(f"init has {col.numel()} entries; the layer has {n_units} units")
    col = torch.nan_to_num(col.clamp(min=0), nan=0.0, posinf=0.0)
    return col / col.max() if float(col.max()) > 0 else col


@torch.no_grad()
def _coverage(generator: Generator, segmenter: Segmenter, index: int, z_all: torch.Tensor, grid, bs: int) -> torch.Tensor:
    """Fraction of each feature cell the concept covers, N x h x w."""
    out = []
    for start in range(0, z_all.shape[0], bs):
        images = generator.generate(z_all[start : start + bs].to(generator.device))
        mask = concept_mask(segment_images(segmenter, images), index).float()
        out.append(F.adaptive_avg_pool2d(mask[:, None], grid)[:, 0].cpu())
    return torch.cat(out)


@torch.no_grad()
def _pixel_masks(generator: Generator, segmenter: Segmenter, index: int, z_all: torch.Tensor, bs: int) -> torch.Tensor:
    """Where the concept is in each unedited sample, N x H' x W' bool (segmentation size)."""
    out = []
    for start in range(0, z_all.shape[0], bs):
        images = generator.generate(z_all[start : start + bs].to(generator.device))
        out.append(concept_mask(segment_images(segmenter, images), index).cpu())
    return torch.cat(out)


@torch.no_grad()
def _candidate_cells(
    generator: Generator, segmenter: Segmenter, layer: str, index: int, z_all: torch.Tensor, cover: torch.Tensor,
    k: torch.Tensor, probes: int, seed: int, bs: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sample, the best of ``probes`` random concept-free cells for inserting the concept.

    As the reference: every unit is set to its insertion value in one cell and the
    concept's gain in that cell is measured; samples where no probe gains are dropped.
    """
    g = torch.Generator().manual_seed(seed + 7919)
    n, h, w = cover.shape
    best_gain = torch.zeros(n)
    best_cell = torch.zeros(n, dtype=torch.long)
    for _ in range(probes):
        free = (cover.flatten(1) == 0).float() + 1e-12
        cells = torch.multinomial(free, 1, generator=g)[:, 0]
        for start in range(0, n, bs):
            idx = torch.arange(start, min(n, start + bs))
            region = F.one_hot(cells[idx], h * w).float().view(-1, h, w)
            with intervene(generator, layer, None, value=k, region=region):
                images = generator.generate(z_all[idx].to(generator.device))
            mask = concept_mask(segment_images(segmenter, images), index).float()
            pooled = F.adaptive_avg_pool2d(mask[:, None], (h, w)).flatten(1).cpu()
            gain = pooled.gather(1, cells[idx, None])[:, 0] - cover.flatten(1)[idx].gather(1, cells[idx, None])[:, 0]
            better = gain > best_gain[idx]
            best_gain[idx] = torch.where(better, gain, best_gain[idx])
            best_cell[idx] = torch.where(better, cells[idx], best_cell[idx])
    keep = torch.nonzero(best_gain > 0).flatten()
    return keep, best_cell[keep]


def optimize_units(
    generator: Generator,
    segmenter: Segmenter,
    layer: str,
    concept: str | int,
    *,
    samples: int = 200,
    seed: int = 0,
    epochs: int = 10,
    lr: float = 0.01,
    lam: float = 0.005,
    group: int = 20,
    init: Any = None,
    value: torch.Tensor | None = None,
    batch_size: int | None = None,
    probs: Callable[[torch.Tensor], torch.Tensor] | None = None,
    mode: str = "image",
    probes: int = 5,
    insert_weight: float = 1.0,
    ablation_read: str = "image",
) -> UnitRanking:
    """Learn the soft unit mask alpha in [0, 1]^U that best removes and inserts ``concept``.

    Minimises ``sum p_c(ablate alpha) - sum p_c(insert alpha * k) + lam * ||alpha||^2``
    (SPEC §2). Ablation multiplies each unit by ``1 - alpha_u`` on samples that
    contain the concept; insertion sets ``r (1 - alpha) + k alpha`` with ``k`` the
    insertion values. ``p_c`` is the segmenter's soft probability of the concept
    (:func:`segment_probs`, or ``probs(images) -> N x L x H x W``). Each term is summed
    over groups of ``group`` samples per Adam step (the reference's 2 x 10), so ``lam``
    has the reference's scale. Adam(lr), alpha clamped to [0, 1] after each step,
    initialised from the normalised IoU column when ``init`` (a Dissection, a
    units x labels tensor, or a U-vector) is given, else zeros.

    ``mode="image"`` (default) edits the whole image: ablation on every sample that
    contains the concept, read as the mean of ``p_c`` over the image
    (``ablation_read="image"``) or over the concept's own pixels in the unedited
    sample (``"concept"``: the share of the concept that survives, which keeps the
    two terms of equal scale for small concepts); insertion on every sample, read as
    the mean of ``p_c`` over the image.
    ``mode="cell"`` is the reference's recipe: ablate in the cell where the concept
    covers most (``ploc``) and read ``p_c`` there; insert in the best of ``probes``
    random concept-free cells (``cloc``) of samples where insertion works there.
    ``insert_weight`` scales the insertion term (0 learns from ablation alone).

    The reference code (gandissect ``aceoptimize.ace_loss``) reads the insertion term
    at ``ploc``, the *ablation* sample's cell, instead of ``cloc`` where it inserted;
    here each term is read where its edit was made.

    >>> rank = gdx.optimize_units(gen, seg, "layer4", "tree", init=dissection, epochs=3)
    >>> rank.top(20)
    """
    if mode not in ("image", "cell"):
        raise InterventionError(f"unknown mode {mode!r}: use 'image' or 'cell'")
    if ablation_read not in ("concept", "image"):
        raise InterventionError(f"unknown ablation_read {ablation_read!r}: use 'concept' or 'image'")
    runner = EffectRunner(
        generator, segmenter, layer, concept, samples=samples, seed=seed, batch_size=batch_size, value=value
    )
    before = runner.baseline()
    k = runner.value
    c = runner.index
    n_units = int(runner.n_units or 0)
    grid = runner.grid or (1, 1)
    z_all = generator.sample_latents(samples, seed=seed)
    present = torch.nonzero(before[:, c] > 0).flatten()
    if present.numel() == 0:
        raise InterventionError(f"concept {runner.concept!r} is absent from all {samples} samples; cannot optimise")
    bs = max(1, min(batch_size or 10, group))
    p_cells: torch.Tensor | None = None
    c_cells: torch.Tensor | None = None
    c_all = torch.arange(samples)
    if mode == "cell":
        cover = _coverage(generator, segmenter, c, z_all, grid, bs)
        p_cells = torch.full((samples,), -1, dtype=torch.long)
        p_cells[present] = cover[present].flatten(1).argmax(1)
        c_all, found = _candidate_cells(generator, segmenter, layer, c, z_all, cover, k, probes, seed, bs)
        c_cells = torch.full((samples,), -1, dtype=torch.long)
        c_cells[c_all] = found
        if c_all.numel() == 0:
            raise InterventionError(
                f"inserting {runner.concept!r} in {probes} random cells of {samples} samples never added it; "
                "use mode='image', more samples or more probes"
            )
    masks: torch.Tensor | None = None
    if mode == "image" and ablation_read == "concept":
        masks = _pixel_masks(generator, segmenter, c, z_all, bs)
    prob_fn = probs or (lambda x: segment_probs(segmenter, x))
    alpha = _normalised_init(init, concept, segmenter.labels, n_units).to(generator.device).requires_grad_(True)
    opt = torch.optim.Adam([alpha], lr=lr)
    kk = k.to(generator.device)
    kk = kk.view(1, -1, 1, 1) if kk.dim() == 1 else kk

    def concept_prob(ids: torch.Tensor, insert: bool, cells: torch.Tensor | None) -> torch.Tensor:
        z = z_all[ids].to(generator.device)
        a = alpha.view(1, -1, 1, 1)
        if cells is not None:
            where = F.one_hot(cells[ids], grid[0] * grid[1]).to(a).view(-1, 1, grid[0], grid[1])
            a = a * where

        def edit(_name: str, r: torch.Tensor) -> torch.Tensor:
            return r * (1 - a) + kk * a if insert else r * (1 - a)

        with Trace(generator.module, layer, edit=edit, record=False):
            images = generator.generate(z)
        p = prob_fn(images)[:, c]
        if cells is None:
            if insert or masks is None:
                return p.mean(dim=(-2, -1))  # per-sample mean probability over the image
            m = masks[ids].to(p)
            if m.shape[-2:] != p.shape[-2:]:
                m = F.interpolate(m[:, None], size=p.shape[-2:], mode="nearest")[:, 0]
            # the share of the concept's own pixels that survives the ablation
            return (p * m).sum(dim=(-2, -1)) / m.sum(dim=(-2, -1)).clamp(min=1)
        pooled = F.adaptive_avg_pool2d(p[:, None], grid).flatten(1)
        return pooled.gather(1, cells[ids].to(pooled.device)[:, None])[:, 0]  # read where the edit was made

    history: list[float] = []
    pull = torch.zeros(n_units)
    gen = torch.Generator().manual_seed(seed)
    for _epoch in range(epochs):
        pull.zero_()
        p_order = present[torch.randperm(present.numel(), generator=gen)]
        c_order = c_all[torch.randperm(c_all.numel(), generator=gen)]
        steps = max(1, -(-p_order.numel() // group))
        total = 0.0
        for step in range(steps):
            pz = p_order[step * group : (step + 1) * group]
            if pz.numel() == 0:
                pz = p_order[:group]
            cz = c_order[(step * group) % max(1, c_order.numel()) :][:group]
            if cz.numel() == 0:
                cz = c_order[:group]
            grad = torch.zeros_like(alpha)
            step_loss = 0.0
            terms = [(pz, 1.0, False, p_cells)]
            if insert_weight:
                terms.append((cz, -float(insert_weight), True, c_cells))
            for part, sign, insert, cells in terms:
                for s in range(0, part.numel(), bs):
                    term = sign * concept_prob(part[s : s + bs], insert, cells).sum()
                    (g,) = torch.autograd.grad(term, [alpha])
                    grad += g
                    step_loss += float(term.detach())
            pull -= grad.detach().cpu()
            reg = lam * alpha.pow(2).sum()
            (g,) = torch.autograd.grad(reg, [alpha])
            grad += g
            step_loss += float(reg.detach())
            opt.zero_grad()
            alpha.grad = grad
            opt.step()
            with torch.no_grad():
                alpha.clamp_(0.0, 1.0)
            total += step_loss
        history.append(total / steps)
    return UnitRanking(
        layer=layer, concept=runner.concept, method="alpha", scores=alpha.detach().cpu().float(), history=history,
        tiebreak=pull.float(),
    )


# -- cumulative curves and the removal table ---------------------------------------


def _ordered_units(ranking: UnitRanking | Sequence[int], n_max: int) -> list[int]:
    if isinstance(ranking, UnitRanking):
        return ranking.top(n_max)
    return [int(u) for u in list(ranking)[:n_max]]


def cumulative_effect(
    generator: Generator,
    segmenter: Segmenter,
    layer: str,
    ranking: UnitRanking | Sequence[int],
    concept: str | int,
    *,
    n_max: int = 20,
    samples: int = 200,
    seed: int = 0,
    batch_size: int | None = None,
    insert: bool = True,
    value: torch.Tensor | float | None = None,
) -> CumulativeCurve:
    """Removal / addition / ACE of the top-n units for n = 1..n_max (the paper's curves).

    ``ranking`` is a :class:`UnitRanking` or a list of units, best first.
    """
    units = _ordered_units(ranking, n_max)
    runner = EffectRunner(
        generator, segmenter, layer, concept, samples=samples, seed=seed, batch_size=batch_size, value=value
    )
    removed, added, ace = [], [], []
    for n in range(1, len(units) + 1):
        eff = runner.effect(units[:n], insert=insert)
        removed.append(eff.removed)
        if insert:
            added.append(float(eff.added or 0.0))
            ace.append(float(eff.ace or 0.0))
    return CumulativeCurve(
        layer=layer,
        concept=runner.concept,
        units=units,
        n=list(range(1, len(units) + 1)),
        removed=removed,
        added=added if insert else None,
        ace=ace if insert else None,
        samples=samples,
        seed=seed,
    )


@dataclasses.dataclass
class RemovalRow:
    """One concept: removal by its top units vs. by random units, with side effects.

    The random control is averaged over ``len(random_draws)`` independent draws of
    random units (one draw can hit a key unit by luck; the control asks what ablating
    *typical* random units does). ``random_*`` figures are those means;
    ``random_worst_side_effect`` is the largest |side effect| of any single draw.
    """

    concept: str
    units: list[int]
    removed: float
    random_units: list[int]
    random_removed: float
    side_effect: float
    random_side_effect: float
    coverage: float
    side_effects: dict[str, float] = dataclasses.field(default_factory=dict)
    random_side_effects: dict[str, float] = dataclasses.field(default_factory=dict)
    random_draws: list[list[int]] = dataclasses.field(default_factory=list)
    random_removed_draws: list[float] = dataclasses.field(default_factory=list)
    random_worst_side_effect: float = 0.0


@dataclasses.dataclass
class RemovalTable(_JsonResult):
    """The paper-style table: fraction of a concept's pixels removed by its top-n units.

    ``side_effect`` is the largest |relative change| of any other concept covering at
    least ``side_min_coverage`` (1%) of the pixels, under the same ablation.
    """

    layer: str
    method: str
    top: int
    samples: int
    seed: int
    rows: list[dict[str, Any]]

    _kind = "removal_table"

    def to_markdown(self) -> str:
        draws = max((len(r.get("random_draws") or [r["random_units"]]) for r in self.rows), default=1)
        random_label = f"{self.top} random" + (f" (mean of {draws} draws)" if draws > 1 else "")
        head = (
            f"| concept | removed by top-{self.top} ({self.method}) | removed by {random_label} | "
            f"largest other-concept change (top) | largest other-concept change ({random_label}) | "
            "worst single random draw |\n"
            "|---|---|---|---|---|---|\n"
        )
        lines = [
            f"| {r['concept']} | {r['removed']:.2f} | {r['random_removed']:+.2f} | "
            f"{r['side_effect']:+.2f} | {r['random_side_effect']:+.2f} | "
            f"{r.get('random_worst_side_effect', r['random_side_effect']):+.2f} |"
            for r in self.rows
        ]
        return head + "\n".join(lines) + "\n"


def _signed_max(side: dict[str, float], keep: set[str] | None = None) -> float:
    values = [v for k, v in side.items() if keep is None or k in keep]
    return max(values, key=abs, default=0.0)


def removal_table(
    generator: Generator,
    segmenter: Segmenter,
    layer: str,
    concepts: Sequence[str],
    *,
    top: int = 20,
    method: str = "alpha",
    samples: int = 200,
    seed: int = 0,
    eval_seed: int = 1,
    epochs: int = 3,
    init: Any = None,
    control_seed: int = 1,
    batch_size: int | None = None,
    probs: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[str], None] | None = None,
    side_min_coverage: float = 0.01,
    control_draws: int = 5,
    **optimize_options: Any,
) -> RemovalTable:
    """For each concept: rank units (``method`` "alpha", "iou" or "ace") on samples of
    ``seed``, then measure on held-out samples of ``eval_seed`` the fraction of its
    pixels removed by ablating the top ``top`` units vs. ``top`` random units
    (``control_seed``), and the largest change of any other concept.
    ``init`` (a Dissection) seeds alpha and is required for ``method="iou"``;
    The summary side effect is the largest |relative change| among concepts covering at
    least ``side_min_coverage`` of the pixels (relative changes of rarer concepts are
    noise-dominated; every concept's figure stays in the row's ``side_effects``).
    ``probs`` and ``optimize_options`` (``mode``, ``insert_weight``, ``lr``...) are passed
    to :func:`optimize_units`. The random control is the mean over ``control_draws``
    draws of random units (seeds ``control_seed``, ``control_seed + 1``, ...).
    """
    if control_draws < 1:
        raise InterventionError(f"control_draws must be at least 1, got {control_draws}")
    rows = []
    n_units = None
    for concept in concepts:
        if progress:
            progress(f"ranking units for {concept!r} ({method})")
        if method == "alpha":
            ranking = optimize_units(
                generator, segmenter, layer, concept, samples=samples, seed=seed, epochs=epochs, init=init,
                batch_size=batch_size, probs=probs, **optimize_options,
            )
        elif method == "iou":
            if init is None:
                raise InterventionError("method='iou' needs init=<Dissection or units x labels IoU table>")
            ranking = rank_by_iou(init, concept, labels=segmenter.labels, layer=layer)
        elif method == "ace":
            ranking = rank_by_ace(generator, segmenter, layer, concept, samples=samples, seed=seed,
                                  batch_size=batch_size)
        else:
            raise InterventionError(f"unknown ranking method {method!r}: use 'alpha', 'iou' or 'ace'")
        n_units = ranking.scores.numel()
        units = ranking.top(top)
        controls = [random_units(n_units, top, seed=control_seed + d) for d in range(control_draws)]
        runner = EffectRunner(
            generator, segmenter, layer, concept, samples=samples, seed=eval_seed, batch_size=batch_size
        )
        if progress:
            progress(f"measuring {concept!r}")
        eff = runner.effect(units, insert=False)
        ctls = [runner.effect(control, insert=False) for control in controls]
        coverage = runner.baseline().mean(0)
        major = {name for j, name in enumerate(segmenter.labels) if float(coverage[j]) >= side_min_coverage}
        random_side = {
            name: sum(c.side_effects[name] for c in ctls) / len(ctls) for name in ctls[0].side_effects
        }
        rows.append(
            dataclasses.asdict(
                RemovalRow(
                    concept=runner.concept,
                    units=units,
                    removed=eff.removed,
                    random_units=controls[0],
                    random_removed=sum(c.removed for c in ctls) / len(ctls),
                    side_effect=_signed_max(eff.side_effects, major),
                    random_side_effect=_signed_max(random_side, major),
                    coverage=float(eff.before.mean()),
                    side_effects=eff.side_effects,
                    random_side_effects=random_side,
                    random_draws=controls,
                    random_removed_draws=[c.removed for c in ctls],
                    random_worst_side_effect=_signed_max(
                        {f"{d}:{k}": v for d, c in enumerate(ctls) for k, v in c.side_effects.items() if k in major}
                    ),
                )
            )
        )
    return RemovalTable(layer=layer, method=method, top=top, samples=samples, seed=eval_seed, rows=rows)


# -- location map --------------------------------------------------------------------


@dataclasses.dataclass
class LocationMap(_JsonResult):
    """Where inserting a concept's units adds the concept (SPEC §2 "context").

    ``gain[i, j]``: change of the concept's pixel fraction inside cell (i, j)'s
    window (the cell grown by ``radius`` cells on each side) when the units are set
    to their insertion values in that cell only. ``image`` is the unedited sample
    (3 x H x W in [-1, 1]) for drawing.
    """

    layer: str
    concept: str
    units: list[int]
    sample: int
    seed: int
    radius: int
    gain: torch.Tensor
    image: torch.Tensor | None = None

    _tensors = ("gain", "image")
    _kind = "location_map"

    def save_png(self, path: str | os.PathLike[str], *, size: int = 256) -> Path:
        """Write the sample with the gain map overlaid (red = the concept appears)."""
        from gdx.plots import heatmap_overlay, write_png

        return write_png(path, heatmap_overlay(self.image, self.gain, size=size))


@torch.no_grad()
def location_map(
    generator: Generator,
    segmenter: Segmenter,
    layer: str,
    units: Sequence[int] | UnitRanking,
    concept: str | int,
    *,
    sample: int = 0,
    seed: int = 0,
    value: torch.Tensor | float | None = None,
    value_samples: int = 200,
    radius: int = 1,
    batch_size: int | None = None,
    n_top: int = 20,
) -> LocationMap:
    """Insert ``concept``'s units at each feature cell of one sample and map the gain.

    Sample ``sample`` of ``seed`` (the dissection recipe). ``value`` defaults to the
    insertion values computed from ``value_samples`` samples of ``seed``. Cells are
    edited one at a time, many cells per batch. Shows where the concept can go:
    a door appears on a wall, not in the sky.
    """
    units = _ordered_units(units, n_top) if isinstance(units, UnitRanking) else [int(u) for u in units]
    index = concept_index(segmenter, concept)
    if value is None:
        value = insertion_values(generator, segmenter, layer, index, samples=value_samples, seed=seed)
    z = generator.sample_latents(sample + 1, seed=seed)[sample : sample + 1].to(generator.device)
    with Trace(generator.module, layer) as tr:
        image = generator.generate(z)
    h, w = tr[layer].shape[-2:]
    base = concept_mask(segment_images(segmenter, image), index).float()
    H, W = base.shape[-2:]
    cells = h * w
    gain = torch.zeros(cells)
    bs = batch_size or 16
    for start in range(0, cells, bs):
        idx = torch.arange(start, min(cells, start + bs))
        region = torch.zeros(idx.numel(), h * w)
        region[torch.arange(idx.numel()), idx] = 1.0
        region = region.view(-1, h, w)
        with intervene(generator, layer, units, value=value, region=region):
            edited = generator.generate(z.expand(idx.numel(), *z.shape[1:]))
        mask = concept_mask(segment_images(segmenter, edited), index).float()
        for b, cell in enumerate(idx.tolist()):
            i, j = divmod(cell, w)
            y0, y1 = ((i - radius) * H) // h, ((i + 1 + radius) * H + h - 1) // h
            x0, x1 = ((j - radius) * W) // w, ((j + 1 + radius) * W + w - 1) // w
            y0, x0, y1, x1 = max(0, y0), max(0, x0), min(H, y1), min(W, x1)
            window = (slice(y0, y1), slice(x0, x1))
            gain[cell] = float(mask[b][window].mean() - base[0][window].mean())
    return LocationMap(
        layer=layer,
        concept=list(segmenter.labels)[index],
        units=units,
        sample=sample,
        seed=seed,
        radius=radius,
        gain=gain.view(h, w),
        image=image[0].detach().cpu().float(),
    )
