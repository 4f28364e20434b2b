"""A 512-unit layer with 20 samples per unit: the report is written, and opens fast (lazy images)."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import gdx
from gdx.report import write_report
from gdx.results import Dissection, DissectionSettings, UnitLabel, atomic_write_json
from gdx_browser import chromium_page

UNITS, SAMPLES, K = 512, 200, 20
LABELS = ["sun", "tree", "rock", "lake"]


class Wide(nn.Module):
    """z (16) -> 512 x 8 x 8 features -> 32 x 32 RGB: a generator with a paper-sized layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Linear(16, UNITS * 64), nn.Unflatten(1, (UNITS, 8, 8)))
        self.rgb = nn.Sequential(nn.Conv2d(UNITS, 3, 1), nn.Upsample(size=32, mode="bilinear"), nn.Tanh())

    def forward(self, z):
        return self.rgb(self.features(z))


def fake_run(folder):
    """A run folder whose numbers are arbitrary but well-formed (the report's scale is under test)."""
    g = torch.Generator().manual_seed(0)
    iou = torch.rand(UNITS, len(LABELS), generator=g) * 0.2
    best = iou.argmax(1)
    labels = [UnitLabel(u, LABELS[int(best[u])], float(iou[u, best[u]]), None, "object") for u in range(UNITS)]
    top = torch.stack([torch.randperm(SAMPLES, generator=g)[:K] for _ in range(UNITS)])
    d = Dissection(
        layer="features", labels=LABELS, categories={c: "object" for c in LABELS}, iou=iou,
        thresholds=torch.full((UNITS,), 0.5), unit_labels=labels, top_indices=top,
        top_values=torch.ones(UNITS, K),
        settings=DissectionSettings("wide", "toy", "features", SAMPLES, 0, 0.99, 32),
    )
    d.save(folder / "features")
    atomic_write_json(folder / "run.json", {"format": "gdx.run", "version": 1, "generator": "wide",
                                            "segmenter": "toy", "layers": ["features"], "samples": SAMPLES,
                                            "seed": 0, "threshold": 0.99})
    return folder


@pytest.mark.slow
@pytest.mark.browser
def test_large_report_opens_fast(tmp_path):
    run = fake_run(tmp_path / "run")
    gen = gdx.wrap_generator(Wide().eval(), latent_shape=(16,), name="wide")
    started = time.perf_counter()
    with torch.no_grad():
        index = write_report(run, tmp_path / "report", top_k=K, generator=gen)
    written = time.perf_counter() - started
    assert len(list((tmp_path / "report" / "features").glob("unit_*.jpg"))) == UNITS
    size = sum(p.stat().st_size for p in (tmp_path / "report").rglob("*") if p.is_file())
    assert size < 8e6, f"the 512-unit report takes {size / 1e6:.1f} MB (was 15 MB before tiles fit the window)"
    assert written < 120, f"writing the report took {written:.0f} s"
    with chromium_page(viewport=(1280, 900)) as (page, errors):
        t0 = time.perf_counter()
        page.goto(index.as_uri(), wait_until="load")
        load_s = time.perf_counter() - t0
        total = page.locator("img.strip").count()
        loaded = page.eval_on_selector_all("img.strip", "imgs => imgs.filter(i => i.complete && i.naturalWidth > 0).length")
        assert total == UNITS
        assert loaded < 150, f"{loaded} of {total} strips loaded before scrolling: lazy loading is not working"
        assert load_s < 10, f"the page took {load_s:.1f} s to load"
        page.uncheck("input.only-interp")  # show every row, then scroll to the last one
        page.eval_on_selector_all("img.strip", "imgs => imgs[imgs.length - 1].scrollIntoView()")
        page.wait_for_function("() => { const i = Array.from(document.images).pop(); return i.complete && i.naturalWidth > 0; }")
        assert errors == []
