"""The report's views: tile sizes, runner-up concepts, units per concept, side-effect names, the overlay."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import gdx
from gdx.plots import to_uint8
from gdx.report import write_report
from gdx.report.build import causal_section, runner_up_text, side_effect_text
from gdx.report.samples import STRIP_BUDGET, highlight, tint, tile_size
from gdx.report.svg import bar_chart, line_chart
from gdx.causal.saved import CausalResults
from gdx.results import Dissection
from gdx.sampling import concept_mask, segment_images
from gdx.tracing import Trace
from gdx_browser import make_run


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"), "toy", "toy", "features", samples=120, seed=3)


def test_tiles_enlarge_small_images_and_fit_the_window():
    assert tile_size((64, 64), None, 8) == 96  # the 64 px scene world is not stuck at 64 px
    assert tile_size((128, 128), None, 4) == 128
    for k in (8, 12, 20):
        t = tile_size((256, 256), None, k)
        assert k * (t + 2) - 2 <= STRIP_BUDGET < k * (t + 3) - 2 or t == 128
    assert tile_size((256, 256), None, 8) < 128  # eight 128 px tiles would overflow 1400 px
    assert tile_size((64, 64), 40, 8) == 40  # an explicit size is kept


def test_table_shows_runner_up_concepts_and_a_per_concept_view(toy_run, tmp_path):
    d = Dissection.load(toy_run / "features")
    text = write_report(toy_run, tmp_path / "r", images=False).read_text()
    for u in d.unit_labels:
        col = d.iou[u.unit].clone()
        col[d.labels.index(u.label)] = -1
        order = [j for j in torch.argsort(col, descending=True, stable=True).tolist() if col[j] > 0][:2]
        expected = ", ".join(f"{d.labels[j]} {float(col[j]):.3f}" for j in order)
        assert runner_up_text(d, u.unit, u.label) == expected
        row = re.search(rf'<tr class="\w+" data-unit="{u.unit}" id="features-unit-{u.unit}">(.*?)</tr>', text)
        assert row and f'<span class="also">{expected}</span>' in row.group(1)
    view = re.search(r'<table class="concepts">(.*?)</table>', text).group(1)
    for concept, n in d.summary().per_concept.items():
        cells = re.search(rf"<tr><td>{concept}</td><td>[^<]*</td><td>(\d+)</td><td>(.*?)</td>", view)
        assert cells and int(cells.group(1)) == n
        linked = [int(u) for u in re.findall(r'href="#features-unit-(\d+)"', cells.group(2))]
        assert sorted(linked) == sorted(u.unit for u in d.interpretable() if u.label == concept)
    for target in re.findall(r'href="#(features-unit-\d+)"', view):
        assert f'id="{target}"' in text  # every link lands on a row


def test_removal_table_names_the_side_effect_concept():
    row = {"concept": "tree", "removed": 0.4, "random_removed": 0.1, "side_effect": -0.12,
           "side_effects": {"grass": 0.05, "sky": -0.12, "road": 0.01}}
    assert side_effect_text(row) == "-0.12 (sky)"
    html = causal_section(CausalResults(tables=[{"top": 20, "method": "alpha", "rows": [row]}]))
    assert "<td>-0.12 (sky)</td>" in html and "side effect (concept)" in html
    assert side_effect_text({"concept": "tree", "side_effect": 0.0, "side_effects": {}}) == "0.00"


def test_chart_labels_have_room_and_curves_have_colour_keys():
    short = bar_chart({"sky": 3}, {"sky": "object"})
    long = bar_chart({"sky": 3, "washer": 2, "countertop": 1}, {"sky": "object", "washer": "object",
                                                               "countertop": "material"})
    height = lambda svg: int(re.search(r'height="(\d+)"', svg).group(1))  # noqa: E731
    width = lambda svg: int(re.search(r'width="(\d+)"', svg).group(1))  # noqa: E731
    assert height(long) > height(short) and width(long) > 36 + 3 * 22
    # the category title of the last group is kept inside the chart
    for x, name in re.findall(r'<text x="([\d.]+)" y="14" text-anchor="middle" class="cat"[^>]*>(\w+)<', long):
        assert float(x) + len(name) * 0.62 * 11 * 1.2 / 2 <= width(long)
    curve = line_chart([1, 2, 3], {"removed": [0.1, 0.2, 0.3], "added": [0.0, 0.1, 0.1]}, title="t")
    keys = re.findall(r'<g class="legend-key"><line [^>]*stroke="(#[0-9a-f]+)"', curve)
    texts = re.findall(r'fill="(#[0-9a-f]+)" class="legend">(\w+)<', curve)
    assert len(keys) == 2 and [c for c, _ in texts] == keys and [n for _, n in texts] == ["removed", "added"]


def test_overlay_tints_where_the_segmenter_finds_the_units_label(toy_run, tmp_path):
    d = Dissection.load(toy_run / "features")
    index = write_report(toy_run, tmp_path / "r", top_k=2, overlay=True)
    assert "tinted blue" in index.read_text()
    gen, seg = gdx.load_generator("toy"), gdx.load_segmenter("toy")
    unit, k, t = 1, 2, 96
    strip = np.asarray(Image.open(index.parent / "features" / "unit_0001.jpg").convert("RGB")).astype(float)
    z = gen.sample_latents(d.settings.samples, seed=d.settings.seed)[d.top_indices[unit, :k]]
    with torch.no_grad(), Trace(gen.module, "features") as tr:
        images = gen.generate(z)
    labels = segment_images(seg, images)
    maps = F.interpolate(tr["features"][:, unit : unit + 1], size=(t, t), mode="bilinear", align_corners=False)
    idx = d.labels.index(d.unit_labels[unit].label)
    for i in range(k):
        region = (maps[i, 0] > d.thresholds[unit]).numpy()
        mask = F.interpolate(concept_mask(labels[i : i + 1], idx).float()[:, None], size=(t, t), mode="nearest")[0, 0] > 0.5
        assert mask.any(), "the toy's tree unit fires on samples that hold trees"
        image = to_uint8(images[i], t)
        got = strip[:, i * (t + 2) : i * (t + 2) + t]
        expected = highlight(tint(image, mask.numpy()), region).astype(float)
        plain = highlight(image, region).astype(float)
        assert np.abs(got - expected).mean() < 6.0
        m = mask.numpy()  # on the concept's pixels the tint is plain to see
        assert np.abs(got - plain)[m].mean() > 1.5 * np.abs(got - expected)[m].mean()
