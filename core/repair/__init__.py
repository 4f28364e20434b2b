"""Artifact repair (docs/method.md, "Repair"): find the units behind visual artifacts and switch them off.

``search`` holds the three-stage search and its result, ``measure`` the per-image
measurements and bootstrap statistics it rests on, ``checks`` the score's spread and the
per-unit evidence a person checks.
"""

from gdx.repair.checks import ScoreSpread, UnitEvidence, score_spread, unit_evidence
from gdx.repair.measure import bootstrap_interval
from gdx.repair.search import ArtifactRepair, find_artifact_units

__all__ = [
    "ArtifactRepair",
    "ScoreSpread",
    "UnitEvidence",
    "bootstrap_interval",
    "find_artifact_units",
    "score_spread",
    "unit_evidence",
]
