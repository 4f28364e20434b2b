"""The contract of dissection metrics: scores of units against concepts.

The engine counts, in pass 2, the pixels above per-unit levels and their overlap
with each label (:class:`gdx.stats.LevelCounts`). A dissection metric says at which
top fractions it wants levels (``fractions``), receives the counts batch by batch
(``update``), and turns them into per-unit scores (``result``). IoU at a quantile and
the paper's IQR rule are two such metrics (``gdx.plugins.metrics.dissection``); a
third party registers another through the ``register_metrics`` hook.

A metric that wants the raw data instead (e.g. a correlation) returns ``None`` from
``fractions`` and reads ``batch.acts`` / ``batch.seg`` / ``batch.upsampled()``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from gdx.interfaces import Metric

if TYPE_CHECKING:
    from gdx.labelstats import LabelTracker
    from gdx.stats import LevelCounts


@dataclass(frozen=True)
class DissectionContext:
    """What a dissection metric is built with."""

    layer: str
    units: int
    labels: Sequence[str]
    categories: Mapping[str, str]
    threshold: float | str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class LevelBatch:
    """One batch as a dissection metric sees it (the argument of ``update``).

    ``acts``: the raw layer output n x U x h x w; ``seg``: labels n x K x H x W (int64,
    -1 = none); ``sample_index``: the batch's global sample indices (n,);
    ``upsampled()``: ``acts`` bilinearly upsampled to the segmentation's H x W, computed
    on call. Level-based metrics do not count here themselves: the default
    :meth:`DissectionMetric.update` folds ``acts`` and ``seg`` into ``metric.counts``
    (a :class:`gdx.stats.LevelCounts` at the metric's levels).
    """

    acts: torch.Tensor
    seg: torch.Tensor
    sample_index: torch.Tensor
    upsampled: Callable[[], torch.Tensor]
    partner: torch.Tensor | None = None  # (n,) each sample's spatial-prior-null partner in the batch, -1 none
    count: bool = True  # False: a null-only batch (a block completed at a merge); count nothing else


@dataclass
class UnitScores:
    """What a dissection metric returns: per-unit scores against every label."""

    iou: torch.Tensor  # U x C, IoU at each unit's threshold
    thresholds: torch.Tensor  # U, the level each unit is thresholded at
    best_label: torch.Tensor  # U, int index of the unit's label
    best_score: torch.Tensor  # U, the score that picked it (IoU, or IQR in iqr mode)
    iqr: torch.Tensor | None = None  # U x C, IQR at the unit's threshold (iqr mode)
    level_index: torch.Tensor | None = None  # U, index into the levels of each unit's threshold
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


class DissectionMetric(Metric):
    """A metric of kind ``"dissection"``, built by the engine as ``factory(context)``."""

    kind = "dissection"

    def __init__(self, context: DissectionContext) -> None:
        self.context = context
        self.levels: torch.Tensor | None = None
        self.counts: LevelCounts | None = None  # set by set_levels for level-based metrics
        self.tracker: LabelTracker | None = None  # per-sample moments and the null, set with the levels

    def fractions(self) -> torch.Tensor | None:
        """Top fractions (descending) at which the metric wants exact counts, or None."""
        return None

    def set_levels(self, levels: torch.Tensor) -> None:
        """Receive the per-unit levels (U x L) that match :meth:`fractions`."""
        from gdx.labelstats import LabelTracker
        from gdx.stats import LevelCounts

        self.levels = levels
        self.counts = LevelCounts(levels, len(self.context.labels))
        self.tracker = LabelTracker(levels.shape[0], levels.shape[1], len(self.context.labels))

    def update(self, batch: LevelBatch) -> None:
        if self.counts is None:
            raise RuntimeError("set_levels() must be called before update()")
        if self.tracker is not None and batch.partner is not None:
            self.tracker.begin(batch.seg, batch.partner, observe=batch.count)
            self.counts.update(batch.acts, batch.seg, sink=self.tracker, count=batch.count)
        elif batch.count:
            self.counts.update(batch.acts, batch.seg)

    def merge(self, other: "Metric") -> None:
        if not isinstance(other, DissectionMetric) or other.counts is None or self.counts is None:
            raise TypeError("can only merge a dissection metric of the same kind with levels set")
        self.counts.merge(other.counts)
        if self.tracker is not None and other.tracker is not None:
            self.tracker.merge(other.tracker)
        else:
            self.tracker = None

    @abc.abstractmethod
    def result(self) -> UnitScores:
        """Per-unit scores for everything seen so far."""

    def state_dict(self) -> dict[str, Any]:
        if self.counts is None:
            return {}
        out: dict[str, Any] = dict(self.counts.state_dict())
        if self.tracker is not None:
            out.update({f"tracker.{k}": v for k, v in self.tracker.state_dict().items()})
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.set_levels(state["levels"])
            assert self.counts is not None
            self.counts.load_state_dict(state)
            tracked = {k[len("tracker."):]: v for k, v in state.items() if k.startswith("tracker.")}
            if self.tracker is not None and tracked:
                self.tracker.load_state_dict(tracked)
            else:
                self.tracker = None
