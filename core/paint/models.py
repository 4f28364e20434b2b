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

from gdx.dissection import dissect
from gdx.interfaces import Generator
from gdx.paint.engine import PaintEngine
from gdx.runs import AdapterSpec, RunFolder, RunManifest, choose_layers
from gdx.tracing import LayerAddress


def cache_root() -> Path:
    return Path(os.environ.get("GDX_CACHE") or Path.home() / ".cache" / "gdx") / "paint"


def quick_dissection(generator: AdapterSpec, segmenter: AdapterSpec, layer: str | None, *, samples: int,
                     seed: int = 0, log: Callable[[str], None] | None = None) -> Path:
    """A cached ``gdx run``-style folder for this pair; dissected now if not cached yet."""
    # without a layer the generator's paint layer is used: a key of its own, so a folder cached
    # when the default was the run layer is not reused for it
    key = json.dumps([generator.name, segmenter.name, generator.to_json(), segmenter.to_json(),
                      layer or "<paint layer>", samples, seed], sort_keys=True)
    folder = RunFolder(cache_root() / f"{generator.name}-{segmenter.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}")
    if folder.state() == "finished":
        return folder.path
    gen = generator.build("generator")
    seg = segmenter.build("segmenter")
    [layer] = choose_layers(gen, [layer or gen.paint_layer] if (layer or gen.paint_layer) else None)
    layer = ranking_step(layer)  # a step window is painted with units ranked at its last step
    if log:
        log(f"dissecting {generator.name}:{layer} with {segmenter.name} on {samples} samples (cached in {folder.path})")
    result = dissect(gen, seg, layer, samples=samples, seed=seed, progress=False)
    manifest = RunManifest(generator=generator, segmenter=segmenter, layers=[layer], samples=samples, seed=seed,
                           threshold=0.99, synthetic="toy" in (generator.name, segmenter.name))
    folder.save(manifest, [result])
    return folder.path


def ranking_step(layer: str) -> str:
    """The layer whose dissection ranks the units painted at ``layer``: itself, or for a step window
    ``blk@A-B`` its last step ``blk@B`` -- the step nearest the finished image the segmenter labels."""
    window = LayerAddress.parse(layer)
    return window.at(window.calls()[-1]).name if window.is_window else layer


def dissected_step(layer: str, dissected: list[str]) -> str | None:
    """For a step window, the run's dissected step of the same block (inside the window first, latest)."""
    window = LayerAddress.parse(layer)
    if not window.is_window:
        return None
    steps = [LayerAddress.parse(d) for d in dissected]
    same = [a for a in steps if a.block == window.block and a.first is not None and not a.is_window]
    inside = [a for a in same if a.first in window.calls()]
    best = sorted(inside or same, key=lambda a: a.first or 0)
    return best[-1].name if best else None


def saved_rankings(run_dir: Path, layer: str) -> dict[str, tuple[str, list[int]]]:
    """Unit rankings saved under the run folder for ``layer`` (``gdx.causal.UnitRanking.save``).

    When a concept has several, the causal ones win: alpha over ace over iou.
    """
    from gdx.causal.saved import find_causal_results

    preference = {"alpha": 0, "ace": 1, "iou": 2}
    out: dict[str, tuple[str, list[int]]] = {}
    found = find_causal_results(run_dir).get(layer)
    for r in sorted(found.rankings if found else [], key=lambda r: -preference.get(str(r.get("method")), 3)):
        scores = [float(x) for x in r.get("scores") or []]
        order = sorted(range(len(scores)), key=lambda u: (-scores[u], u))
        out[str(r.get("concept"))] = (str(r.get("method", "ranking")), [u for u in order if scores[u] > float("-inf")])
    return out


def engine_from_run(run_dir: str | Path, layer: str | None = None, *, generator: Generator | None = None,
                    quantile_samples: int = 200, iou_min: float | None = None) -> PaintEngine:
    """A :class:`PaintEngine` for ``layer`` of the run in ``run_dir`` (generator rebuilt from run.json).

    Concepts with a unit ranking saved in the run folder (e.g. the learned alpha of
    ``gdx.optimize_units``) use it; the others use the dissection's IoU ranking. Without
    ``layer``: the generator's ``paint_layer`` when the run dissected it, else the run's
    first layer. A step window ``blk@A-B`` (docs/diffusion.md) is painted with the units
    of the run's dissected step of that block (inside the window, the latest).
    """
    folder = RunFolder(run_dir)
    manifest = folder.manifest()
    if generator is None:
        generator = manifest.generator.build("generator")
    if layer is None and generator.paint_layer and (generator.paint_layer in manifest.layers
                                                   or dissected_step(generator.paint_layer, manifest.layers)):
        layer = generator.paint_layer
    edit_layer = None
    if layer is not None and dissected_step(layer, manifest.layers):  # paint a window, rank at a step
        edit_layer, layer = layer, dissected_step(layer, manifest.layers)
    dissection = folder.dissection(layer)  # checks the layer (None: the run's first) and the run id
    return PaintEngine.build(generator, dissection, samples=quantile_samples, seed=manifest.seed,
                             rankings=saved_rankings(folder.path, dissection.layer), iou_min=iou_min,
                             edit_layer=edit_layer)
