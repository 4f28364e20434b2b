"""A run killed right after any write it makes (or at a random moment) loses nothing.

``GDX_KILL_AFTER_WRITE=k`` makes a gdx process SIGKILL itself right after its k-th
durable write (each file or folder renamed into place: checkpoints, result files,
run.json, the overwrite's swap). For a fresh run, a ``--resume`` and an ``--overwrite``
this test kills the run at every write point k in turn, then checks that:

* nothing mixed is ever loadable: the folder loads as the old run, the new run, or not
  at all (a clear gdx error), layer folder by layer folder too;
* after a killed overwrite the old result still loads and ``gdx show`` shows it (until
  the new run's run.json exists; from then on the new run is what loads);
* ``--resume`` then finishes with a result identical to an uninterrupted run, and no
  temp file or checkpoint is left behind.

Starting Python with torch costs seconds on a busy machine, so one helper process (this
file run as a script) imports gdx once and forks a child per run; the children are the
processes that are killed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ARGS = ["run", "--gen", "toy", "--seg", "toy", "--samples", "8", "--batch-size", "2",
        "--checkpoint-every", "1", "--seed", "0", "--quiet"]
OLD_ARGS = ["run", "--gen", "toy", "--seg", "toy", "--samples", "6", "--batch-size", "3",
            "--seed", "5", "--threshold", "0.9", "--quiet"]


def _cli(args: list[str], kill_after: int | None = None, kill_at_seconds: float | None = None) -> int:
    """Run ``gdx ARGS`` in a forked child; its exit code, or -signal when it was killed."""
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import gdx.results
            from gdx.cli.main import main

            gdx.results._writes_done = 0
            if kill_after is not None:
                os.environ[gdx.results.KILL_AFTER_WRITE_ENV] = str(kill_after)
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os._exit(code)
    if kill_at_seconds is not None:
        time.sleep(kill_at_seconds)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _fingerprint(folder: Path) -> Any:
    """What the finished run in ``folder`` says, minus its run id (tensors as bytes)."""
    from gdx.runs import RunFolder

    out = []
    for d in RunFolder(folder).dissections():
        tensors = {k: getattr(d, k).numpy().tobytes().hex() for k in ("iou", "thresholds", "top_indices", "top_values")}
        out.append([d.layer, d.labels, [u.__dict__ for u in d.unit_labels], tensors, d.settings.__dict__])
    return json.loads(json.dumps(out, default=str))


def _loaded(folder: Path, refs: dict[str, Any]) -> str | None:
    """Which reference the folder loads as (None: it does not load); anything else fails."""
    from gdx.errors import GdxError
    from gdx.results import Dissection

    for layer_dir in [p for p in folder.iterdir() if (p / "dissection.json").exists()]:
        try:  # a layer folder read on its own is never a mix of two runs
            d = Dissection.load(layer_dir)
        except GdxError:
            continue
        ious = {name: ref[0][3]["iou"] for name, ref in refs.items()}
        assert d.iou.numpy().tobytes().hex() in ious.values(), f"{layer_dir} loads as neither run"
    try:
        got = _fingerprint(folder)
    except GdxError:
        return None
    names = [name for name, ref in refs.items() if ref == got]
    assert names, f"{folder} loads as a result that is neither the old nor the new run"
    return names[0]


def _clean(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name in ("checkpoint", ".gdx-next", ".gdx-old")]
    assert not left, f"left behind in {folder}: {left}"


def _show(folder: Path) -> str:
    from click.testing import CliRunner

    from gdx.cli.main import cli

    result = CliRunner().invoke(cli, ["show", str(folder)])
    assert result.exit_code == 0, result.output
    return result.output


def drive(root: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    report: dict[str, Any] = {"fresh": 0, "fresh_no_cache": 0, "resume": 0, "overwrite": 0, "random": 0}
    ref_dir = root / "reference"
    assert _cli([*ARGS, "--out", str(ref_dir)]) == 0
    new_ref = _fingerprint(ref_dir)
    old_dir = root / "old"
    assert _cli([*OLD_ARGS, "--out", str(old_dir)]) == 0
    old_ref = _fingerprint(old_dir)
    old_show = _show(old_dir)
    refs = {"new": new_ref, "old": old_ref}

    def finish(out: Path, resume_args: list[str]) -> None:
        if _loaded(out, refs) != "new":
            code = _cli([*ARGS, *resume_args, "--out", str(out)])
            assert code == 0, f"resume of {out} exited {code}"
        assert _loaded(out, refs) == "new", f"{out}: the resumed run differs from an uninterrupted one"
        _clean(out)

    # 1. a fresh run, killed after each of its writes, then resumed; with the activation
    #    cache (pass 2 replays, one checkpoint at its end) and without (a checkpoint a batch)
    for key, extra in (("fresh", []), ("fresh_no_cache", ["--cache-gb", "0"])):
        k = 1
        while True:
            out = root / f"{key}{k}"
            code = _cli([*ARGS, *extra, "--out", str(out)], kill_after=k)
            if code == 0:
                break
            assert code == -signal.SIGKILL, f"fresh run killed at write {k} exited {code}"
            assert _loaded(out, refs) in (None, "new")
            finish(out, ["--resume"])
            report[key] += 1
            k += 1
    # 2. a resume killed after each of its writes (the first run was killed at write 3)
    k = 1
    while True:
        out = root / f"resume{k}"
        assert _cli([*ARGS, "--out", str(out)], kill_after=3) == -signal.SIGKILL
        code = _cli([*ARGS, "--resume", "--out", str(out)], kill_after=k)
        if code == 0:
            assert _loaded(out, refs) == "new"
            break
        assert code == -signal.SIGKILL
        assert _loaded(out, refs) in (None, "new")
        finish(out, ["--resume"])
        report["resume"] += 1
        k += 1
    # 3. an overwrite of a finished run, killed after each of its writes
    k = 1
    while True:
        out = root / f"overwrite{k}"
        shutil.copytree(old_dir, out)
        code = _cli([*ARGS, "--overwrite", "--out", str(out)], kill_after=k)
        if code == 0:
            assert _loaded(out, refs) == "new"
            break
        assert code == -signal.SIGKILL
        staged = out / ".gdx-next"
        # the commit point: the new run.json exists (in the staging folder, or moved into place)
        committed = (staged / "run.json").exists() or not staged.exists() or (out / ".gdx-old").exists()
        state = _loaded(out, refs)
        assert state == ("new" if committed else "old"), f"overwrite killed at write {k} loads as {state}"
        if state == "old":
            assert _show(out) == old_show
        finish(out, ["--resume"])
        report["overwrite"] += 1
        k += 1
    # 4. kills at random moments of a fresh run (seeded), then a resume
    rng = random.Random(0)
    started = time.monotonic()
    assert _cli([*ARGS, "--out", str(root / "timing")]) == 0
    took = time.monotonic() - started
    for i in range(6):
        out = root / f"random{i}"
        _cli([*ARGS, "--out", str(out)], kill_at_seconds=rng.uniform(0.0, took))
        assert _loaded(out, refs) in (None, "new")
        finish(out, ["--resume"])
        report["random"] += 1
    return report


@pytest.mark.slow
def test_every_write_point_of_a_run_survives_a_kill(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # every write point was hit: the checkpoints of both passes, the result files, run.json, the swap
    assert report["fresh_no_cache"] >= 12, report
    assert report["fresh"] >= 8, report  # pass 1's checkpoints, pass 2's last one, the results, run.json
    assert report["resume"] >= 8, report
    assert report["overwrite"] > report["fresh"], report
    assert report["random"] == 6


if __name__ == "__main__":
    print(json.dumps(drive(Path(sys.argv[1]))))
