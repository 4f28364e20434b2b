"""The paper's dissection scores as metric plugins: IoU at a quantile, and IQR.

Both read exact counts at per-unit levels (:class:`gdx.stats.LevelCounts`):

* ``iou`` (``threshold=q``): levels at top fractions around ``1 - q``; the unit's
  threshold is the level whose exact share of pixels above is closest to ``1 - q``,
  i.e. the q-quantile of the unit's upsampled values over all pixels of all samples
  (SPEC §1.2), refined from the sketch by exact counts.
* ``iqr`` (``threshold="iqr"``): levels at 100 log-spaced top fractions 1e-3..1; the
  unit gets the (level, concept) pair of maximal information quality ratio, ignoring
  concepts that cover < 1e-3 of pixels (SPEC §1.2, the paper's rule for GANs).
"""

from __future__ import annotations

import torch

import gdx
from gdx.scores import DissectionContext, DissectionMetric, UnitScores
from gdx.stats import iou_from_counts, iqr_from_counts, log_fractions
from gdx.hookspecs import Register

#: Relative half-width and number of the refinement levels around 1 - q.
REFINE_SPAN = 0.4
REFINE_LEVELS = 41


class QuantileIoU(DissectionMetric):
    """IoU of each unit's top-(1-q) region with each concept (SPEC §1, quantile mode)."""

    name = "iou"

    def fractions(self) -> torch.Tensor:
        q = float(self.context.threshold)
        top = 1.0 - q
        rel = torch.linspace(1 + REFINE_SPAN, 1 - REFINE_SPAN, REFINE_LEVELS, dtype=torch.float64)
        return (top * rel).clamp(min=1e-9, max=1.0)

    def result(self) -> UnitScores:
        c = self.counts
        if c is None or int(c.pixels) == 0:
            raise RuntimeError("no batches counted")
        target = (1.0 - float(self.context.threshold)) * float(c.pixels)
        # Exact rank refinement: the level whose pixel count above is closest to target.
        j = (c.above.double() - target).abs().argmin(1)  # U
        units = torch.arange(c.units)
        iou_all = iou_from_counts(c.above[units, j], c.cooc[units, j], c.area)  # U, C
        best_score, best_label = iou_all.max(1)
        return UnitScores(
            iou=iou_all,
            thresholds=c.levels[units, j],
            best_label=best_label,
            best_score=best_score,
            extra={"above_fraction": c.above[units, j].double() / float(c.pixels)},
        )


class IQRRule(DissectionMetric):
    """The paper's rule: per unit, the level and concept of maximal IQR (SPEC §1.2)."""

    name = "iqr"
    min_coverage = 1e-3

    def fractions(self) -> torch.Tensor:
        return log_fractions(100, 1e-3)

    def result(self) -> UnitScores:
        c = self.counts
        if c is None or int(c.pixels) == 0:
            raise RuntimeError("no batches counted")
        iqr = iqr_from_counts(c.above, c.cooc, c.area, int(c.pixels))  # U, L, C
        coverage = c.area.double() / float(c.pixels)
        iqr = iqr.masked_fill(~(coverage >= self.min_coverage)[None, None, :], -1.0)
        flat = iqr.flatten(1)  # U, L*C
        best = flat.argmax(1)
        j, label = best // c.num_labels, best % c.num_labels
        units = torch.arange(c.units)
        iou_all = iou_from_counts(c.above[units, j], c.cooc[units, j], c.area)
        iqr_at = iqr[units, j].clamp(min=0)
        return UnitScores(
            iou=iou_all,
            thresholds=c.levels[units, j],
            best_label=label,
            best_score=iqr_at[units, label],
            iqr=iqr_at,
            extra={"above_fraction": c.above[units, j].double() / float(c.pixels)},
        )


def build_iou(context: DissectionContext) -> QuantileIoU:
    """IoU at the q-quantile of each unit's upsampled values (threshold=q)."""
    return QuantileIoU(context)


def build_iqr(context: DissectionContext) -> IQRRule:
    """The paper's IQR rule: best (level, concept) by information quality ratio."""
    return IQRRule(context)


@gdx.hookimpl
def register_metrics(register: Register) -> None:
    register("iou", build_iou)
    register("iqr", build_iqr)
