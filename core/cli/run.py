"""``gdx run`` and ``gdx show``: dissect layers into a run folder, and print one again."""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from pathlib import Path

import click

from gdx.cli.options import (
    DEFAULT_GENERATORS,
    DEFAULT_SEGMENTERS,
    build_models,
    check_device,
    first_registered,
    format_table,
    friendly_errors,
    model_options,
    parse_threshold,
)
from gdx.hookspecs import hookimpl
from gdx.replay import DEFAULT_CACHE_BYTES
from gdx.results import Dissection


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(run)
    cli.add_command(show)


@click.command()
@model_options
@click.option("--layer", "layers", multiple=True, help="Layer to dissect (module name), repeatable. Default: the generator's default layer.")
@click.option("--samples", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="Samples per forward pass.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1))
@click.option("--threshold", default="0.99", show_default=True, help="Quantile q in (0,1), or 'iqr' (the paper's rule).")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False), help="Output folder (default runs/GEN-SEG).")
@click.option("--top", default=15, show_default=True, help="Rows of the printed table per layer.")
@click.option("--checkpoint-every", default=50, show_default=True, type=click.IntRange(min=1),
              help="Save resumable statistics every N batches.")
@click.option("--resume", is_flag=True, help="Continue the unfinished run in --out.")
@click.option("--overwrite", is_flag=True, help="Replace a finished or unfinished run in --out.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Processes to launch with torchrun (or start gdx under torchrun yourself).")
@click.option("--report", "make_report", is_flag=True, help="Also write the HTML report to OUT/report.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--control", default=None, type=click.Choice(["random-weights"]),
              help="Dissect a control instead: random-weights re-initialises the generator (seeded by --seed).")
@click.option("--cache-gb", default=DEFAULT_CACHE_BYTES / (1 << 30), show_default=True, type=click.FloatRange(min=0),
              help="Disk for keeping pass 1's layer outputs so pass 2 replays them instead of running the models "
                   "again (an anonymous temp file, at most half the free disk); 0 turns it off. Results are identical.")
@friendly_errors
def run(gen: str | None, seg: str | None, gen_opts: tuple[str, ...], seg_opts: tuple[str, ...],
        device: str | None, layers: tuple[str, ...], samples: int, batch_size: int | None, seed: int,
        threshold: str, out: str | None, top: int, checkpoint_every: int, resume: bool, overwrite: bool,
        workers: int, make_report: bool, quiet: bool, control: str | None, cache_gb: float) -> None:
    """Dissect generator layers: which units match which concepts (docs/method.md, "Dissection")."""
    from gdx.distributed import barrier, init_world, launched_by_torchrun, shutdown
    from gdx.dissection import DissectionRun
    from gdx.runs import CheckpointedRun, RunFolder, RunManifest, choose_layers

    if workers > 1 and not launched_by_torchrun():
        relaunch_with_torchrun(workers)
        return
    thr = parse_threshold(threshold)
    check_device(device)
    gen = gen or first_registered("generator", DEFAULT_GENERATORS)
    seg = seg or first_registered("segmenter", DEFAULT_SEGMENTERS)
    out_dir = Path(out) if out else Path("runs") / (f"{gen}-{seg}" + (f"-{control}" if control else ""))
    world = init_world(device)
    say = (lambda *a, **k: click.echo(*a, **k)) if world.is_main else (lambda *a, **k: None)
    folder = RunFolder(out_dir)
    # One writer per folder: a second `gdx run` (or a joining --resume) stops here, before
    # it builds a model or touches a file.
    lock = folder.lock() if world.is_main else None
    try:
        models = build_models(gen, seg, gen_opts, seg_opts)
        gen_name, seg_name, generator = models.generator_spec.name, models.segmenter_spec.name, models.generator
        chosen = choose_layers(generator, layers)
        if world.is_main:
            work_dir = folder.prepare(resume=resume, overwrite=overwrite, is_main=True)
        barrier(world)
        if not world.is_main:
            work_dir = folder.prepare(resume=resume, overwrite=overwrite, is_main=False)
        synthetic = "toy" in (gen_name, seg_name)
        if synthetic:
            say("note: using the SYNTHETIC built-in toy models (hand-built, untrained).", err=True)
        say(f"dissecting {gen_name}:{','.join(chosen)} with {seg_name} ({samples} samples, seed {seed}, "
            f"threshold {thr}{f', {world.size} processes' if world.size > 1 else ''}) -> {out_dir}", err=True)
        say(f"segmenter: {models.segmenter.describe()}", err=True)  # e.g. the input size it segments at
        if work_dir != out_dir:
            say(f"the finished run in {out_dir} stays in place until the new one is finished", err=True)
        started = time.time()
        dissection = DissectionRun(generator, models.segmenter, chosen, samples=samples, batch_size=batch_size,
                                   seed=seed, threshold=thr, device=device, progress=not quiet and world.is_main,
                                   control=control, cache_bytes=int(cache_gb * (1 << 30)))
        manifest = RunManifest(
            generator=models.generator_spec, segmenter=models.segmenter_spec, layers=chosen, samples=samples,
            seed=seed, threshold=thr, batch_size=dissection.batch_size, sketch_size=dissection.sketch_size,
            processes=world.size, synthetic=synthetic,
        )
        run_settings = {**manifest.settings(), **({"control": control} if control else {})}
        execution = CheckpointedRun(work_dir, dissection, run_settings, world=world,
                                    checkpoint_every=checkpoint_every)
        results = execution.execute(resume=resume)
        execution.finish(dataclasses.replace(manifest, seconds=round(time.time() - started, 2)))
        if world.is_main:
            folder.commit(work_dir)
    finally:
        if lock is not None:
            lock.release()
        shutdown(world)
    if results is None:
        return
    for result in results:
        echo_summary(result, top)
    click.echo(TRUST_NOTE if not control else CONTROL_NOTE, err=True)
    click.echo(f"\nwrote {out_dir} in {time.time() - started:.1f} s", err=True)
    click.echo(next_steps(out_dir, report=make_report), err=True)
    if make_report:
        from gdx.report import write_report

        page = write_report(out_dir, generator=generator)
        click.echo(f"report: {page}", err=True)


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--top", default=15, show_default=True)
@friendly_errors
def show(run_dir: str, top: int) -> None:
    """Print the table of a finished run folder again."""
    from gdx.runs import RunFolder

    for d in RunFolder(run_dir).dissections():
        echo_summary(d, top)


