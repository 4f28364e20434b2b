"""The gdx command line: runs, listings, and one-line errors for bad input."""

from __future__ import annotations

import json

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


def test_listings():
    for cmd in ("plugins", "generators", "segmenters", "metrics"):
        r = invoke(cmd)
        assert r.exit_code == 0 and "toy" in r.output or "iou" in r.output
    r = invoke("generators", "toy")
    assert "layers: features, decoder" in r.output and "option resolution = 32" in r.output


def test_settings_are_validated_with_clear_errors(toy_pair):
    gen, seg = toy_pair
    with pytest.raises(gdx.GdxError, match="samples must be a positive integer"):
        gdx.dissect(gen, seg, "features", samples=0)
    with pytest.raises(gdx.GdxError, match="threshold must be a quantile"):
        gdx.dissect(gen, seg, "features", threshold=99)
