"""``gdx ace | optimize | locate | repair | removal-table``: intervention from the command line.

Each command takes the same model options as ``gdx run`` (``--gen/--seg/--gen-opt/--seg-opt``)
and writes JSON results plus PNG figures into ``--out``. The lead CLI attaches
:data:`COMMANDS` to the ``gdx`` group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import torch

from gdx.cli.options import (
    DEFAULT_GENERATORS,
    build_adapter,
    first_registered,
    friendly_errors,
    load_models,
    model_options,
)
from gdx.errors import UsageError
from gdx.hookspecs import hookimpl

if TYPE_CHECKING:
    from gdx.causal import CumulativeCurve, UnitRanking
    from gdx.interfaces import Generator
    from gdx.results import Dissection

F = TypeVar("F", bound=Callable[..., Any])


def _layer(generator: Any, layer: str | None) -> str:
    from gdx.runs import choose_layers

    return choose_layers(generator, [layer] if layer else None)[0]


def _parse_units(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise UsageError(f"--units {text!r}: expected comma-separated unit indices, e.g. --units 3,17,41") from None


def _dissection_for(run_dir: str | Path, layer: str) -> Dissection:
    """The run's dissection of ``layer``; for a step window (``blk@A-B``), of the run's dissected step
    of that block (inside the window, the latest): units are ranked at a step, edited over the window."""
    from gdx.paint.models import dissected_step
    from gdx.runs import RunFolder
    from gdx.tracing import LayerAddress

    folder = RunFolder(run_dir)
    if LayerAddress.parse(layer).is_window and folder.manifest_path.is_file():
        layer = dissected_step(layer, folder.manifest().layers) or layer
    return folder.dissection(layer)


def _choose_units(layer: str, concept: str, units: str | None, ranking_file: str | None, run_dir: str | None,
                  top: int, say: Callable[[str], None]) -> list[int]:
    """Units from --units, a saved --ranking, or the --run folder (its alpha/ACE ranking, else IoU)."""

    def no_source() -> Dissection:
        raise UsageError("choose units: --units 3,17,41, or --ranking ranking.json (from 'gdx optimize'), "
                         "or --run RUN_DIR")

    chosen, name = _ace_units(layer, concept, units, ranking_file, run_dir, top, no_source)
    say(f"{len(chosen)} units of {layer} for {concept!r} by {name}")
    return chosen


def _out_dir(out: str | None, default: str) -> Path:
    path = Path(out) if out else Path("runs") / default
    path.mkdir(parents=True, exist_ok=True)
    return path


def _say(text: str) -> None:
    click.echo(text, err=True)


def _write_curve_png(curve: CumulativeCurve, path: Path, control: CumulativeCurve | None = None, *,
                     ranking: str = "") -> None:
    from gdx.plots import line_chart, write_png

    series: dict[str, tuple[Sequence[float], Sequence[float]]] = {"removed": (curve.n, curve.removed)}
    if curve.ace is not None:
        series["ACE"] = (curve.n, curve.ace)
    if control is not None:
        series["removed (random, mean)"] = (control.n, control.removed)
    by = f" by {ranking.split(' ')[0]}" if ranking else ""
    write_png(path, line_chart(series, title=f"{curve.concept}: top-n units{by} of {curve.layer}", xlabel="n units",
                               ylabel="fraction"))


@torch.no_grad()
def _before_after(generator: Generator, layer: str, units: list[int], value: torch.Tensor | None, n: int,
                  seed: int) -> list[list[torch.Tensor]]:
    from gdx.intervention import intervene

    z = generator.sample_latents(n, seed=seed).to(generator.device)
    rows = [list(generator.generate(z))]
    with intervene(generator, layer, units, value=0.0):
        rows.append(list(generator.generate(z)))
    if value is not None:
        with intervene(generator, layer, units, value=value):
            rows.append(list(generator.generate(z)))
    return rows


common_options = [
    click.option("--layer", default=None, help="Layer (module name). Default: the generator's default layer."),
    click.option("--samples", default=200, show_default=True, type=click.IntRange(min=1)),
    click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1)),
    click.option("--batch-size", default=None, type=click.IntRange(min=1)),
    click.option("--out", default=None, type=click.Path(file_okay=False), help="Output folder."),
]


def with_common(fn: F) -> F:
    for deco in reversed(common_options):
        fn = deco(fn)
    return model_options(fn)


unit_options = [
    click.option("--units", default=None, help="Comma-separated units, e.g. 3,17,41."),
    click.option("--ranking", "ranking_file", default=None, type=click.Path(exists=True, dir_okay=False),
                 help="A ranking.json from 'gdx optimize'; its top --top units are used."),
    click.option("--run", "run_dir", default=None, type=click.Path(exists=True, file_okay=False),
                 help="A 'gdx run' folder: the top --top units of its saved alpha/ACE ranking for the concept "
                      "(from 'gdx optimize --run'), else by IoU."),
    click.option("--top", default=20, show_default=True, type=click.IntRange(min=1)),
]


def with_units(fn: F) -> F:
    for deco in reversed(unit_options):
        fn = deco(fn)
    return fn


#: Points of the default cumulative curve (clipped to --top, which is always included).
CURVE_POINTS = (1, 2, 5, 10, 20)


def _curve_points(text: str, top: int) -> list[int]:
    if text.strip().lower() == "all":
        return list(range(1, top + 1))
    try:
        points = {int(t) for t in text.replace(" ", "").split(",") if t}
    except ValueError:
        raise UsageError(f"--curve-points {text!r}: expected 'all' or comma-separated unit counts, e.g. 1,5,20") from None
    return sorted({n for n in points if 1 <= n < top} | {top})


def _ace_units(layer: str, concept: str, units: str | None, ranking_file: str | None, run_dir: str | None,
               top: int, quick: Callable[[], Dissection]) -> tuple[list[int], str]:
    """(units, the ranking's name as printed): --units; a --ranking file; the run folder's saved
    causal ranking (alpha, then ACE) for this concept and layer; else the IoU ranking of the run's
    dissection, or of a cached quick dissection when there is no run."""
    from gdx.causal import UnitRanking, rank_by_iou
    from gdx.paint.models import saved_rankings

    if units:
        return _parse_units(units), "units given (--units)"
    if ranking_file:
        ranking = UnitRanking.load(ranking_file)
        return ranking.top(top), f"{ranking.method} ranking from {ranking_file}"
    if run_dir:
        method, ranked = saved_rankings(Path(run_dir), layer).get(concept, ("iou", []))
        if method != "iou" and ranked:
            return ranked[:top], f"{method} ranking saved in {run_dir}"
        return rank_by_iou(_dissection_for(run_dir, layer), concept, layer=layer).top(top), f"IoU ranking of {run_dir}"
    return rank_by_iou(quick(), concept, layer=layer).top(top), "IoU ranking of a quick 300-sample dissection"


@click.command()
@with_common
@with_units
@click.option("--concept", required=True, help="Concept (a segmenter label).")
@click.option("--curve/--no-curve", default=True, show_default=True,
              help="Also the cumulative removal curve at --curve-points.")
@click.option("--curve-points", default=",".join(map(str, CURVE_POINTS)), show_default=True,
              help="Unit counts of the curve (removal only; one ablation pass each), or 'all' for 1..top with ACE.")
@click.option("--random-draws", default=5, show_default=True, type=click.IntRange(1, 100),
              help="Draws of random units for the control (its mean and spread are reported).")
@friendly_errors
def ace(gen: str | None, seg: str | None, gen_opts: tuple[str, ...], seg_opts: tuple[str, ...],
        device: str | None, layer: str | None, samples: int, seed: int, batch_size: int | None,
        out: str | None, units: str | None, ranking_file: str | None, run_dir: str | None, top: int,
        concept: str, curve: bool, curve_points: str, random_draws: int) -> None:
    """Causal effect of units on a concept: removed, added, ACE, against random units (docs/method.md, "ACE").

    Units: --units, a --ranking file, the alpha ranking saved in the --run folder (from
    'gdx optimize --run DIR'), else the IoU ranking of the run's (or a quick) dissection.
    Correlated units are not always causal ones: the output names the ranking used.
    """
    import json
    import statistics

    from gdx.causal import CumulativeCurve, EffectRunner, cumulative_effect, random_units
    from gdx.cli.options import build_models

    models = build_models(gen, seg, gen_opts, seg_opts, device)
    gen_name, generator, segmenter = models.generator_spec.name, models.generator, models.segmenter
    layer = _layer(generator, layer)

    def quick() -> Dissection:
        from gdx.paint.models import quick_dissection

        path = quick_dissection(models.generator_spec, models.segmenter_spec, layer, samples=300,
                                log=lambda m: _say(f"no --run given: {m}"))
        return _dissection_for(path, layer)

    chosen, ranking_name = _ace_units(layer, concept, units, ranking_file, run_dir, top, quick)
    folder = _out_dir(out, f"ace-{gen_name}-{concept}")
    runner = EffectRunner(generator, segmenter, layer, concept, samples=samples, seed=seed, batch_size=batch_size)
    eff = runner.effect(chosen)
    eff.save(folder / "effect.json")
    click.echo(f"{concept} / {layer}, {len(chosen)} units by {ranking_name}: {chosen}")
    click.echo(f"  removed {eff.removed:.3f}, added {eff.added:+.3f}, ACE {eff.ace:+.3f} "
               f"({int(eff.contains.sum())}/{samples} samples contain {concept})")
    n_units = int(runner.n_units or len(chosen))
    draws = [random_units(n_units, len(chosen), seed=seed + 1 + d) for d in range(random_draws)]
    control = [runner.effect(u, insert=False).removed for u in draws]
    mean = statistics.fmean(control)
    sd = statistics.stdev(control) if len(control) > 1 else 0.0
    verdict = "above" if eff.removed > mean else "NOT above"
    click.echo(f"  random control ({len(chosen)} random units, {random_draws} draws): removed mean {mean:.3f} "
               f"± {sd:.3f} sd (range {min(control):.3f}..{max(control):.3f}); the ranked units are {verdict} it")
    if ranking_name.startswith("IoU"):
        click.echo(f"  note: the IoU ranking is correlational; for the causal (alpha) ranking run "
                   f"'gdx optimize --concept {concept} --run RUN_DIR' once, then 'gdx ace --run RUN_DIR' uses it")
    if eff.side_effects:
        worst = sorted(eff.side_effects.items(), key=lambda kv: -abs(kv[1]))[:5]
        click.echo("  side effects (relative change under ablation): " + ", ".join(f"{k} {v:+.2f}" for k, v in worst))
    from gdx.plots import image_grid, write_png

    write_png(folder / "before_after.png", image_grid(_before_after(generator, layer, chosen, runner.value, 6, seed)))
    summary = {"kind": "ace_summary", "layer": layer, "concept": concept, "units": chosen, "ranking": ranking_name,
               "removed": eff.removed, "added": eff.added, "ace": eff.ace, "samples": samples, "seed": seed,
               "random_control": {"draws": draws, "removed": control, "mean": mean, "sd": sd}}
    if curve and len(chosen) > 1:
        points = _curve_points(curve_points, len(chosen))
        if curve_points.strip().lower() == "all":
            c = cumulative_effect(generator, segmenter, layer, chosen, concept, n_max=len(chosen), samples=samples,
                                  seed=seed, batch_size=batch_size)
        else:
            removed = [eff.removed if n == len(chosen) else runner.effect(chosen[:n], insert=False).removed
                       for n in points]
            c = CumulativeCurve(layer=layer, concept=runner.concept, units=chosen, n=points, removed=removed,
                                added=None, ace=None, samples=samples, seed=seed)
        c.save(folder / "curve.json")
        ctl = CumulativeCurve(layer=layer, concept=runner.concept, units=draws[0], n=[len(chosen)], removed=[mean],
                              added=None, ace=None, samples=samples, seed=seed)
        _write_curve_png(c, folder / "curve.png", ctl, ranking=ranking_name)
        summary["curve"] = {"n": c.n, "removed": c.removed}
        click.echo("  curve (removed by the top n): " + ", ".join(f"n={n} {r:.3f}" for n, r in zip(c.n, c.removed)))
    (folder / "ace.json").write_text(json.dumps(summary, indent=1))
    click.echo(f"wrote {folder}", err=True)


@click.command()
@with_common
@click.option("--concept", required=True, help="Concept (a segmenter label).")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=0.01, show_default=True, type=float)
@click.option("--lam", default=0.005, show_default=True, type=float, help="L2 weight on alpha.")
@click.option("--run", "run_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="A 'gdx run' folder: initialise alpha from the normalised IoU.")
@click.option("--top", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--curve/--no-curve", default=True, show_default=True)
@friendly_errors
def optimize(gen: str | None, seg: str | None, gen_opts: tuple[str, ...], seg_opts: tuple[str, ...],
             device: str | None, layer: str | None, samples: int, seed: int, batch_size: int | None,
             out: str | None, concept: str, epochs: int, lr: float, lam: float, run_dir: str | None,
             top: int, curve: bool) -> None:
    """Learn the soft unit mask alpha that best removes/inserts a concept (docs/method.md, "alpha").

    With --run (and no --out) the ranking is saved in the run folder, where 'gdx ace --run'
    and 'gdx paint --run' use it.
    """
    from gdx.causal import cumulative_effect, optimize_units

    gen_name, seg_name, generator, segmenter = load_models(gen, seg, gen_opts, seg_opts, device)
    layer = _layer(generator, layer)
    init = _dissection_for(run_dir, layer) if run_dir else None
    ranking = optimize_units(generator, segmenter, layer, concept, samples=samples, seed=seed, epochs=epochs, lr=lr,
                             lam=lam, init=init, batch_size=batch_size)
    # with --run, the ranking goes into the run folder, where 'gdx ace/locate/paint --run' find it
    folder = Path(run_dir) / f"optimize-{concept}" if run_dir and not out else _out_dir(out, f"optimize-{gen_name}-{concept}")
    folder.mkdir(parents=True, exist_ok=True)
    ranking.save(folder / "ranking.json")
    click.echo(f"top-{top} units of {layer} for {concept!r} by alpha: "
               + ", ".join(f"{u} ({float(ranking.scores[u]):.2f})" for u in ranking.top(top)))
    if curve:
        c = cumulative_effect(generator, segmenter, layer, ranking, concept, n_max=top, samples=samples,
                              seed=seed + 1, batch_size=batch_size)
        c.save(folder / "curve.json")
        _write_curve_png(c, folder / "curve.png")
        click.echo(f"held-out (seed {seed + 1}) removal by top-{top}: {c.removed[-1]:.3f}")
    click.echo(f"wrote {folder}", err=True)


@click.command()
@with_common
@with_units
@click.option("--concept", required=True)
@click.option("--sample", default=0, show_default=True, type=click.IntRange(min=0), help="Sample index of --seed.")
@click.option("--radius", default=1, show_default=True, type=click.IntRange(min=0),
              help="Measure the gain within this many cells of the edited cell.")
@friendly_errors
def locate(gen: str | None, seg: str | None, gen_opts: tuple[str, ...], seg_opts: tuple[str, ...],
           device: str | None, layer: str | None, samples: int, seed: int, batch_size: int | None,
           out: str | None, units: str | None, ranking_file: str | None, run_dir: str | None, top: int,
           concept: str, sample: int, radius: int) -> None:
    """Where can a concept go? Insert its units at each cell of one sample and map the gain."""
    from gdx.causal import location_map

    gen_name, seg_name, generator, segmenter = load_models(gen, seg, gen_opts, seg_opts, device)
    layer = _layer(generator, layer)
    chosen = _choose_units(layer, concept, units, ranking_file, run_dir, top, _say)
    loc = location_map(generator, segmenter, layer, chosen, concept, sample=sample, seed=seed, value_samples=samples,
                       radius=radius, batch_size=batch_size)
    folder = _out_dir(out, f"locate-{gen_name}-{concept}")
    loc.save(folder / f"location_{sample}.json")
    loc.save_png(folder / f"location_{sample}.png")
    g = loc.gain
    click.echo(f"{concept} on sample {sample}: gain {float(g.min()):+.3f}..{float(g.max()):+.3f}, "
               f"{int((g > 0.05).sum())}/{g.numel()} cells where it appears")
    click.echo(f"wrote {folder}", err=True)


def _load_real(real: str | None, real_scenes: int, size: tuple[int, int], seed: int = 10_000) -> torch.Tensor | None:
    import torch.nn.functional as F

    if real_scenes:
        from gdx.scenes import render_scenes

        images = render_scenes(real_scenes, seed=seed, size=size[0]).images
    elif real:
        path = Path(real)
        if path.is_dir():
            try:
                import numpy as np
                from PIL import Image
            except ImportError:
                raise UsageError("reading an image folder needs Pillow: pip install pillow, or pass a .pt tensor") from None
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
            if not files:
                raise UsageError(f"--real {path}: no .png/.jpg images in the folder")
            arrs = [torch.from_numpy(np.asarray(Image.open(f).convert("RGB").resize(size[::-1]))) for f in files]
            images = torch.stack(arrs).permute(0, 3, 1, 2).float() / 127.5 - 1
        else:
            from gdx.checkpoints import load_torch_file

            images = load_torch_file(path, what="real images")
            if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
                raise UsageError(f"--real {path}: expected a tensor N x 3 x H x W in [-1, 1] saved with torch.save")
    else:
        return None
    if tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)
    return images.float()


@click.command()
@model_options
@click.option("--layer", default=None)
@click.option("--samples", default=1000, show_default=True, type=click.IntRange(min=2),
              help="Search samples (choose from the score's spread: docs/intervention.md).")
@click.option("--held-out", default=1000, show_default=True, type=click.IntRange(min=2),
              help="Held-out samples (another seed) that confirm the set.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1))
@click.option("--batch-size", default=None, type=click.IntRange(min=1))
@click.option("--top", default=20, show_default=True, type=click.IntRange(min=1), help="At most this many units.")
@click.option("--method", default="greedy", show_default=True, type=click.Choice(["greedy", "prefix"]),
              help="greedy: grow the set unit by unit; prefix: the best prefix of the single-unit ranking.")
@click.option("--min-z", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="A search step must gain more than this many bootstrap standard deviations.")
@click.option("--features", default="segmenter", show_default=True, type=click.Choice(["segmenter", "inception"]),
              help="Feature space of the Fréchet distance (segmenter = a domain space, not the literature's FID).")
@click.option("--feature-stage", default=-1, show_default=True, type=int,
              help="With --features segmenter: which encoder map (-1 the deepest; 3 the scene segmenter's texture stage).")
@click.option("--weights", default=None, help="Inception-v3 weights file (torchvision format) for --features inception.")
@click.option("--real", default=None, help="Real images: a folder of PNG/JPG, or a .pt tensor N x 3 x H x W in [-1, 1].")
@click.option("--real-scenes", default=0, type=click.IntRange(min=0),
              help="Use N rendered scenes of the procedural scene world as the real set (and N others for held-out).")
@click.option("--check", "check_name", default=None,
              help="A second quality metric measured on the held-out samples, e.g. scene-realism.")
@click.option("--control-draws", default=5, show_default=True, type=click.IntRange(min=0),
              help="Random unit sets of the same size measured on the held-out samples.")
@click.option("--evidence", default=8, show_default=True, type=click.IntRange(min=0),
              help="Candidates (best first) shown where they fire most, before/after ablation.")
@click.option("--out", default=None, type=click.Path(file_okay=False))
@friendly_errors
def repair(gen: str | None, seg: str | None, gen_opts: tuple[str, ...], seg_opts: tuple[str, ...],
           device: str | None, layer: str | None, samples: int, held_out: int, seed: int,
           batch_size: int | None, top: int, method: str, min_z: float, features: str, feature_stage: int,
           weights: str | None, real: str | None, real_scenes: int, check_name: str | None, control_draws: int, evidence: int,
           out: str | None) -> None:
    """Find artifact units: ablating them improves a Fréchet distance to real images (docs/method.md, "Repair").

    The set is searched on --samples samples and confirmed on --held-out others with a
    bootstrap interval; repair.json holds the generator option that applies it
    (--gen-opt ablate=FOLDER/repair.json for gdx run, paint, ace...).
    """
    from gdx.plots import image_grid, write_png
    from gdx.plugins.metrics.frechet import FrechetDistance, InceptionFeatures, ModuleFeatures, segmenter_features
    from gdx.repair import find_artifact_units, unit_evidence

    gen_name = gen or first_registered("generator", DEFAULT_GENERATORS)
    generator = build_adapter("generator", gen_name, gen_opts)
    if device:
        generator.to(device)
    layer = _layer(generator, layer)
    with torch.no_grad():
        size = tuple(generator.generate(generator.sample_latents(1, seed=seed).to(generator.device)).shape[-2:])
    images = _load_real(real, real_scenes, size)
    if images is None:
        raise UsageError("repair needs real images: --real FOLDER_OR_PT, or --real-scenes N for the bundled scene world")
    held_images = _load_real(None, real_scenes, size, seed=20_000) if real_scenes else None
    extractor: InceptionFeatures | ModuleFeatures
    segmenter = None
    if features == "inception":
        if not weights:
            raise UsageError("--features inception needs --weights PATH (torchvision Inception-v3 weights; nothing is downloaded)")
        extractor = InceptionFeatures(weights)
    else:
        _, _, _, segmenter = load_models(gen_name, seg, gen_opts, seg_opts, device)
        extractor = segmenter_features(segmenter, stage=feature_stage)
    check = None
    if check_name:
        from gdx.manager import default_registry

        check = default_registry().build("metric", check_name)
    rep = find_artifact_units(generator, layer, metric=FrechetDistance(extractor), real=images.split(100),
                              held_out_real=None if held_images is None else held_images.split(100),
                              samples=samples, seed=seed, held_out=held_out, top=top, method=method, min_z=min_z,
                              check=check, segmenter=segmenter, control_draws=control_draws,
                              batch_size=batch_size, progress=_say)
    folder = _out_dir(out, f"repair-{gen_name}")
    rep.save(folder / "repair.json")
    if rep.units:
        write_png(folder / "before_after.png", image_grid(_before_after(generator, layer, rep.units, None, 8,
                                                                         rep.held_out_seed)))
    shown = [u for u, _ in rep.ranking()[:evidence]]
    if shown:
        _write_evidence(folder, rep, unit_evidence(generator, layer, shown, samples=min(samples, 500), seed=seed,
                                                   batch_size=batch_size))
    click.echo(_repair_summary(rep, f"segmenter stage {feature_stage}" if features == "segmenter" else features))
    if rep.units:
        click.echo(f"apply it: --gen-opt ablate={folder / 'repair.json'}  (or --gen-opt ablate={rep.ablate})")
    click.echo(f"wrote {folder}", err=True)


def _repair_summary(rep: Any, features: str) -> str:
    lines = [f"artifact units of {rep.layer}: {rep.units or 'none found'} ({rep.method} search)",
             f"Fréchet distance ({features} features), search samples ({rep.samples}, seed {rep.seed}): "
             f"{rep.before:.4f} -> {rep.after:.4f} (spread of the score: sd {rep.noise:.4f})"]
    held = (f"held-out ({rep.held_out}, seed {rep.held_out_seed}): {rep.held_out_before:.4f} -> "
            f"{rep.held_out_after:.4f}")
    if rep.interval:
        lo, hi = rep.interval
        held += f", improvement {100 * rep.improvement:.1f}% [{100 * lo:.1f}%, {100 * hi:.1f}%]"
    lines.append(held + (" (confirmed)" if rep.confirmed else " (NOT confirmed)"))
    if rep.control:
        c = torch.tensor(rep.control, dtype=torch.float64)
        sd = float(c.std()) if len(rep.control) > 1 else 0.0
        lines.append(f"random sets of {len(rep.units)} units ({len(rep.control)} draws): "
                     f"{100 * float(c.mean()):.1f}% +- {100 * sd:.1f}%")
    if rep.check:
        ck = rep.check
        text = f"{ck['name']} (held-out): {ck['before']:.4f} -> {ck['after']:.4f}"
        if "low" in ck:
            text += f", improvement interval [{100 * ck['low']:.1f}%, {100 * ck['high']:.1f}%]"
        lines.append(text)
    if rep.label_tv:
        lines.append(f"label distribution, TV to the real images: {rep.label_tv[0]:.4f} -> {rep.label_tv[1]:.4f}")
    return "\n".join(lines)


def _write_evidence(folder: Path, rep: Any, evidence: Sequence[Any]) -> None:
    """evidence/unit_<u>.png (rows: sample, where the unit fires, unit off) and evidence.md."""
    import numpy as np

    from gdx.plots import heatmap_overlay, to_uint8, write_png

    target = folder / "evidence"
    target.mkdir(parents=True, exist_ok=True)
    gains = dict(zip(rep.candidates, rep.scores))
    lines = [f"# Artifact evidence: {rep.layer}", "",
             "Each picture: the samples (of the search seed) where the unit fires most; rows: the sample, "
             "where the unit fires (red), the sample with the unit off.", "",
             "| unit | chosen | search gain | samples | peak activation | picture |", "|---|---|---|---|---|---|"]
    for ev in evidence:
        size, pad = 128, 4
        rows = [[to_uint8(im, size) for im in ev.images],
                [heatmap_overlay(im, act, size=size) for im, act in zip(ev.images, ev.activation)],
                [to_uint8(im, size) for im in ev.ablated]]
        canvas = np.full((3 * (size + pad) + pad, len(ev.indices) * (size + pad) + pad, 3), 255, dtype=np.uint8)
        for i, row in enumerate(rows):
            for j, tile in enumerate(row):
                y, x = pad + i * (size + pad), pad + j * (size + pad)
                canvas[y:y + size, x:x + size] = tile
        name = f"unit_{ev.unit}.png"
        write_png(target / name, canvas)
        lines.append(f"| {ev.unit} | {'yes' if ev.unit in rep.units else 'no'} | {gains.get(ev.unit, 0.0):.4f} | "
                     f"{', '.join(map(str, ev.indices))} | {max(ev.peak):.3f} | [{name}](evidence/{name}) |")
    (folder / "evidence.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


@click.command("removal-table")
@with_common
@click.option("--concepts", required=True, help="Comma-separated concepts, e.g. tree,door,dome.")
@click.option("--method", default="alpha", show_default=True, type=click.Choice(["alpha", "iou", "ace"]))
@click.option("--top", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--eval-seed", default=1, show_default=True, type=int, help="Seed of the held-out measurement samples.")
@click.option("--control-draws", default=5, show_default=True, type=click.IntRange(min=1),
              help="Independent draws of random units averaged into the control.")
@click.option("--run", "run_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="A 'gdx run' folder (IoU for --method iou; alpha initialisation otherwise).")
@friendly_errors
def removal_table_cmd(gen: str | None, seg: str | None, gen_opts: tuple[str, ...], seg_opts: tuple[str, ...],
                      device: str | None, layer: str | None, samples: int, seed: int, batch_size: int | None,
                      out: str | None, concepts: str, method: str, top: int, epochs: int, eval_seed: int,
                      control_draws: int, run_dir: str | None) -> None:
    """The paper's table: fraction of each concept removed by its top units vs random units."""
    from gdx.causal import removal_table

    gen_name, seg_name, generator, segmenter = load_models(gen, seg, gen_opts, seg_opts, device)
    layer = _layer(generator, layer)
    init = _dissection_for(run_dir, layer) if run_dir else None
    table = removal_table(generator, segmenter, layer, [c.strip() for c in concepts.split(",") if c.strip()],
                          top=top, method=method, samples=samples, seed=seed, eval_seed=eval_seed, epochs=epochs,
                          init=init, batch_size=batch_size, control_draws=control_draws, progress=_say)
    folder = _out_dir(out, f"removal-{gen_name}")
    table.save(folder / "removal_table.json")
    (folder / "removal_table.md").write_text(table.to_markdown())
    click.echo(table.to_markdown())
    click.echo(f"wrote {folder}", err=True)




@hookimpl
def register_commands(cli: click.Group) -> None:
    for command in (ace, optimize, locate, repair, removal_table_cmd):
        cli.add_command(command)