TRUST_NOTE = (
    "\nnote: 'significant' = the label beats the spatial-prior null (other samples' labels, same unit maps; "
    "Benjamini-Hochberg FDR 5%). It rules out 'fires where the concept usually is'; it does not tell a trained "
    "network from an untrained one (a random generator's units change the pixels a segmenter reads). "
    "Compare with `gdx run --control random-weights` for that."
)
CONTROL_NOTE = (
    "\nnote: this is the RANDOM-WEIGHTS CONTROL (parameters re-initialised, seeded): compare its counts with "
    "the trained run's; units the control also finds are not evidence of training."
)


def next_steps(out_dir: Path, *, report: bool = False) -> str:
    """The commands to try on a finished run folder (printed at the end of ``gdx run``)."""
    q = shlex.quote(str(out_dir))
    lines = ["next:"]
    if not report:
        lines.append(f"  gdx report {q}              # the HTML report: units, top samples, counts per concept")
    lines += [f"  gdx paint --run {q}           # GANPaint with this run's generator and unit ranking",
              f"  gdx ace --run {q} --concept CONCEPT    # what the units of a concept do (removed, ACE)",
              f"  gdx show {q}                # this table again"]
    return "\n".join(lines)


def echo_summary(d: Dissection, top: int) -> None:
    """The per-layer counts (the paper's rule and significant, side by side) and the top units."""
    s = d.summary()
    sig = set(d.significant())
    line = f"\n{d.layer}: {s.interpretable}/{s.units} interpretable units (IoU rule)"
    if s.significant is not None:
        line += f", {s.significant} significant vs the spatial-prior null (FDR 5%)"
    if d.settings.control:
        line += f" [control: {d.settings.control}]"
    click.echo(line + f" ({', '.join(f'{k} {v}' for k, v in s.per_category.items()) or 'none'})")
    if s.per_concept:
        click.echo("per concept: " + ", ".join(f"{k} {v}" for k, v in s.per_concept.items()))
    if s.significant is not None and s.significant_per_concept:
        click.echo("significant per concept: " + ", ".join(f"{k} {v}" for k, v in s.significant_per_concept.items()))
    trusted = d.pvalue is not None
    rows = []
    for u in d.interpretable()[:top]:
        row = [str(u.unit), u.label, u.category or "", f"{u.iou:.3f}"] + ([f"{u.iqr:.3f}"] if u.iqr is not None else [])
        if trusted and u.iou_ci is not None:
            row += [f"{u.iou_ci[0]:.3f}-{u.iou_ci[1]:.3f}", f"{u.null_iou:.3f}", "yes" if u.unit in sig else "no"]
        rows.append(row)
    header = (["unit", "concept", "category", "IoU"] + (["IQR"] if d.iqr is not None else [])
              + (["95% CI", "null IoU", "significant"] if trusted else []))
    if rows:
        click.echo(format_table(rows, header))


def relaunch_with_torchrun(workers: int) -> None:
    """Start ``gdx run`` again under torchrun with ``workers`` processes on this machine."""
    import subprocess

    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        if a.startswith("--workers="):
            continue
        args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}",
           "-m", "gdx.cli", *args]
    code = subprocess.call(cmd)
    if code:
        raise click.exceptions.Exit(code)
