"""Find intervention results (JSON files written by :mod:`gdx.causal`) inside a run folder.

Files are recognised by their ``"kind"`` field, not their names, so results saved
anywhere under the run folder (``result.save(run_dir / "layer4" / "tree.json")``)
show up in the report. Files that are not gdx causal results are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Result kinds the report draws (see gdx.causal).
KINDS = ("causal_effect", "cumulative_curve", "removal_table", "unit_ranking")
#: Do not parse JSON files larger than this (a result is small; a big file is something else).
MAX_BYTES = 20_000_000
MAX_DEPTH = 4


@dataclass
class CausalResults:
    """Intervention results for one layer, by kind."""

    effects: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    rankings: list[dict[str, Any]] = field(default_factory=list)

    def concepts(self) -> list[str]:
        names = {r["concept"] for r in self.effects + self.curves + self.rankings if "concept" in r}
        return sorted(names)

    def __bool__(self) -> bool:
        return bool(self.effects or self.curves or self.tables or self.rankings)


def _json_files(root: Path) -> list[Path]:
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


def find_causal_results(run_dir: Path) -> dict[str, CausalResults]:
    """Intervention results under ``run_dir``, keyed by layer name."""
    out: dict[str, CausalResults] = {}
    for path in _json_files(Path(run_dir)):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("kind") not in KINDS:
            continue
        data["_file"] = str(path.relative_to(run_dir))
        bucket = out.setdefault(str(data.get("layer", "")), CausalResults())
        {
            "causal_effect": bucket.effects,
            "cumulative_curve": bucket.curves,
            "removal_table": bucket.tables,
            "unit_ranking": bucket.rankings,
        }[data["kind"]].append(data)
    return out
