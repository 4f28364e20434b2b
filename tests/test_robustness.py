"""Robustness: one writer per run folder, results that cannot be mixed, files that keep the umask."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import gdx
from gdx.cli.main import cli
from gdx.runs import RunFolder

TOY = ["run", "--gen", "toy", "--seg", "toy", "--quiet", "--batch-size", "4"]


def _holder(lock: Path, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            text = lock.read_text().strip()
            if text:
                return int(text)
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError("the first run never took the folder's lock")


@pytest.mark.slow
def test_a_second_writer_stops_at_once_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "gdx.cli", *TOY, "--samples", "600", "--seed", "0",
                              "--checkpoint-every", "1", "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        pid = _holder(out / ".gdx.lock", first)
        assert pid == first.pid
        for extra in (["--seed", "1"], ["--seed", "0", "--resume"], ["--seed", "0", "--overwrite"]):
            started = time.monotonic()
            r = CliRunner().invoke(cli, [*TOY, "--samples", "600", *extra, "--out", str(out)])
            assert r.exit_code == 1, r.output
            assert f"gdx process {pid}" in r.output and "Traceback" not in r.output
            assert len(r.output.strip().splitlines()) == 1, r.output
            assert time.monotonic() - started < 5.0  # at once: before building any model
        assert first.wait(timeout=300) == 0, first.stderr.read().decode() if first.stderr else ""
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    d = RunFolder(out).dissection()
    assert d.settings.seed == 0 and d.settings.samples == 600
    assert not list(out.rglob("*.tmp")) and not (out / "checkpoint").exists()


def test_the_lock_is_released_on_exit_and_an_error(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, [*TOY, "--samples", "8", "--out", str(out)]).exit_code == 0
    again = CliRunner().invoke(cli, [*TOY, "--samples", "8", "--out", str(out)])
    assert again.exit_code == 1 and "already holds a finished run" in again.output  # not "locked"
    assert CliRunner().invoke(cli, [*TOY, "--samples", "8", "--out", str(out), "--overwrite"]).exit_code == 0


def test_a_mixed_result_pair_is_refused(tmp_path: Path) -> None:
    gen, seg = gdx.load_generator("toy"), gdx.load_segmenter("toy")
    a = gdx.dissect(gen, seg, "features", samples=8, seed=0, progress=False)
    b = gdx.dissect(gen, seg, "features", samples=8, seed=1, progress=False)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    os.replace(tmp_path / "b" / "dissection.safetensors", tmp_path / "a" / "dissection.safetensors")
    with pytest.raises(gdx.ResultFormatError, match="different runs"):
        gdx.Dissection.load(tmp_path / "a")


def test_a_layer_from_another_run_than_run_json_is_refused(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, seed in ((one, "0"), (two, "1")):
        assert CliRunner().invoke(cli, [*TOY, "--samples", "8", "--seed", seed, "--out", str(folder)]).exit_code == 0
    os.replace(two / "features", one / "features.new")
    os.rename(one / "features", one / "features.old")
    os.rename(one / "features.new", one / "features")
    with pytest.raises(gdx.ResultFormatError, match="another run"):
        RunFolder(one).dissections()
    r = CliRunner().invoke(cli, ["show", str(one)])
    assert r.exit_code == 1 and "another run" in r.output


def test_result_files_respect_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert CliRunner().invoke(cli, [*TOY, "--samples", "8", "--out", str(tmp_path / "r")]).exit_code == 0
    finally:
        os.umask(old)
    for name in ("run.json", "features/dissection.json", "features/dissection.safetensors"):
        assert (tmp_path / "r" / name).stat().st_mode & 0o777 == 0o644, name


def test_stale_temp_files_go_but_a_live_writers_stay(tmp_path: Path) -> None:
    from gdx.runlock import remove_stale_temps

    tmp_path.joinpath("checkpoint").mkdir()
    live = tmp_path / "checkpoint" / f".rank0.safetensors.{os.getppid()}.abc123.tmp"
    dead = tmp_path / "checkpoint" / ".rank0.safetensors.999999999.abc123.tmp"
    live.write_bytes(b"x")
    dead.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == 1
    assert live.exists() and not dead.exists()


def test_every_loader_failure_is_one_checkpoint_error(tmp_path: Path) -> None:
    import pickle

    import numpy as np
    import torch

    from gdx.checkpoints import load_torch_file
    from gdx.plugins.generators.safe_unpickle import load_stylegan_pickle

    class Huge:
        def __reduce__(self):  # a 1 TiB array: refused before any allocation
            return (np.ndarray.__new__, (np.ndarray, (1 << 40,), np.dtype("uint8")))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo never",))

    (tmp_path / "random.pkl").write_bytes(os.urandom(4096))
    (tmp_path / "huge.pkl").write_bytes(pickle.dumps({"G": Huge()}))
    (tmp_path / "random.pt").write_bytes(os.urandom(4096))
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    for name in ("random.pkl", "huge.pkl"):
        with pytest.raises(gdx.CheckpointError):
            load_stylegan_pickle(tmp_path / name)
    with pytest.raises(gdx.CheckpointError, match="not a torch checkpoint|cannot read") as info:
        load_torch_file(tmp_path / "random.pt", what="weights")
    assert "weights_only" not in str(info.value)
    with pytest.raises(gdx.CheckpointError, match="refused .* as unsafe") as info:
        load_torch_file(tmp_path / "evil.pt", what="weights")
    assert "weights_only=False" not in str(info.value) and "truncated" not in str(info.value)


def test_bad_adapter_output_is_refused_with_a_clear_error() -> None:
    import torch

    gen, seg = gdx.load_generator("toy"), gdx.load_segmenter("toy")

    class Bytes(gdx.Generator):  # images in 0..255 instead of [-1, 1]
        name, module = "bytes", gen.module

        def sample_latents(self, n, *, seed):
            return gen.sample_latents(n, seed=seed)

        def generate(self, z):
            return (gen.generate(z) + 1) * 127.5

    with pytest.raises(gdx.GeneratorOutputError, match=r"\[-1, 1\]"):
        gdx.dissect(Bytes(), seg, "features", samples=4, progress=False)
    for labels, words in (([], "no labels"), (["sky", "sky"], "more than once"), (["sky", 3], "not strings")):
        with pytest.raises(gdx.SegmenterOutputError, match=words):
            gdx.wrap_segmenter(lambda x: torch.zeros(len(x), 8, 8, dtype=torch.long), labels=labels)
    bools = gdx.wrap_segmenter(lambda x: torch.zeros(len(x), 8, 8, dtype=torch.bool), labels=["a", "b"])
    with pytest.raises(gdx.SegmenterOutputError, match="bool"):
        gdx.dissect(gen, bools, "features", samples=4, progress=False)
    calls = []

    def shifting(x):  # the label map's size changes after the first batch
        calls.append(1)
        return torch.zeros(len(x), 8 if len(calls) < 3 else 16, 8, dtype=torch.long)

    with pytest.raises(gdx.SegmenterOutputError, match="first batch"):
        gdx.dissect(gen, gdx.wrap_segmenter(shifting, labels=["a"]), "features", samples=12, batch_size=2, progress=False)


@pytest.mark.parametrize("kind", ["generator", "segmenter"])
@pytest.mark.parametrize("config", [b"\x00garbage", b"{}", b'{"sizes": "x", "labels": 5, "latent_shape": null}', b"[1, 2]"])
def test_a_damaged_scene_config_is_one_checkpoint_error(tmp_path: Path, kind: str, config: bytes) -> None:
    import shutil

    from gdx.plugins.generators import scene as gen_scene
    from gdx.plugins.segmenters import scene as seg_scene

    name = "scene_gan" if kind == "generator" else "scene_segmenter"
    weights_dir = (gen_scene if kind == "generator" else seg_scene).WEIGHTS_DIR
    shutil.copy(weights_dir / f"{name}.safetensors", tmp_path / f"{name}.safetensors")
    (tmp_path / f"{name}.json").write_bytes(config)
    load = gdx.load_generator if kind == "generator" else gdx.load_segmenter
    with pytest.raises(gdx.CheckpointError, match="config"):
        load("scene", weights=str(tmp_path / f"{name}.safetensors"))
