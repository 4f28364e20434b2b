"""The package installs as `gdx` + `gdx.plugins` from a wheel, independent of the working directory."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def declared_packages():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(cfg["packages"]), cfg["package-dir"]


def test_every_package_folder_is_declared():
    packages, mapping = declared_packages()
    found = set()
    for top, prefix in (("core", "gdx"), ("plugins", "gdx.plugins")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join([prefix, *rel.parts]))
    missing = found - packages
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    assert mapping == {"gdx": "core", "gdx.plugins": "plugins"}


def test_nothing_imports_core_directly():
    offenders = [
        str(p) for p in ROOT.glob("**/*.py")
        if ".venv" not in p.parts and any(
            line.strip().startswith(("import core", "from core")) for line in p.read_text().splitlines())
    ]
    assert not offenders


@pytest.mark.slow
def test_wheel_installs_and_imports_outside_the_repo(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(ROOT)], check=True)
    [wheel] = dist.glob("gdx-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    training = [n for n in names if any(part in n for part in ("train_", "select_snapshot", "make_grid", "tools/"))]
    assert not training, f"training scripts must not ship in the wheel: {training}"
    assert "gdx/scenes/render.py" in names and "gdx/cli/main.py" in names and "gdx/causal/__init__.py" in names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(wheel)], check=True)
    code = (
        "import gdx, gdx.plugins, sys; "
        "assert gdx.__file__.startswith(sys.argv[1]), gdx.__file__; "
        "g = gdx.load_generator('toy'); s = gdx.load_segmenter('toy'); "
        "d = gdx.dissect(g, s, 'features', samples=16, progress=False); print(d.units)"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "10"
