"""The paper's dissection scores as metric plugins: IoU at a quantile, and IQR.

Both read exact counts at per-unit levels (:class:`gdx.stats.LevelCounts`):

* ``iou`` (``threshold=q``): levels at top fractions around ``1 - q``; the unit's
  threshold is the level whose exact share of pixels above is closest to ``1 - q``,
  i.e. the q-quantile of the unit's upsampled values over all pixels of all samples
  (docs/method.md, "Dissection"), refined from the sketch by exact counts.
* ``iqr`` (``threshold="iqr"``): candidate levels at 100 log-spaced top fractions
  1e-3..1; the unit gets the (level, concept) pair of maximal information quality ratio,
  ignoring concepts that cover < 1e-3 of pixels (the paper's rule for GANs). Counts are
  taken on a grid three times as dense (plus a margin below 1e-3), and each candidate is
  the grid level whose exact share of pixels above is closest to its fraction: the exact
  candidate levels, refined as the quantile mode refines its one level.
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
    """IoU of each unit's top-(1-q) region with each concept (docs/method.md, "Dissection", quantile mode)."""

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
            level_index=j,
        )


#: IQR mode: the counting grid is this many times denser than the candidate fractions,
#: and reaches this many grid steps below the smallest candidate (the sketch's error there).
IQR_REFINE = 3
IQR_MARGIN = 15


class IQRRule(DissectionMetric):
    """The paper's rule: per unit, the level and concept of maximal IQR (docs/method.md, "Dissection")."""

    name = "iqr"
    min_coverage = 1e-3

    candidates = 100

    def candidate_fractions(self) -> torch.Tensor:
        """The rule's 100 top fractions, 1 down to 1e-3 (descending)."""
        return log_fractions(self.candidates, 1e-3)

    def fractions(self) -> torch.Tensor:
        step = 3.0 / ((self.candidates - 1) * IQR_REFINE)  # decades per grid step
        count = (self.candidates - 1) * IQR_REFINE + 1 + IQR_MARGIN
        return torch.logspace(0.0, -step * (count - 1), count, dtype=torch.float64)

    def candidate_levels(self) -> torch.Tensor:
        """(U, 100): for each candidate fraction, the grid level whose exact count above is closest."""
        c = self.counts
        if c is None or int(c.pixels) == 0:
            raise RuntimeError("no batches counted")
        target = self.candidate_fractions()[None, :, None] * float(c.pixels)  # 1, K, 1
        above = c.above.double()
        # a few units at a time: the (units, K, L) differences stay in cache
        return torch.cat([(above[u : u + 16, None, :] - target).abs().argmin(2) for u in range(0, c.units, 16)])

    def result(self) -> UnitScores:
        c = self.counts
        if c is None or int(c.pixels) == 0:
            raise RuntimeError("no batches counted")
        cand = self.candidate_levels()  # U, K
        units_k = torch.arange(c.units)[:, None]
        iqr = iqr_from_counts(c.above[units_k, cand], c.cooc[units_k, cand], c.area, int(c.pixels))  # U, K, C
        coverage = c.area.double() / float(c.pixels)
        iqr = iqr.masked_fill(~(coverage >= self.min_coverage)[None, None, :], -1.0)
        flat = iqr.flatten(1)  # U, L*C
        best = flat.argmax(1)
        k, label = best // c.num_labels, best % c.num_labels
        units = torch.arange(c.units)
        j = cand[units, k]
        iou_all = iou_from_counts(c.above[units, j], c.cooc[units, j], c.area)
        iqr_at = iqr[units, k].clamp(min=0)
        return UnitScores(
            iou=iou_all,
            thresholds=c.levels[units, j],
            best_label=label,
            best_score=iqr_at[units, label],
            iqr=iqr_at,
            extra={"above_fraction": c.above[units, j].double() / float(c.pixels)},
            level_index=j,
        )


def build_iou(context: DissectionContext) -> QuantileIoU:
    """IoU at the q-quantile of each unit's upsampled values (threshold=q).

    Args:
        context: given by the engine (the dissection's threshold and label counts), not a user option
    """
    return QuantileIoU(context)


def build_iqr(context: DissectionContext) -> IQRRule:
    """The paper's IQR rule: best (level, concept) by information quality ratio.

    Args:
        context: given by the engine (the dissection's threshold and label counts), not a user option
    """
    return IQRRule(context)


@gdx.hookimpl
def register_metrics(register: Register) -> None:
    register("iou", build_iou)
    register("iqr", build_iqr)
