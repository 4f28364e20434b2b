"""The architecture rules, checked by tools: import-linter contracts, mypy, module sizes.

The rules themselves are written down in pyproject.toml ([tool.importlinter]) and
explained in docs/architecture.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from source_tree import ROOT, build_source_tree

BIN = Path(sys.executable).parent
MAX_MODULE_LINES = 600


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(BIN / "lint-imports"), str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=600)


def test_import_contracts_hold(tmp_path):
    result = lint_imports(build_source_tree(tmp_path))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 5 kept, 0 broken." in result.stdout


def test_import_contracts_catch_violations(tmp_path):
    """A lower layer importing the CLI, and the package importing tools/, break the contracts."""
    sampling = (ROOT / "core" / "sampling.py").read_text() + "\nimport gdx.cli  # violation\n"
    stats = (ROOT / "core" / "stats.py").read_text() + "\nimport tools.scenes.pool  # violation\n"
    plugin = (ROOT / "plugins" / "generators" / "toy.py").read_text() + "\nimport gdx.report  # violation\n"
    tree = build_source_tree(tmp_path, {"sampling.py": sampling, "stats.py": stats,
                                        "plugins/generators/toy.py": plugin})
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "gdx.sampling is not allowed to import gdx.cli" in result.stdout
    assert "gdx is not allowed to import tools" in result.stdout and "gdx.stats -> tools" in result.stdout
    assert "gdx.plugins is not allowed to import gdx.report" in result.stdout
    assert "gdx.plugins.generators.toy -> gdx.report" in result.stdout


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in [*ROOT.glob("core/**/*.py"), *ROOT.glob("plugins/**/*.py")]
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules (one job each): {long}"


def test_mypy_is_clean_on_core_and_plugins(tmp_path):
    tree = build_source_tree(tmp_path / "src")
    env = {**os.environ, "MYPYPATH": str(tree)}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "cache"), "-p", "gdx"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
