"""What the causal measurements return: dataclasses saved and loaded as one JSON file each.

Every class here is a :class:`gdx.results.JsonResult` with its own ``kind``
(``result.save(path)``, ``Class.load(path)`` or :func:`gdx.results.load_result`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gdx.results import JsonResult


@dataclasses.dataclass
class CausalEffect(JsonResult):
    """The effect of ablating / inserting a set of units on a concept (docs/method.md, "Intervention").

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
class UnitRanking(JsonResult):
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
        """The ``n`` best units (see :attr:`order`)."""
        return self.order[:n]


def ordered_units(ranking: UnitRanking | Sequence[int], n_max: int) -> list[int]:
    """The first ``n_max`` units of a ranking or of a list of units (best first)."""
    if isinstance(ranking, UnitRanking):
        return ranking.top(n_max)
    return [int(u) for u in list(ranking)[:n_max]]


@dataclasses.dataclass
class CumulativeCurve(JsonResult):
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

    def to_dict(self) -> dict[str, Any]:
        """The row as saved in a removal table's JSON ``rows``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RemovalRow:
        """A row read back from JSON; unknown keys are ignored.

        Files written before the worst-draw figure existed get the mean random side
        effect there (as their markdown table showed).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "random_worst_side_effect" not in kwargs and "random_side_effect" in kwargs:
            kwargs["random_worst_side_effect"] = kwargs["random_side_effect"]
        return cls(**kwargs)


@dataclasses.dataclass
class RemovalTable(JsonResult):
    """The paper-style table: fraction of a concept's pixels removed by its top-n units.

    ``side_effect`` is the largest |relative change| of any other concept covering at
    least ``side_min_coverage`` (1%) of the pixels, under the same ablation.
    """

    layer: str
    method: str
    top: int
    samples: int
    seed: int
    rows: list[RemovalRow]

    _kind = "removal_table"

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["rows"] = [row.to_dict() for row in self.rows]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RemovalTable:
        table = super().from_dict(data)
        table.rows = [r if isinstance(r, RemovalRow) else RemovalRow.from_dict(r) for r in table.rows]
        return table

    def to_markdown(self) -> str:
        """The table in markdown, one line per concept."""
        draws = max((len(r.random_draws or [r.random_units]) for r in self.rows), default=1)
        random_label = f"{self.top} random" + (f" (mean of {draws} draws)" if draws > 1 else "")
        head = (
            f"| concept | removed by top-{self.top} ({self.method}) | removed by {random_label} | "
            f"largest other-concept change (top) | largest other-concept change ({random_label}) | "
            "worst single random draw |\n"
            "|---|---|---|---|---|---|\n"
        )
        lines = [
            f"| {r.concept} | {r.removed:.2f} | {r.random_removed:+.2f} | "
            f"{r.side_effect:+.2f} | {r.random_side_effect:+.2f} | "
            f"{r.random_worst_side_effect:+.2f} |"
            for r in self.rows
        ]
        return head + "\n".join(lines) + "\n"


@dataclasses.dataclass
class LocationMap(JsonResult):
    """Where inserting a concept's units adds the concept (docs/method.md, "ACE and removal": location maps).

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

        return write_png(Path(path), heatmap_overlay(self.image, self.gain, size=size))
