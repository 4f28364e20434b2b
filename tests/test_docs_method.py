"""The method lives in docs/method.md, and help texts and docstrings point there (not to an outside spec)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from gdx.cli import cli

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"


def sources() -> list[Path]:
    files = [*(ROOT / "core").rglob("*.py"), *(ROOT / "plugins").rglob("*.py"), *(ROOT / "docs").glob("*.md"),
             ROOT / "README.md"]
    return [f for f in files if f.is_file()]


def test_nothing_cites_a_spec_outside_the_repository():
    cited = [f"{f.relative_to(ROOT)}:{n}" for f in sources()
             for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if re.search(r"\bSPEC\b", line)]
    assert cited == [], cited


def test_method_page_defines_each_quantity():
    text = METHOD.read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, re.M)
    for part in ("Dissection", "Intervention", "ACE", "α (alpha)", "Repair", "GANPaint"):
        assert any(part in h for h in headings), (part, headings)
    for quantity in ("IoU(u, c)", "I(A; B) / H(A, B)", "r' = r · (1 - a) + v · a", "do(U = k)", "λ ‖α‖²",
                     "0.99 quantile"):
        assert quantity in text, quantity


def test_every_citation_of_method_md_names_one_of_its_sections():
    headings = re.findall(r"^## (.+)$", METHOD.read_text(encoding="utf-8"), re.M)
    for f in sources():
        for name in re.findall(r'docs/method\.md, "([^"]+)"', f.read_text(encoding="utf-8")):
            assert any(name.lower() in h.lower() for h in headings), (f, name)


@pytest.mark.parametrize("command", ["run", "ace", "optimize", "repair", "paint"])
def test_command_help_points_to_method_md(command):
    r = CliRunner().invoke(cli, [command, "--help"])
    assert r.exit_code == 0, r.output
    assert "docs/method.md" in r.output
