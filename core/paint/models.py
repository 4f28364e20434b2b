"""Find or make the dissection GANPaint needs, and build the engine.

With a run folder the generator is rebuilt from its ``run.json`` (no segmenter is
needed: painting never segments). Without one, a quick dissection of the chosen
generator/segmenter pair is run once and cached under ``GDX_CACHE`` (default
``~/.cache/gdx``)/paint/, in the ``gdx run`` folder format, so the next start is fast and
``gdx report`` can open it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from gdx.errors import GdxError
from gdx.paint.engine import PaintEngine
from gdx.results import Dissection, atomic_write_json


def cache_root() -> Path:
    return Path(os.environ.get("GDX_CACHE") or Path.home() / ".cache" / "gdx") / "paint"


def _run_layer(run_dir: Path, layer: str | None) -> tuple[dict, str]:
    manifest_path = run_dir / "run.json"
    if not manifest_path.is_file():
        raise GdxError(f"{run_dir} has no run.json: pass a folder written by 'gdx run --out DIR'.")
    manifest = json.loads(manifest_path.read_text())
    layers = list(manifest.get("layers") or [])
    if layer is None:
        if not layers:
            raise GdxError(f"{manifest_path} lists no layers")
        layer = layers[0]
    elif layer not in layers:
        raise GdxError(f"layer {layer!r} is not in {run_dir} (it has: {', '.join(layers)}); pass --layer with one of them")
    return manifest, layer


def quick_dissection(gen_name: str, seg_name: str, gen_opts: tuple[str, ...], seg_opts: tuple[str, ...],
                     layer: str | None, *, samples: int, seed: int = 0,
                     log: Callable[[str], None] | None = None) -> Path:
    """A cached ``gdx run``-style folder for this pair; dissected now if not cached yet."""
    import gdx
    from gdx.cli import build_adapter

    key = json.dumps([gen_name, seg_name, list(gen_opts), list(seg_opts), layer, samples, seed])
    folder = cache_root() / f"{gen_name}-{seg_name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (folder / "run.json").is_file():
        return folder
    generator = build_adapter("generator", gen_name, gen_opts)
    segmenter = build_adapter("segmenter", seg_name, seg_opts)
    layer = layer or generator.default_layer
    if not layer:
        raise GdxError(f"generator {gen_name!r} has no default layer: pass --layer NAME")
    if log:
        log(f"no --run given: dissecting {gen_name}:{layer} with {seg_name} on {samples} samples (cached in {folder})")
    result = gdx.dissect(generator, segmenter, layer, samples=samples, seed=seed, progress=False)
    result.save(folder / layer)
    atomic_write_json(folder / "run.json", {
        "format": "gdx.run", "version": 1, "generator": gen_name, "segmenter": seg_name,
        "generator_options": list(gen_opts), "segmenter_options": list(seg_opts), "layers": [layer],
        "samples": samples, "seed": seed, "threshold": 0.99, "synthetic": "toy" in (gen_name, seg_name),
    })
    return folder


def saved_rankings(run_dir: Path, layer: str) -> dict[str, tuple[str, list[int]]]:
    """Unit rankings saved under the run folder for ``layer`` (``gdx.causal.UnitRanking.save``).

    When a concept has several, the causal ones win: alpha over ace over iou.
    """
    from gdx.report.causal import find_causal_results

    preference = {"alpha": 0, "ace": 1, "iou": 2}
    out: dict[str, tuple[str, list[int]]] = {}
    found = find_causal_results(run_dir).get(layer)
    for r in sorted(found.rankings if found else [], key=lambda r: -preference.get(str(r.get("method")), 3)):
        scores = [float(x) for x in r.get("scores") or []]
        order = sorted(range(len(scores)), key=lambda u: (-scores[u], u))
        out[str(r.get("concept"))] = (str(r.get("method", "ranking")), [u for u in order if scores[u] > float("-inf")])
    return out


def engine_from_run(run_dir: str | Path, layer: str | None = None, *, generator=None,
                    quantile_samples: int = 200, iou_min: float | None = None) -> PaintEngine:
    """A :class:`PaintEngine` for ``layer`` of the run in ``run_dir`` (generator rebuilt from run.json).

    Concepts with a unit ranking saved in the run folder (e.g. the learned alpha of
    ``gdx.optimize_units``) use it; the others use the dissection's IoU ranking.
    """
    from gdx.cli import build_adapter

    folder = Path(run_dir)
    manifest, layer = _run_layer(folder, layer)
    dissection = Dissection.load(folder / layer)
    if generator is None:
        generator = build_adapter("generator", manifest["generator"], tuple(manifest.get("generator_options") or ()))
    return PaintEngine.build(generator, dissection, samples=quantile_samples, seed=int(manifest.get("seed", 0)),
                             rankings=saved_rankings(folder, layer), iou_min=iou_min)
