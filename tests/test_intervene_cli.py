"""gdx ace / locate / repair / removal-table / optimize on the toy pair (files written, errors readable)."""

from __future__ import annotations

import json

import click
import pytest
import torch
from click.testing import CliRunner

from gdx.cli import intervene as intervene_commands

TOY = ["--gen", "toy", "--seg", "toy", "--layer", "features"]


@pytest.fixture
def cli():
    """A bare group holding only what the module's register_commands hook adds."""
    group = click.Group("gdx")
    intervene_commands.register_commands(cli=group)
    return group


def test_commands_are_named(cli):
    assert set(cli.commands) == {"ace", "optimize", "locate", "repair", "removal-table"}


def test_ace_writes_effect_curve_and_grid(cli, tmp_path):
    out = tmp_path / "ace"
    res = CliRunner().invoke(cli, ["ace", *TOY, "--concept", "sun", "--units", "0,4", "--samples", "24",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "removed" in res.output
    effect = json.loads((out / "effect.json").read_text())
    assert effect["kind"] == "causal_effect" and effect["removed"] > 0.9  # toy units 0 and 4 paint the sun
    curve = json.loads((out / "curve.json").read_text())
    assert curve["n"] == [1, 2]
    for png in ("curve.png", "before_after.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_ace_with_iou_ranking_from_a_run(cli, tmp_path):
    import gdx

    run = tmp_path / "run"
    gen, seg = gdx.load_generator("toy"), gdx.load_segmenter("toy")
    gdx.dissect(gen, seg, "features", samples=40).save(run / "features")
    out = tmp_path / "ace"
    res = CliRunner().invoke(cli, ["ace", *TOY, "--concept", "tree", "--run", str(run), "--top", "2",
                                   "--samples", "24", "--no-curve", "--out", str(out)])
    assert res.exit_code == 0, res.output
    effect = json.loads((out / "effect.json").read_text())
    assert sorted(effect["units"]) == [1, 5]  # the toy's tree units


def test_locate_writes_map(cli, tmp_path):
    out = tmp_path / "loc"
    res = CliRunner().invoke(cli, ["locate", *TOY, "--concept", "lake", "--units", "3,7", "--samples", "40",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "location_0.json").read_text())
    assert torch.tensor(data["gain"]).shape == (8, 8)
    assert (out / "location_0.png").exists()


def test_repair_with_real_tensor(cli, tmp_path):
    import gdx

    gen = gdx.load_generator("toy")
    real = gen.generate(gen.sample_latents(16, seed=9))
    torch.save(real, tmp_path / "real.pt")
    res = CliRunner().invoke(cli, ["repair", *TOY, "--real", str(tmp_path / "real.pt"), "--samples", "8",
                                   "--held-out", "8", "--top", "2", "--out", str(tmp_path / "rep")])
    # the toy segmenter has no network: the segmenter feature space is refused with a readable error
    assert res.exit_code != 0 and "nn.Module" in res.output


def test_optimize_explains_missing_probabilities(cli, tmp_path):
    res = CliRunner().invoke(cli, ["optimize", *TOY, "--concept", "sun", "--samples", "8", "--epochs", "1",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "segment_logits" in res.output


def test_removal_table_by_iou(cli, tmp_path):
    import gdx

    run = tmp_path / "run"
    gdx.dissect(gdx.load_generator("toy"), gdx.load_segmenter("toy"), "features", samples=40).save(run / "features")
    out = tmp_path / "table"
    res = CliRunner().invoke(cli, ["removal-table", *TOY, "--concepts", "sun,tree", "--method", "iou", "--top", "2",
                                   "--run", str(run), "--samples", "30", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "removal_table.json").read_text())["rows"]
    assert [r["concept"] for r in rows] == ["sun", "tree"]
    assert rows[1]["removed"] > 0.9
    assert "| tree |" in (out / "removal_table.md").read_text()


def test_scene_removal_benchmark_script_runs_on_the_toy(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "scene_removal.py"
    spec = importlib.util.spec_from_file_location("scene_removal", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bench"
    module.main(["--gen", "toy", "--seg", "toy", "--layer", "features", "--method", "iou", "--top", "2",
                 "--concepts", "sun,lake", "--samples", "30", "--out", str(out)])
    rows = json.loads((out / "removal_table.json").read_text())["rows"]
    assert rows[0]["concept"] == "sun" and rows[0]["removed"] > 0.9
    assert (out / "removal_table.md").exists() and (out / "command.json").exists()


def test_repair_finds_the_blotch_unit_from_the_command_line(cli, tmp_path, monkeypatch):
    import types

    from torch import nn

    import gdx
    import gdx.manager
    from intervene_worlds import artifact_generator, clean_images

    class BlobSegmenter(nn.Module):
        """Labels by the brightest channel; its 'encoder' is a 2x2 colour pooling."""

        def __init__(self):
            super().__init__()
            self.encoder = nn.AdaptiveAvgPool2d(2)

        def forward(self, images):
            self.encoder(images)
            return images.argmax(1)

    @gdx.hookimpl
    def register_generators(register):
        register("artifact", artifact_generator)

    @gdx.hookimpl
    def register_segmenters(register):
        register("rgb", lambda: gdx.wrap_segmenter(BlobSegmenter(), labels=["r", "g", "b"]))

    plugin = types.SimpleNamespace(register_generators=register_generators, register_segmenters=register_segmenters)
    monkeypatch.setattr(gdx.manager, "_default", gdx.PluginRegistry([plugin], load_entrypoints=False))
    torch.save(clean_images(300, seed=7), tmp_path / "real.pt")
    out = tmp_path / "rep"
    res = CliRunner().invoke(cli, ["repair", "--gen", "artifact", "--seg", "rgb", "--layer", "features",
                                   "--real", str(tmp_path / "real.pt"), "--samples", "80", "--held-out", "80",
                                   "--top", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "repair.json").read_text())
    assert rep["units"] == [4] and rep["confirmed"]
    assert "(confirmed)" in res.output and (out / "before_after.png").exists()
