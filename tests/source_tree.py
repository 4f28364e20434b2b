"""The package laid out as Python imports it, for tools that walk source folders.

``core/`` is installed as ``gdx`` and ``plugins/`` as ``gdx.plugins`` (a setuptools
``package-dir`` mapping), so static tools (mypy, import-linter's grimp) that look for a
folder named ``gdx`` cannot see it in the repository. This builds ``<dest>/gdx``: a
link to every entry of ``core/`` plus ``plugins`` -> ``plugins/``. Files can be
overridden with real copies, to show that a check fails on a broken tree.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_source_tree(dest: Path, overrides: dict[str, str] | None = None) -> Path:
    """Lay out ``dest/gdx``; ``overrides`` maps a path inside the package to new file text."""
    pkg = dest / "gdx"
    if pkg.exists():
        shutil.rmtree(pkg)
    pkg.mkdir(parents=True)
    for entry in (ROOT / "core").iterdir():
        if entry.name == "__pycache__":
            continue
        (pkg / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    (pkg / "plugins").symlink_to(ROOT / "plugins", target_is_directory=True)
    for rel, text in (overrides or {}).items():
        target = pkg / rel
        # replace the link of the top-level entry that holds ``rel`` with a real copy
        top = pkg / Path(rel).parts[0]
        if top.is_symlink():
            real = top.resolve()
            top.unlink()
            if real.is_dir():
                shutil.copytree(real, top, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(real, top)
        target.write_text(text)
    return dest
