"""The generator option ``ablate=``: a repaired generator is used everywhere a generator is named."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import gdx
from gdx.ablation import UnitAblation
from gdx.errors import AdapterOptionError
from gdx.intervention import intervene


def test_text_form_round_trips_and_merges_layers():
    a = UnitAblation.parse(" layer4:17,3 ; layer6:5;layer4:3 ")
    assert a.units == {"layer4": (3, 17), "layer6": (5,)}
    assert str(a) == "layer4:3,17;layer6:5"
    assert UnitAblation.parse(str(a)) == a


@pytest.mark.parametrize("text", ["layer4", "layer4:", ":3", "layer4:a,b", "layer4:-1", ";"])
def test_bad_text_names_the_form(text):
    with pytest.raises(AdapterOptionError, match="ablate=layer5:3,17"):
        UnitAblation.parse(text)


def test_load_generator_with_ablate_equals_the_intervention():
    plain = gdx.load_generator("toy")
    fixed = gdx.load_generator("toy", ablate="features:0,3")
    z = plain.sample_latents(6, seed=2)
    with torch.no_grad(), intervene(plain, "features", [0, 3], value=0.0):
        expected = plain.generate(z)
    with torch.no_grad():
        got = fixed.generate(z)
        untouched = plain.generate(z)
    assert torch.allclose(got, expected) and not torch.allclose(got, untouched)
    assert fixed.ablation == UnitAblation({"features": (0, 3)})


def test_a_unit_past_the_layer_width_is_named():
    gen = gdx.load_generator("toy", ablate="features:999")
    with pytest.raises(AdapterOptionError, match="unit 999 does not exist"):
        gen.generate(gen.sample_latents(1, seed=0))


def test_a_repair_json_is_read_and_a_file_without_the_field_refused(tmp_path):
    good = tmp_path / "repair.json"
    good.write_text(json.dumps({"kind": "artifact_repair", "ablate": "features:2"}))
    assert gdx.load_generator("toy", ablate=str(good)).ablation.units == {"features": (2,)}
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"units": [2]}))
    with pytest.raises(AdapterOptionError, match="no \"ablate\" field"):
        gdx.load_generator("toy", ablate=str(bad))


def test_other_adapters_still_refuse_unknown_options():
    with pytest.raises(AdapterOptionError, match="has no option 'ablate'"):
        gdx.load_segmenter("toy", ablate="features:1")


def test_gdx_run_keeps_the_option_and_a_reopened_run_applies_it(tmp_path):
    from gdx.cli import cli
    from gdx.runs import RunFolder

    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["run", "--gen", "toy", "--seg", "toy", "--gen-opt", "ablate=features:0",
                                 "--samples", "40", "--quiet", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["generator_options"] == {"ablate": "features:0"}
    gen = RunFolder(out).manifest().generator.build("generator")
    acts = gdx.Trace(gen.module, "features")
    with acts, torch.no_grad():
        gen.generate(gen.sample_latents(4, seed=0))
    assert float(acts["features"][:, 0].abs().max()) == 0.0 and float(acts["features"][:, 1].abs().max()) > 0
    d = gdx.Dissection.load(out / "features")
    assert all(ul.unit != 0 or ul.iou < 0.05 for ul in d.unit_labels)  # unit 0 (the sun) is dead


def test_gdx_paint_serves_the_repaired_generator(tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    from gdx.cli.paint import paint
    from gdx.runs import RunFolder

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app))
    monkeypatch.setenv("GDX_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(paint, ["--gen", "toy", "--seg", "toy", "--gen-opt", "ablate=features:0", "--samples", "40"])
    assert res.exit_code == 0, res.output
    (manifest,) = (tmp_path / "cache" / "paint").glob("*/run.json")
    gen = RunFolder(manifest.parent).manifest().generator.build("generator")
    assert gen.ablation.units == {"features": (0,)} and served
