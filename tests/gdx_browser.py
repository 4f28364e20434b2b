"""Helpers for the report / GANPaint tests: tiny finished runs and a system-Chromium launcher.

The browser is Debian's ``chromium`` (``apt-get install -y chromium``) driven by the
``playwright`` Python package; ``playwright install`` (a browser download) is never used.
Tests that need it skip with the reason when it is missing.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import gdx
from gdx.runs import AdapterSpec, RunFolder, RunManifest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def make_run(folder: Path, gen_name: str, seg_name: str, layer: str | list[str], *, samples: int,
             seed: int = 0) -> Path:
    """Dissect and write a ``gdx run``-format folder (run.json + layer/dissection.*)."""
    gen, seg = gdx.load_generator(gen_name), gdx.load_segmenter(seg_name)
    layers = [layer] if isinstance(layer, str) else list(layer)
    results = gdx.dissect(gen, seg, layers, samples=samples, seed=seed, progress=False)
    manifest = RunManifest(generator=AdapterSpec(gen_name), segmenter=AdapterSpec(seg_name), layers=layers,
                           samples=samples, seed=seed, threshold=0.99, synthetic="toy" in (gen_name, seg_name))
    RunFolder(folder).save(manifest, results)
    return folder


def best_layer_for(run: Path, layers: list[str], concept: str, *, samples: int = 4,
                   iou_min: float | None = None) -> str:
    """The layer whose top units draw ``concept`` best: the most new concept pixels when a
    central square of the first ``samples`` grid samples is painted with it.

    Why not the layer with the most matching units: in the small scene GAN the 8x8 layer
    has more tree units above the IoU cut-off, but switching them on draws no tree, while
    the 16x16 ``layer6`` does. Painting is what the tests exercise, so it picks the layer.
    """
    import torch

    from gdx.sampling import segment_images
    from gdx.paint import engine_from_run
    from gdx.paint.engine import Stroke

    def gain(layer: str) -> float:
        engine = engine_from_run(run, layer, iou_min=iou_min)
        if concept not in engine.concepts:
            return -1.0
        seg = engine_segmenter(run)
        index = list(seg.labels).index(concept)
        h, w = engine.image_size
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = True
        total = 0.0
        for s in range(samples):
            images = [engine.render(s), engine.render(s, [Stroke(concept, "draw", mask)])]
            x = torch.stack([torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 127.5 - 1 for a in images])
            labels = segment_images(seg, x)
            total += float((labels[1] == index).sum() - (labels[0] == index).sum())
        return total

    return max(layers, key=gain)


def engine_segmenter(run: Path):
    """The segmenter a ``make_run`` folder was dissected with."""
    import json

    return RunFolder(run).manifest().segmenter.build("segmenter")


def scene_available() -> bool:
    """True when the bundled scene GAN and segmenter are registered AND their weights load."""
    reg = gdx.default_registry()
    if "scene" not in reg.infos("generator") or "scene" not in reg.infos("segmenter"):
        return False
    try:
        gdx.load_generator("scene")
        gdx.load_segmenter("scene")
    except (gdx.GdxError, OSError):
        return False
    return True


@contextlib.contextmanager
def chromium_page(viewport=(1200, 900)) -> Iterator[tuple[object, list[str]]]:
    """A Playwright page in headless system Chromium, and the list its console errors go to."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("system chromium not found (apt-get install -y chromium); real-browser test skipped")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, errors
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(app, port: int | None = None) -> Iterator[str]:
    """Run ``app`` with a real uvicorn server on 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(10)
