"""The GANPaint engine: one generator, one dissection, edits applied in one forward pass.

A painting is a sample id plus a list of strokes. Each stroke names a concept, a mode
and a brush mask at any resolution; the mask is max-pooled to the layer's grid
(:func:`gdx.intervention.pool_region`), and inside it the concept's top-n units (by
dissection IoU, those above :data:`PAINT_IOU_FLOOR`) are set to their 0.99 quantile
("draw") or to 0 ("remove"), as GANPaint does (docs/method.md, "GANPaint"). All strokes of a request are applied, in order, in ONE generator forward;
no segmentation runs in the loop.

The engine holds a lock around the forward pass: the edits are forward hooks on the
one shared module, so two requests must never overlap.

>>> engine = PaintEngine.build(gen, dissection)
>>> rgb = engine.render(7, [Stroke("tree", "draw", brush)], n_units=20)   # H x W x 3 uint8
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from gdx.concept_prior import ConceptPrior
from gdx.errors import GdxError, PaintError
from gdx.interfaces import Generator, Segmenter
from gdx.intervention import Edit, intervene, per_step_rows
from gdx.values import unit_quantiles
from gdx.plots import to_uint8
from gdx.results import Dissection
from gdx.tracing import LayerAddress, Trace

Mode = Literal["draw", "remove"]
#: Most units one concept may bring into an edit.
MAX_UNITS = 64
DEFAULT_UNITS = 20
#: IoU a unit needs to paint a concept, unless ``iou_min`` says otherwise. Lower than the
#: dissection's 0.05 "interpretable" cut-off on purpose: a unit's top-1% mask covers about 1%
#: of the pixels, so its IoU with a concept covering a fraction p of the image is at most
#: ~0.01/p (0.025 for sky at p = 0.4) -- big regions (sky, grass) never pass 0.05. 0.02 is
#: about twice the IoU an unrelated unit gets by chance with such a region (0.01 p / (p + 0.01)),
#: and far above the distractors of the hand-built worlds (< 0.01). Measured in docs/paint.md.
PAINT_IOU_FLOOR = 0.02


@dataclass(frozen=True)
class Stroke:
    """One brush stroke: ``mask`` (H x W bool, any resolution) painted with ``concept``."""

    concept: str
    mode: Mode
    mask: torch.Tensor


@dataclass(frozen=True)
class Concept:
    """A paintable concept: its units ranked by IoU (best first), those above the IoU cut-off."""

    name: str
    category: str
    units: tuple[int, ...]
    ious: tuple[float, ...]
    labelled: int  # units whose best concept this is (the dissection's count)
    method: str = "iou"  # how ``units`` are ranked: "iou", or a saved ranking's method ("alpha", "ace")


def rank_concepts(
    dissection: Dissection,
    *,
    iou_min: float | None = None,
    max_units: int = MAX_UNITS,
    rankings: dict[str, tuple[str, list[int]]] | None = None,
) -> list[Concept]:
    """Concepts with at least one unit whose IoU with them exceeds ``iou_min``.

    ``iou_min`` defaults to :data:`PAINT_IOU_FLOOR` (GANPaint's "top-n by IoU, with a
    floor"). Units are ranked by IoU, or, for concepts in ``rankings`` (``{concept: (method,
    units best first)}``, e.g. from a saved :class:`gdx.causal.UnitRanking`), in that
    order. Sorted by the number of units labelled with the concept, then by best IoU.
    """
    cut = PAINT_IOU_FLOOR if iou_min is None else iou_min
    counts = dissection.summary().per_concept
    rankings = rankings or {}
    out = []
    for c, name in enumerate(dissection.labels):
        col = dissection.iou[:, c].float()
        method = "iou"
        if name in rankings:
            method, ranked = rankings[name]
            units = [int(u) for u in ranked if 0 <= int(u) < dissection.units][:max_units]
        else:
            order = torch.argsort(col, descending=True, stable=True)[:max_units]
            units = [int(u) for u in order.tolist() if float(col[u]) > cut]
        if not units:
            continue
        out.append(Concept(name, dissection.categories.get(name, "concept"), tuple(units),
                           tuple(round(float(col[u]), 4) for u in units), int(counts.get(name, 0)), method))
    return sorted(out, key=lambda k: (-k.labelled, -k.ious[0], k.name))


class PaintEngine:
    """Serves edited images of one generator layer; thread-safe (one forward at a time)."""

    def __init__(self, generator: Generator, dissection: Dissection, quantiles: torch.Tensor, *,
                 max_units: int = MAX_UNITS, rankings: dict[str, tuple[str, list[int]]] | None = None,
                 iou_min: float | None = None, edit_layer: str | None = None) -> None:
        self.generator = generator
        self.dissection = dissection
        #: where strokes are painted: the dissected layer, or a step window of its block (``blk@A-B``,
        #: units ranked at the dissected step, drawn at every step of the window)
        self.layer = edit_layer or dissection.layer
        if LayerAddress.parse(self.layer).block != LayerAddress.parse(dissection.layer).block:
            raise PaintError(f"edit_layer {self.layer!r} is not a step window of the dissected block "
                             f"{LayerAddress.parse(dissection.layer).block!r}: units are only the same units there")
        self.quantiles = torch.as_tensor(quantiles, dtype=torch.float32)
        if self.quantiles.dim() != 2 or not per_step_rows(self.layer, self.quantiles):
            self.quantiles = self.quantiles.reshape(-1)  # one draw value per unit (steps x U at a window)
        if self.quantiles.shape[-1] != dissection.units:
            raise PaintError(f"{self.quantiles.shape[-1]} quantiles for {dissection.units} units of {self.layer!r}")
        self.concepts = {c.name: c for c in rank_concepts(dissection, max_units=max_units, rankings=rankings,
                                                             iou_min=iou_min)}
        self.lock = threading.Lock()
        with self.lock, torch.no_grad(), Trace(generator, self.layer) as tr:
            image = generator.generate(self.latent(0))
        self.image_size = (int(image.shape[-2]), int(image.shape[-1]))
        self.grid = (int(tr[self.layer].shape[-2]), int(tr[self.layer].shape[-1]))

    @classmethod
    def build(cls, generator: Generator, dissection: Dissection, *, samples: int = 200, seed: int = 0,
              max_units: int = MAX_UNITS, rankings: dict[str, tuple[str, list[int]]] | None = None,
              iou_min: float | None = None, edit_layer: str | None = None) -> "PaintEngine":
        """Compute each unit's 0.99 quantile (the "draw" value) from ``samples`` samples, then build.

        ``iou_min`` (default :data:`PAINT_IOU_FLOOR`) is the IoU a unit needs to be
        painted with for a concept. ``edit_layer``: paint at a step window of the dissected
        block (docs/diffusion.md); its draw values are the quantiles at each step.
        """
        q = unit_quantiles(generator, edit_layer or dissection.layer, 0.99, samples=samples, seed=seed)
        return cls(generator, dissection, q, max_units=max_units, rankings=rankings, iou_min=iou_min,
                   edit_layer=edit_layer)

    def with_generator(self, generator: Generator) -> "PaintEngine":
        """This engine (same concepts, units and draw values) serving ``generator``'s samples.

        For a photo: ``engine.with_generator(gdx.invert(engine.generator, photo).as_generator())``
        paints the photo with the base generator's units. ``generator`` must drive the same
        module (its edits are hooks on it), so the copy shares this engine's lock.
        """
        if generator.module is not self.generator.module:
            raise PaintError("with_generator needs a generator on the same module (e.g. an inversion of this "
                             "engine's generator); build a new PaintEngine for another model")
        new = copy.copy(self)
        new.generator = generator
        return new

    def photo_prior(self, segmenter: Segmenter, *, samples: int = 200, seed: int = 0, weight: float = 0.5,
                    concepts: list[str] | None = None) -> ConceptPrior:
        """The concept prior to invert photos with, so that this engine's erase brush works on them.

        Measures, on ``samples`` of the generator's own images, how strongly each concept's
        painted units (the top :attr:`default_units`) fire where ``segmenter`` finds it
        (:class:`gdx.ConceptPrior`). ``concepts`` default: every paintable concept but the
        segmenter's "stuff" (sky, grass, road, ...): those cover most of a picture, and holding
        their units up makes other concepts hard to draw over them (docs/paint.md measures it).
        Call it on the generator's engine, not on a photo's (``with_generator``) copy.
        """
        if concepts is None:
            chosen = [c for c, k in self.concepts.items() if k.category != "stuff"]
        else:
            unknown = [c for c in concepts if c not in self.concepts]
            if unknown:
                raise PaintError(f"unknown concept(s) {', '.join(map(repr, unknown))} for the photo prior; "
                                 f"paintable: {', '.join(self.concepts)}")
            chosen = list(concepts)
        units = {c: self.concepts[c].units[: self.default_units] for c in chosen}
        with self.lock:
            return ConceptPrior.measure(self.generator, segmenter, self.layer, units, samples=samples, seed=seed,
                                        weight=weight)

    @property
    def default_units(self) -> int:
        return min(DEFAULT_UNITS, self.dissection.units)

    def latent(self, sample: int) -> torch.Tensor:
        """Sample ``sample``'s latent: ``generator.sample_latents(1, seed=sample)`` (reproducible)."""
        return self.generator.sample_latents(1, seed=int(sample)).to(self.generator.device)

    def edits(self, strokes: list[Stroke], n_units: int) -> list[Edit]:
        out = []
        for s in strokes:
            concept = self.concepts.get(s.concept)
            if concept is None:
                raise PaintError(f"unknown concept {s.concept!r}; paintable: {', '.join(self.concepts)}")
            units = list(concept.units[: max(1, int(n_units))])
            value = self.quantiles[..., units] if s.mode == "draw" else torch.zeros(len(units))
            out.append(Edit(self.layer, units, value, s.mask.float()[None]))
        return out

    @torch.no_grad()
    def render(self, sample: int, strokes: list[Stroke] | None = None, *, n_units: int = DEFAULT_UNITS) -> np.ndarray:
        """The sample with ``strokes`` applied, as H x W x 3 uint8 (one generator forward)."""
        z = self.latent(sample)
        edits = self.edits(list(strokes or []), n_units)
        with self.lock:
            if edits:
                with intervene(self.generator, edits):
                    image = self.generator.generate(z)
            else:
                image = self.generator.generate(z)
        return to_uint8(image[0])
