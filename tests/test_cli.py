"""The gdx command line: runs, listings, and one-line errors for bad input."""

from __future__ import annotations

import json

import click
import pytest
import torch
from click.testing import CliRunner

import gdx
from gdx.cli import cli
from gdx.plugins.toy_world import TOY_LABELS, toy_segment


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_run_writes_results_and_prints_table(tmp_path):
    out = tmp_path / "run"
    r = invoke("run", "--gen", "toy", "--seg", "toy", "--samples", "60", "--quiet", "--out", str(out),
               "--threshold", "0.9")
    assert r.exit_code == 0, r.output
    assert "interpretable units" in r.output and "sun" in r.output
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["layers"] == ["features"] and manifest["samples"] == 60
    d = gdx.Dissection.load(out / "features")
    assert d.units == 10 and d.settings.threshold == 0.9
    assert invoke("show", str(out)).exit_code == 0


def test_run_with_report(tmp_path):
    r = invoke("run", "--gen", "toy", "--seg", "toy", "--samples", "20", "--quiet", "--out", str(tmp_path), "--report")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "report" / "index.html").exists()


def test_run_iqr_and_several_layers(tmp_path):
    r = invoke("run", "--gen", "toy", "--seg", "toy", "--samples", "30", "--quiet", "--out", str(tmp_path), "--threshold", "iqr",
               "--layer", "features", "--layer", "decoder")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "decoder" / "dissection.json").exists() and "IQR" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gen", "nope"], "unknown generator 'nope'"),
        (["--seg", "tyo"], "Did you mean 'toy'"),
        (["--layer", "featurs"], "Close matches: features"),
        (["--gen-opt", "colour=red"], "has no option 'colour'"),
        (["--gen-opt", "resolution"], "is not key=value"),
        (["--threshold", "1.5"], "strictly between 0 and 1"),
        (["--threshold", "high"], "neither a quantile"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    base = ["run", "--samples", "5", "--quiet", "--out", str(tmp_path)]
    if "--gen" not in args:
        base += ["--gen", "toy"]
    if "--seg" not in args:
        base += ["--seg", "toy"]
    r = CliRunner().invoke(cli, [*base, *args])
    assert r.exit_code != 0
    assert message in r.output
    assert "Traceback" not in r.output


def bad_segmenter(kind):
    def segment(images):
        lab = toy_segment(images)
        if kind == "float":
            return lab.float()
        if kind == "range":
            return lab + 7
        if kind == "shape":
            return lab[:1]
        return lab

    return gdx.wrap_segmenter(segment, labels=TOY_LABELS, name=f"bad-{kind}")


@pytest.mark.parametrize("kind, message", [("float", "integer label indices"), ("range", "outside -1..3"),
                                           ("shape", "expected")])
def test_segmenter_contract_violations_are_named(toy_pair, kind, message):
    gen, _ = toy_pair
    with pytest.raises(gdx.SegmenterOutputError, match=message):
        gdx.dissect(gen, bad_segmenter(kind), "features", samples=4, progress=False)


def test_nan_activations_name_layer_batch_and_samples(toy_pair):
    gen, seg = toy_pair

    class NaNGen(gdx.Generator):
        name = "nan"
        module = gen.module
        default_layer = "features"

        def sample_latents(self, n, *, seed):
            z = gen.sample_latents(n, seed=seed)
            z[5] = float("nan")
            return z

        def generate(self, z):
            return gen.generate(z)

    with pytest.raises(gdx.NonFiniteError, match=r"layer 'features'.*batch 1, samples 5"):
        gdx.dissect(NaNGen(), seg, "features", samples=8, batch_size=4, progress=False)


def test_cli_reports_contract_violation_without_traceback(tmp_path):
    import types

    def register_segmenters(register):
        register("badseg", lambda: bad_segmenter("float"))

    mod = types.ModuleType("badseg_plugin")
    mod.register_segmenters = gdx.hookimpl(register_segmenters)
    gdx.default_registry().pm.register(mod)
    gdx.default_registry()._infos = None
    r = CliRunner().invoke(cli, ["run", "--gen", "toy", "--seg", "badseg", "--samples", "4", "--quiet", "--out", str(tmp_path)])
    assert r.exit_code == 1 and "integer label indices" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run.json").exists()


@pytest.mark.parametrize("cmd, expected", [
    ("plugins", "gdx.plugins.generators.toy"),
    ("generators", "scene-vae"),
    ("segmenters", "upernet"),
    ("metrics", "frechet"),
])
def test_listings(cmd, expected):
    r = invoke(cmd)
    assert r.exit_code == 0, r.output
    assert expected in r.output
    assert r.output.splitlines()[0].split()[0] in ("name", "plugin")  # a table with its header


def test_listing_details():
    r = invoke("generators", "toy")
    assert "option resolution (int, default 32): image size in pixels" in r.output
    rows = {line.split()[0]: line for line in r.output.splitlines()[2:] if line.strip()}
    # one probe gives each layer's units x h x w; the default layer is marked
    assert "10 units x 8x8" in rows["features"] and "default (gdx run)" in rows["features"]
    assert "3 units x 32x32" in rows["decoder"] and "default" not in rows["decoder"]


def test_listing_prints_the_passed_option_value_not_the_default():
    r = invoke("generators", "toy", "--gen-opt", "resolution=48")
    assert r.exit_code == 0, r.output
    assert "resolution (int, default 32) = 48 (passed)" in r.output and "3 units x 48x48" in r.output


def test_scene_listing_marks_the_run_and_the_paint_layer():
    if "scene" not in gdx.default_registry().infos("generator"):
        pytest.skip("no bundled scene GAN")
    r = invoke("generators", "scene")
    rows = {line.split()[0]: line for line in r.output.splitlines() if line.strip() and not line.startswith(" ")}
    assert "128 units x 16x16" in rows["layer5"] and "default (gdx run)" in rows["layer5"]
    assert "paint default (gdx paint)" in rows["layer6"]


@pytest.mark.parametrize("kind", ["generator", "segmenter", "metric"])
def test_every_builtin_option_has_a_type_and_a_description(kind):
    """`gdx generators -v` & co. explain each option: a type from the signature, a line from the docstring."""
    reg = gdx.default_registry()
    for name, info in reg.infos(kind).items():
        if not info.plugin.startswith("gdx."):
            continue
        for doc in info.option_docs():
            assert doc.type and doc.type != "any", (name, doc)
            assert doc.description and "\n" not in doc.description, (name, doc.name)


def test_verbose_listing_shows_descriptions():
    r = invoke("segmenters", "-v")
    assert r.exit_code == 0, r.output
    assert "  labels (str | None, default None): a labels file (default: ADE20K-150 for 150 classes)" in r.output


def test_option_descriptions_read_args_sections_inline_rest_and_plain_lines():
    from gdx.manager import option_descriptions

    google = """Build it.

    Args:
        weights (str): the file
            to load
        device: where to run
    """
    import inspect

    assert option_descriptions(inspect.cleandoc(google), ["weights", "device"]) == {
        "weights": "the file to load", "device": "where to run"}
    rest = "A model. ``model``: the .onnx file; ``mean``/``std``: normalisation. More text. ``bgr`` (feed BGR)"
    assert option_descriptions(rest, ["model", "mean", "std", "bgr", "other"]) == {
        "model": "the .onnx file", "mean": "normalisation", "std": "normalisation", "bgr": "feed BGR"}
    assert option_descriptions("size: pixels per side", ["size"]) == {"size": "pixels per side"}


def test_settings_are_validated_with_clear_errors(toy_pair):
    gen, seg = toy_pair
    with pytest.raises(gdx.GdxError, match="samples must be a positive integer"):
        gdx.dissect(gen, seg, "features", samples=0)
    with pytest.raises(gdx.GdxError, match="threshold must be a quantile"):
        gdx.dissect(gen, seg, "features", threshold=99)


def test_commands_are_loaded_lazily_through_the_hook():
    """The group starts empty; its first use registers the built-in command plugins."""
    from gdx.cli.main import BUILTIN_COMMAND_PLUGINS, GdxGroup

    group = GdxGroup("gdx")
    assert group.commands == {}
    names = group.list_commands(click.Context(group))
    assert {"run", "show", "ace", "report", "compare", "paint", "generators"} <= set(names)
    registry = gdx.default_registry()
    for modname in BUILTIN_COMMAND_PLUGINS:
        plugin = registry.pm.get_plugin(modname)
        assert plugin is not None and "register_commands" in {h.name for h in registry.pm.get_hookcallers(plugin)}


def test_importing_the_cli_loads_no_command_module():
    import subprocess
    import sys

    code = ("import sys, gdx.cli; mods = [m for m in sys.modules if m.startswith('gdx.cli.') and m != 'gdx.cli.main'];"
            " print(mods); assert not mods, mods")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_speaks_flags_where_the_library_speaks_parameters(tmp_path):
    from gdx.cli.options import cli_message

    assert cli_message("pass `resume=True` to continue it, or `overwrite=True` to start again.") == (
        "pass --resume to continue it, or --overwrite to start again.")
    assert cli_message("needs the generator option(s) `weights=...`") == "needs --gen-opt weights=..."
    assert cli_message("use the segmenter `upernet`.") == "use --seg upernet."
    out = tmp_path / "run"
    assert invoke("run", "--gen", "toy", "--seg", "toy", "--samples", "8", "--quiet", "--out", str(out)).exit_code == 0
    again = CliRunner().invoke(cli, ["run", "--gen", "toy", "--seg", "toy", "--samples", "8", "--quiet", "--out", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output and "overwrite=True" not in again.output


def test_run_prints_per_concept_counts_and_the_next_commands(tmp_path):
    out = tmp_path / "my run"
    r = CliRunner().invoke(cli, ["run", "--gen", "toy", "--seg", "toy", "--samples", "40", "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    d = gdx.Dissection.load(out / "features")
    counts = d.summary().per_concept
    assert counts, "the toy world has interpretable units"
    line = next(x for x in r.output.splitlines() if x.startswith("per concept: "))
    assert line == "per concept: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    import shlex

    assert f"gdx report {shlex.quote(str(out))}" in r.output and f"gdx paint --run {shlex.quote(str(out))}" in r.output
    shown = invoke("show", str(out))
    assert line in shown.output  # `gdx show` prints the same counts
