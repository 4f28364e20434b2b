"""The state of dissection's two passes: mergeable, checkpointable statistics.

:class:`LevelPass` (pass 1: the point sample and top samples per layer) and
:class:`CountPass` (pass 2: one dissection metric per layer, plus the spatial-prior
null's blocks that a shard boundary cut) merge exactly, so shards, processes and
resumed runs give one run's numbers. :class:`gdx.dissection.DissectionRun` fills them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from gdx.labelstats import null_partners
from gdx.scores import DissectionMetric, LevelBatch, UnitScores
from gdx.stats import PointSample, TopSamples


@dataclass
class LevelPass:
    """Pass-1 statistics for every layer (mergeable, checkpointable)."""

    samples: dict[str, PointSample]
    tops: dict[str, TopSamples]
    seen: int = 0

    def merge(self, other: "LevelPass") -> None:
        for name in self.samples:
            self.samples[name].merge(other.samples[name])
            self.tops[name].merge(other.tops[name])
        self.seen += other.seen

    def state_dict(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {"seen": torch.tensor(self.seen)}
        for name in self.samples:
            for k, v in self.samples[name].state_dict().items():
                out[f"{name}/sample/{k}"] = v
            for k, v in self.tops[name].state_dict().items():
                out[f"{name}/top/{k}"] = v
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.seen = int(state["seen"])
        for name in self.samples:
            self.samples[name].load_state_dict({k: state[f"{name}/sample/{k}"] for k in ("keys", "values")})
            self.tops[name].load_state_dict({k: state[f"{name}/top/{k}"] for k in ("values", "indices")})


@dataclass(frozen=True)
class NullBlocks:
    """The spatial-prior null's pairing: blocks of ``block`` consecutive global indices (see
    :func:`gdx.labelstats.null_partners`); pass 2 cuts its batches at block boundaries."""

    samples: int
    block: int
    seed: int

    def partners(self, index: torch.Tensor) -> torch.Tensor:
        return null_partners(index, self.samples, self.block, self.seed)

    def size(self, k: int) -> int:
        return min(self.block, self.samples - k * self.block)


@dataclass
class CountPass:
    """Pass-2 statistics: one dissection metric per layer, levels set (mergeable).

    ``pending`` holds the samples of null blocks that a shard boundary cut (their layer
    outputs and labels); merging shards completes those blocks, so merged statistics
    equal one run's exactly.
    """

    metrics: dict[str, DissectionMetric]
    seen: int = 0
    null: NullBlocks | None = None
    pending: dict[int, tuple[dict[str, torch.Tensor], torch.Tensor]] = field(default_factory=dict)
    #: Each layer's final scores, when a replayed run already computed them (not saved: a
    #: loaded state recomputes them from the counts, with the same result).
    scores: dict[str, UnitScores] = field(default_factory=dict)

    def merge(self, other: "CountPass") -> None:
        self.scores.clear()
        for name in self.metrics:
            self.metrics[name].merge(other.metrics[name])
        self.seen += other.seen
        self.pending.update(other.pending)
        self.complete_blocks()

    def add_pending(self, index: torch.Tensor, acts: dict[str, torch.Tensor], seg: torch.Tensor) -> None:
        for i, g in enumerate(index.tolist()):
            self.pending[int(g)] = ({k: v[i].detach().cpu() for k, v in acts.items()}, seg[i].detach().cpu())
        self.complete_blocks()

    def complete_blocks(self) -> None:
        """Count the null of every pending block whose samples are all here."""
        if self.null is None or not self.pending:
            return
        for k in sorted({g // self.null.block for g in self.pending}):
            first, size = k * self.null.block, self.null.size(k)
            members = list(range(first, first + size))
            if not all(g in self.pending for g in members):
                continue
            items = [self.pending.pop(g) for g in members]
            index = torch.tensor(members)
            partner = self.null.partners(index)
            local = torch.where(partner >= 0, partner - first, partner)
            seg = torch.stack([it[1] for it in items])
            for name, metric in self.metrics.items():
                a = torch.stack([it[0][name] for it in items])
                metric.update(LevelBatch(acts=a, seg=seg, sample_index=index, upsampled=upsampler(a, (int(seg.shape[-2]), int(seg.shape[-1]))),
                                         partner=local, count=False))

    def state_dict(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {"seen": torch.tensor(self.seen)}
        for name, metric in self.metrics.items():
            for k, v in metric.state_dict().items():
                out[f"{name}/{k}"] = v
        if self.pending:
            keys = sorted(self.pending)
            out["pending.index"] = torch.tensor(keys)
            out["pending.seg"] = torch.stack([self.pending[g][1] for g in keys])
            for name in self.metrics:
                out[f"pending.acts.{name}"] = torch.stack([self.pending[g][0][name] for g in keys])
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.seen = int(state["seen"])
        for name, metric in self.metrics.items():
            prefix = f"{name}/"
            metric.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        self.pending = {}
        if "pending.index" in state:
            for i, g in enumerate(state["pending.index"].tolist()):
                acts = {name: state[f"pending.acts.{name}"][i] for name in self.metrics}
                self.pending[int(g)] = (acts, state["pending.seg"][i])


def upsampler(acts: torch.Tensor, size: tuple[int, int]) -> Callable[[], torch.Tensor]:
    """``LevelBatch.upsampled``: the layer output bilinearly upsampled to the segmentation size, on demand."""

    def upsampled() -> torch.Tensor:
        return F.interpolate(acts, size=size, mode="bilinear", align_corners=False)

    return upsampled


