"""No command ever answers with a traceback: bad option values, damaged run folders, full or read-only disks.

A property test (hypothesis) drives every registered command with one option set to a bad
value (numbers out of range, devices this machine lacks, missing or hostile paths, a
10,000-character value...) on the tiny toy world, and checks that the command ends in
click's usage error or gdx's one line, never an exception. Damaged run folders and
simulated ``OSError``s (no space, read-only) are checked for each command that reads or
writes a run folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gdx.cli.main import cli

cli.load_commands()
COMMANDS: dict[str, click.Command] = dict(sorted(cli.commands.items()))

BAD_VALUES = [
    "-1", "0", "1e400", "nan", "-inf", str(2**70), str(10**12), "banana", "", " ", "x" * 10_000,
    "cuda:7", "gpu", "cpu:9", "/nonexistent/path", "/proc/1/mem", "../" * 40, "\x00", "a=b=c", "=",
    "weights=/nonexistent.pt", "0.0", "1.5", "iqr", "3,,4", "-5,2",
]

#: Fast valid arguments for each command (toy world, few samples); RUN is a finished toy run.
BASE: dict[str, list[str]] = {
    "run": ["--gen", "toy", "--seg", "toy", "--samples", "4", "--quiet"],
    "show": ["RUN"],
    "report": ["RUN", "--no-images"],
    "compare": ["RUN", "RUN"],
    "ace": ["--gen", "toy", "--seg", "toy", "--samples", "4", "--concept", "tree", "--top", "2", "--random-draws", "1"],
    "optimize": ["--gen", "toy", "--seg", "toy", "--samples", "4", "--concept", "tree", "--epochs", "1"],
    "locate": ["--gen", "toy", "--seg", "toy", "--samples", "4", "--concept", "tree", "--top", "2"],
    "removal-table": ["--gen", "toy", "--seg", "toy", "--samples", "4", "--concepts", "tree", "--epochs", "1",
                      "--control-draws", "1"],
    "repair": ["--gen", "toy", "--seg", "toy", "--samples", "4", "--held-out", "2"],
    "paint": ["--gen", "toy", "--seg", "toy", "--samples", "20"],
    "generators": [], "segmenters": [], "metrics": [], "plugins": [], "weights": [],
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "toy"
    r = CliRunner().invoke(cli, ["run", "--gen", "toy", "--seg", "toy", "--samples", "8", "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """``gdx paint`` ends where it would start serving."""
    uvicorn = pytest.importorskip("uvicorn")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)


def _invoke(args: list[str], tmp: Path) -> Result:
    with contextlib.chdir(tmp):  # commands that default to ./runs/... write under tmp
        return CliRunner().invoke(cli, args, catch_exceptions=True)


def assert_one_line(result: Result, args: list[str]) -> None:
    shown = " ".join(a[:40] for a in args)
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), f"gdx {shown}: {type(exc).__name__}: {exc}"
    assert "Traceback" not in result.output, f"gdx {shown}:\n{result.output[-1000:]}"
    assert result.exit_code in (0, 1, 2), (shown, result.exit_code, result.output[-500:])
    if result.exit_code == 1:
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and len(errors[0]) < 1200, (shown, result.output[:300], result.output[-300:])


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and not p.is_flag and p.name != "help"]


def _args(name: str, run: Path, option: str | None, value: str) -> list[str]:
    base = [str(run) if a == "RUN" else a for a in BASE.get(name, [])]
    if option is None:  # a bad positional argument
        positional = [i for i, a in enumerate(base) if a == str(run)]
        if positional:
            base[positional[0]] = value
        else:
            base.append(value)
        return [name, *base]
    if option in base:  # replace the base value of this option
        i = base.index(option)
        base = base[:i] + base[i + 2:]
    return [name, *base, option, value]


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          phases=[Phase.explicit, Phase.generate])
@given(data=st.data())
def test_no_bad_option_value_gives_a_traceback(data: st.DataObject, finished_run: Path,
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    name = data.draw(st.sampled_from(sorted(COMMANDS)))
    options = [o.opts[0] for o in _options(COMMANDS[name])]
    option = data.draw(st.sampled_from([*options, None]))
    value = data.draw(st.one_of(st.sampled_from(BAD_VALUES), st.text(max_size=30)))
    args = _args(name, finished_run, option, value)
    assert_one_line(_invoke(args, tmp_path_factory.mktemp("cwd")), args)


def test_every_device_check_lists_what_the_machine_has(tmp_path: Path) -> None:
    for device in ("banana", "gpu", "cuda:7", "cpu:3", "x" * 10_000):
        r = _invoke(["run", "--gen", "toy", "--seg", "toy", "--device", device], tmp_path)
        assert r.exit_code == 2 and "this machine has" in r.output and "cpu" in r.output, r.output
        assert "Traceback" not in r.output


# -- damaged run folders -----------------------------------------------------------------

def _damage(run: Path, dest: Path, how: str) -> Path:
    shutil.copytree(run, dest)
    layer = dest / "features"
    if how == "garbage run.json":
        (dest / "run.json").write_bytes(b"\x00\xffnot json")
    elif how == "truncated run.json":
        text = (dest / "run.json").read_text()
        (dest / "run.json").write_text(text[: len(text) // 2])
    elif how == "run.json of the wrong shape":
        (dest / "run.json").write_text(json.dumps({"format": "gdx.run", "layers": "features", "samples": "many"}))
    elif how == "run.json nested too deep":
        (dest / "run.json").write_text("[" * 100_000 + "]" * 100_000)
    elif how == "truncated dissection.json":
        text = (layer / "dissection.json").read_text()
        (layer / "dissection.json").write_text(text[: len(text) // 2])
    elif how == "dissection.json without keys":
        meta = json.loads((layer / "dissection.json").read_text())
        del meta["unit_labels"]
        (layer / "dissection.json").write_text(json.dumps(meta))
    elif how == "garbage safetensors":
        (layer / "dissection.safetensors").write_bytes(b"\xff" * 64)
    elif how == "truncated safetensors":
        data = (layer / "dissection.safetensors").read_bytes()
        (layer / "dissection.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "missing layer":
        shutil.rmtree(layer)
    return dest


DAMAGES = ["garbage run.json", "truncated run.json", "run.json of the wrong shape", "run.json nested too deep",
           "truncated dissection.json", "dissection.json without keys", "garbage safetensors",
           "truncated safetensors", "missing layer"]
READERS = [["show", "DIR"], ["report", "DIR", "--no-images"], ["compare", "DIR", "DIR"],
           ["paint", "--run", "DIR"], ["ace", "--gen", "toy", "--seg", "toy", "--samples", "4", "--concept", "tree",
                                       "--run", "DIR", "--random-draws", "1", "--top", "2"],
           ["run", "--gen", "toy", "--seg", "toy", "--samples", "4", "--out", "DIR", "--resume"]]


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_run_folders_give_one_line(how: str, finished_run: Path, tmp_path: Path) -> None:
    folder = _damage(finished_run, tmp_path / "damaged", how)
    for reader in READERS:
        args = [str(folder) if a == "DIR" else a for a in reader]
        r = _invoke(args, tmp_path)
        assert_one_line(r, args)
        assert r.exit_code != 0 or reader[0] == "run", (how, args, r.output[-500:])


# -- full and read-only disks (simulated) -----------------------------------------------------

@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"),
                                         (errno.EACCES, "permission denied")])
def test_a_disk_that_refuses_writes_gives_one_line(code: int, words: str, finished_run: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import tempfile

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code), str(kwargs.get("dir", "?")))

    def refuse_path(self: Path, *args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code), str(self))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    for method in ("write_text", "write_bytes"):
        monkeypatch.setattr(Path, method, refuse_path)
    for args in (["run", "--gen", "toy", "--seg", "toy", "--samples", "4", "--quiet", "--out", str(tmp_path / "new")],
                 ["report", str(finished_run), "--no-images", "--out", str(tmp_path / "report")]):
        r = _invoke(args, tmp_path)
        assert_one_line(r, args)
        assert r.exit_code == 1 and words in r.output, r.output[-800:]
    monkeypatch.undo()
    # the refused run left the folder resumable or empty, never half-finished
    r = _invoke(["run", "--gen", "toy", "--seg", "toy", "--samples", "4", "--quiet", "--out", str(tmp_path / "new"),
                 "--resume"], tmp_path)
    assert r.exit_code == 0, r.output


def test_a_bug_is_one_line_that_says_how_to_see_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from gdx.cli.options import DEBUG_ENV, friendly_errors

    @friendly_errors
    def broken() -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(click.ClickException) as info:
        broken()
    assert "bug in gdx" in info.value.message and f"{DEBUG_ENV}=1" in info.value.message
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ZeroDivisionError):
        broken()


def test_os_errors_name_the_file_and_the_fix() -> None:
    from gdx.cli.options import error_line

    line = error_line(OSError(errno.ENAMETOOLONG, "File name too long", "/tmp/" + "x" * 5000))
    assert "too long" in line and "5005 characters" in line and len(line) < 300
    assert "disk is full" in error_line(OSError(errno.ENOSPC, "No space left on device", "/data/run/x.tmp"))
