"""The README's quick start is what CI runs, and it shows `gdx run`."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_quick_start_is_two_commands_install_run_and_install_test():
    install_run, install_test = quick_start_commands()
    assert "pip install" in install_run and "gdx run" in install_run
    assert "pip install" in install_test and "pytest" in install_test


def test_ci_runs_the_readmes_test_command():
    _, install_test = quick_start_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_test in ci, "keep .ci/run's test line identical to the README's second command"


def test_docs_linked_from_the_readme_exist():
    text = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\((docs/[^)]+)\)", text):
        assert (ROOT / link).exists(), link
