"""Find saved causal results (JSON files written by ``result.save``) inside a run folder.

Files are recognised by their ``"kind"`` field, not their names, so results saved
anywhere under the run folder (``result.save(run_dir / "layer4" / "tree.json")``)
are found (the report draws them; paint uses the saved unit rankings). Files that
are not gdx causal results are ignored. Results are returned as the JSON dicts, each
with ``"_file"``: its path relative to the run folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdx.causal.results import CausalEffect, CumulativeCurve, RemovalTable, UnitRanking

#: Result kind -> the CausalResults list it goes to.
_BUCKETS = {
    CausalEffect._kind: "effects",
    CumulativeCurve._kind: "curves",
    RemovalTable._kind: "tables",
    UnitRanking._kind: "rankings",
}
#: Result kinds that are collected.
KINDS = tuple(sorted(_BUCKETS))
#: Do not parse JSON files larger than this (a result is small; a big file is something else).
MAX_BYTES = 20_000_000
MAX_DEPTH = 4


@dataclass
class CausalResults:
    """Saved causal results for one layer, by kind (the JSON dicts)."""

    effects: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    rankings: list[dict[str, Any]] = field(default_factory=list)

    def concepts(self) -> list[str]:
        """The concepts any effect, curve or ranking is about, sorted."""
        names = {r["concept"] for r in self.effects + self.curves + self.rankings if "concept" in r}
        return sorted(names)

    def __bool__(self) -> bool:
        return bool(self.effects or self.curves or self.tables or self.rankings)


def _json_files(root: Path) -> list[Path]:
    """``*.json`` files under ``root`` (at most MAX_DEPTH folders down, not in ``report/``, no symlinks)."""
    found = []
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for p in entries:
            if p.is_symlink():
                continue
            if p.is_dir() and depth < MAX_DEPTH and p.name != "report":
                stack.append((p, depth + 1))
            elif p.is_file() and p.suffix == ".json" and p.stat().st_size <= MAX_BYTES:
                found.append(p)
    return found


def find_causal_results(run_dir: str | os.PathLike[str]) -> dict[str, CausalResults]:
    """Causal results saved under ``run_dir``, keyed by layer name."""
    run_dir = Path(run_dir)
    out: dict[str, CausalResults] = {}
    for path in _json_files(run_dir):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("kind") not in KINDS:
            continue
        data["_file"] = str(path.relative_to(run_dir))
        bucket = out.setdefault(str(data.get("layer", "")), CausalResults())
        getattr(bucket, _BUCKETS[data["kind"]]).append(data)
    return out
