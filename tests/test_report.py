"""The dissection report and the comparison page (files, content, CLI)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

import gdx
from gdx.errors import GdxError, ResultFormatError
from gdx.plots import to_uint8
from gdx.report import find_causal_results, write_compare, write_report
from gdx.report.samples import highlight
from gdx.cli.report import compare, report
from gdx.results import Dissection
from gdx.tracing import Trace
from gdx_browser import make_run


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"), "toy", "toy", "features", samples=120, seed=3)


@pytest.fixture(scope="module")
def toy_report(toy_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return write_report(toy_run, out, top_k=5)


def test_report_files_and_offline(toy_report):
    out = toy_report.parent
    text = toy_report.read_text()
    strips = sorted((out / "features").glob("unit_*.jpg"))
    assert len(strips) == 10  # one strip per unit of the toy layer
    assert text.count('loading="lazy"') == 10
    for name in ("index.html", "report.css", "report.js"):
        body = (out / name).read_text()
        # self-contained: nothing fetched from the network
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", body), name
        assert "@import" not in body and "url(http" not in body
    # every referenced file exists beside the page
    for ref in re.findall(r'(?:src|href)="([^"#][^"]*)"', text):
        if not ref.startswith("data:"):
            assert (out / ref).is_file(), ref
    assert "<svg" in text and "interpretable" in text


def test_strip_shows_top_samples_with_region_highlighted(toy_run, toy_report):
    d = Dissection.load(toy_run / "features")
    gen = gdx.load_generator("toy")
    unit, k, tile = 1, 5, 96  # 64 px images are shown enlarged to 96 px tiles
    strip = np.asarray(Image.open(toy_report.parent / "features" / "unit_0001.jpg").convert("RGB")).astype(float)
    assert strip.shape == (tile, k * (tile + 2) - 2, 3)
    z = gen.sample_latents(d.settings.samples, seed=d.settings.seed)[d.top_indices[unit, :k]]
    with Trace(gen.module, "features") as tr:
        images = gen.generate(z)
    maps = F.interpolate(tr["features"][:, unit : unit + 1], size=(tile, tile), mode="bilinear", align_corners=False)
    for i in range(k):
        region = (maps[i, 0] > d.thresholds[unit]).numpy()
        assert region.any(), "a top sample of the tree unit must show a region"
        expected = highlight(to_uint8(images[i], tile), region).astype(float)
        got = strip[:, i * (tile + 2) : i * (tile + 2) + tile]
        assert np.abs(got - expected).mean() < 6.0  # JPEG noise only
        # a different sample would not match
        other = highlight(to_uint8(images[(i + 1) % k], tile), region).astype(float)
        assert np.abs(got - other).mean() > np.abs(got - expected).mean()


def test_highlight_dims_outside_and_outlines():
    image = np.full((8, 8, 3), 200, np.uint8)
    region = np.zeros((8, 8), bool)
    region[2:6, 2:6] = True
    out = highlight(image, region)
    assert (out[0, 0] == 100).all()  # 200 * 0.3 + 40
    assert (out[3, 3] == 200).all()  # interior untouched
    assert tuple(out[2, 2]) == (255, 214, 0)  # border


def test_table_lists_every_unit_sorted_by_iou(toy_run, toy_report):
    d = Dissection.load(toy_run / "features")
    rows = re.findall(r'<tr class="(interp|weak)" data-unit="(\d+)"[^>]*>', toy_report.read_text())
    assert sorted(int(u) for _, u in rows) == list(range(d.units))
    ious = [next(x.iou for x in d.unit_labels if x.unit == int(u)) for _, u in rows]
    assert ious == sorted(ious, reverse=True)
    interp = {u.unit for u in d.interpretable()}
    assert {int(u) for c, u in rows if c == "interp"} == interp


def test_causal_results_appear(toy_run, tmp_path):
    gen, seg = gdx.load_generator("toy"), gdx.load_segmenter("toy")
    from gdx.causal import causal_effect, cumulative_effect

    curve = cumulative_effect(gen, seg, "features", [1, 5], "tree", n_max=2, samples=24)

    effect = causal_effect(gen, seg, "features", [1, 5], "tree", samples=24)
    curve.save(toy_run / "features" / "causal" / "tree_curve.json")
    effect.save(toy_run / "features" / "causal" / "tree_effect.json")
    (toy_run / "features" / "causal" / "notes.json").write_text(json.dumps({"kind": "something else"}))
    try:
        found = find_causal_results(toy_run)
        assert set(found) == {"features"}
        assert len(found["features"].curves) == 1 and len(found["features"].effects) == 1
        index = write_report(toy_run, tmp_path / "r", images=False)
        text = index.read_text()
        assert "Causal effects" in text and "tree: features/causal/tree_curve.json" in text
        assert f"{effect.ace:.3f}" in text and "<polyline" in text
    finally:
        import shutil

        shutil.rmtree(toy_run / "features" / "causal")


def test_compare_two_runs(toy_run, tmp_path):
    other = make_run(tmp_path / "b", "toy", "toy", "features", samples=60, seed=9)
    index = write_compare(toy_run / "features", other, tmp_path / "cmp")
    text = index.read_text()
    assert text.count('class="bar-chart"') == 2
    for concept in ("sun", "tree", "rock", "lake"):
        assert f"<td>{concept}</td>" in text
    assert (tmp_path / "cmp" / "report.js").is_file()
    with pytest.raises(ResultFormatError):
        write_compare(tmp_path, other, tmp_path / "cmp2")


def test_report_errors_name_the_fix(tmp_path):
    with pytest.raises(GdxError, match="run.json"):
        write_report(tmp_path)


def test_cli_report_and_compare(toy_run, tmp_path):
    runner = CliRunner()
    res = runner.invoke(report, [str(toy_run), "--out", str(tmp_path / "r"), "--top-k", "3"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "index.html").is_file()
    # Run in-process, the command must not switch autograd off for its host (it used to
    # call torch.set_grad_enabled(False), which broke a later optimize_units in the suite).
    assert torch.is_grad_enabled()
    bad = runner.invoke(report, [str(tmp_path / "r")])
    assert bad.exit_code == 1 and "run.json" in bad.output and "Traceback" not in bad.output
    res = runner.invoke(compare, [str(toy_run), str(toy_run / "features"), "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c" / "index.html").is_file()


def test_iqr_run_shows_iqr_column(tmp_path):
    gen, seg = gdx.load_generator("toy"), gdx.load_segmenter("toy")
    d = gdx.dissect(gen, seg, "features", samples=60, threshold="iqr", progress=False)
    d.save(tmp_path / "features")
    (tmp_path / "run.json").write_text(json.dumps({"generator": "toy", "segmenter": "toy", "layers": ["features"],
                                                   "samples": 60, "seed": 0, "threshold": "iqr"}))
    text = write_report(tmp_path, tmp_path / "r", images=False).read_text()
    assert ">IQR</th>" in text
    best = max(d.unit_labels, key=lambda u: u.iou)
    assert f"<td>{best.iqr:.3f}</td>" in text
