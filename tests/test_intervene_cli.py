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
    from benchmark_scripts import load_benchmark

    module = load_benchmark("scene_removal")
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


def _toy_run(tmp_path):
    import gdx

    run = tmp_path / "run"
    gen, seg = gdx.load_generator("toy"), gdx.load_segmenter("toy")
    gdx.dissect(gen, seg, "features", samples=40).save(run / "features")
    return run


def test_ace_leads_with_the_alpha_ranking_saved_in_the_run_and_names_it(cli, tmp_path):
    from gdx.causal import UnitRanking

    run = _toy_run(tmp_path)
    # a saved alpha ranking that disagrees with IoU (IoU puts 1 and 5 first): ace must use it
    scores = torch.zeros(10)
    scores[5], scores[8] = 0.9, 0.8
    UnitRanking(layer="features", concept="tree", method="alpha", scores=scores).save(run / "optimize-tree" / "ranking.json")
    out = tmp_path / "ace"
    res = CliRunner().invoke(cli, ["ace", *TOY, "--concept", "tree", "--run", str(run), "--top", "2",
                                   "--samples", "24", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "by alpha ranking saved in" in res.output
    summary = json.loads((out / "ace.json").read_text())
    assert summary["units"] == [5, 8] and summary["ranking"].startswith("alpha")
    assert json.loads((out / "effect.json").read_text())["units"] == [5, 8]


def test_ace_reports_a_random_control_over_draws_with_its_spread(cli, tmp_path):
    run = _toy_run(tmp_path)
    out = tmp_path / "ace"
    res = CliRunner().invoke(cli, ["ace", *TOY, "--concept", "tree", "--run", str(run), "--top", "2",
                                   "--samples", "24", "--random-draws", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "by IoU ranking of" in res.output and "the IoU ranking is correlational" in res.output
    summary = json.loads((out / "ace.json").read_text())
    ctl = summary["random_control"]
    assert len(ctl["draws"]) == 4 and len({tuple(d) for d in ctl["draws"]}) > 1  # independent draws
    assert abs(ctl["mean"] - sum(ctl["removed"]) / 4) < 1e-9 and ctl["sd"] >= 0
    assert f"removed mean {ctl['mean']:.3f} ± {ctl['sd']:.3f} sd" in res.output
    assert summary["removed"] > ctl["mean"]  # the toy's tree units remove tree; random pairs mostly do not
    assert "the ranked units are above it" in res.output


def test_ace_default_curve_is_a_few_cheap_points(cli, tmp_path):
    out = tmp_path / "ace"
    res = CliRunner().invoke(cli, ["ace", *TOY, "--concept", "sun", "--units", "0,4,9,8,3,7", "--samples", "24",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    curve = json.loads((out / "curve.json").read_text())
    assert curve["n"] == [1, 2, 5, 6] and curve["ace"] is None  # 1, 2, 5 of the defaults, and --top's 6
    assert curve["removed"][-1] == json.loads((out / "effect.json").read_text())["removed"]
    res = CliRunner().invoke(cli, ["ace", *TOY, "--concept", "sun", "--units", "0,4,9", "--samples", "24",
                                   "--curve-points", "all", "--out", str(out)])
    assert res.exit_code == 0, res.output
    curve = json.loads((out / "curve.json").read_text())
    assert curve["n"] == [1, 2, 3] and curve["ace"] is not None
    res = CliRunner().invoke(cli, ["ace", *TOY, "--concept", "sun", "--units", "0,4", "--curve-points", "x"])
    assert res.exit_code != 0 and "--curve-points" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_ace_with_defaults_on_the_bundled_world_beats_its_random_control(tmp_path, monkeypatch):
    """`gdx ace --concept tree` and nothing else: a cached quick dissection gives the IoU ranking
    (named in the output), the top-20 units remove more tree than random units do on average,
    and the control's spread over its draws is printed."""
    import gdx
    from gdx.cli import cli as gdx_cli

    if "scene" not in gdx.default_registry().infos("generator"):
        pytest.skip("no bundled scene world")
    monkeypatch.setenv("GDX_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ace"
    res = CliRunner().invoke(gdx_cli, ["ace", "--concept", "tree", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "20 units by IoU ranking of a quick 300-sample dissection" in res.output
    summary = json.loads((out / "ace.json").read_text())
    ctl = summary["random_control"]
    assert len(ctl["removed"]) == 5 and f"± {ctl['sd']:.3f} sd" in res.output
    assert summary["removed"] > ctl["mean"], (summary["removed"], ctl)
    assert summary["curve"]["n"] == [1, 2, 5, 10, 20]
