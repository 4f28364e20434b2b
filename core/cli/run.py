"""``gdx run`` and ``gdx show``: dissect layers into a run folder, and print one again."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import click

from gdx.cli.options import build_models, format_table, friendly_errors, model_options, parse_threshold
from gdx.hookspecs import hookimpl


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(run)
    cli.add_command(show)


@click.command()
@model_options
@click.option("--layer", "layers", multiple=True, help="Layer to dissect (module name), repeatable. Default: the generator's default layer.")
@click.option("--samples", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="Samples per forward pass.")
@click.option("--seed", default=0, show_default=True, type=int)
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
@friendly_errors
def run(gen: str | None, seg: str | None, gen_opts: tuple[str, ...], seg_opts: tuple[str, ...],
        device: str | None, layers: tuple[str, ...], samples: int, batch_size: int | None, seed: int,
        threshold: str, out: str | None, top: int, checkpoint_every: int, resume: bool, overwrite: bool,
        workers: int, make_report: bool, quiet: bool) -> None:
    """Dissect generator layers: which units match which concepts (SPEC §1)."""
    from gdx.distributed import init_world, launched_by_torchrun, shutdown
    from gdx.dissection import DissectionRun
    from gdx.runs import CheckpointedRun, RunFolder, RunManifest, choose_layers

    if workers > 1 and not launched_by_torchrun():
        relaunch_with_torchrun(workers)
        return
    thr = parse_threshold(threshold)
    models = build_models(gen, seg, gen_opts, seg_opts)
    gen_name, seg_name, generator = models.generator_spec.name, models.segmenter_spec.name, models.generator
    chosen = choose_layers(generator, layers)
    out_dir = Path(out) if out else Path("runs") / f"{gen_name}-{seg_name}"
    world = init_world(device)
    say = (lambda *a, **k: click.echo(*a, **k)) if world.is_main else (lambda *a, **k: None)
    RunFolder(out_dir).prepare(resume=resume, overwrite=overwrite, is_main=world.is_main)
    synthetic = "toy" in (gen_name, seg_name)
    if synthetic:
        say("note: using the SYNTHETIC built-in toy models (hand-built, untrained).", err=True)
    say(f"dissecting {gen_name}:{','.join(chosen)} with {seg_name} ({samples} samples, seed {seed}, "
        f"threshold {thr}{f', {world.size} processes' if world.size > 1 else ''}) -> {out_dir}", err=True)
    started = time.time()
    dissection = DissectionRun(generator, models.segmenter, chosen, samples=samples, batch_size=batch_size,
                               seed=seed, threshold=thr, device=device, progress=not quiet and world.is_main)
    manifest = RunManifest(
        generator=models.generator_spec, segmenter=models.segmenter_spec, layers=chosen, samples=samples,
        seed=seed, threshold=thr, batch_size=dissection.batch_size, sketch_size=dissection.sketch_size,
        processes=world.size, synthetic=synthetic,
    )
    execution = CheckpointedRun(out_dir, dissection, manifest.settings(), world=world,
                                checkpoint_every=checkpoint_every)
    try:
        results = execution.execute(resume=resume)
        execution.finish(dataclasses.replace(manifest, seconds=round(time.time() - started, 2)))
    finally:
        shutdown(world)
    if results is None:
        return
    for result in results:
        s = result.summary()
        click.echo(f"\n{result.layer}: {s.interpretable}/{s.units} interpretable units "
                   f"({', '.join(f'{k} {v}' for k, v in s.per_category.items()) or 'none'})")
        rows = [[str(u.unit), u.label, u.category or "", f"{u.iou:.3f}"] + ([f"{u.iqr:.3f}"] if u.iqr is not None else [])
                for u in result.interpretable()[:top]]
        header = ["unit", "concept", "category", "IoU"] + (["IQR"] if result.iqr is not None else [])
        if rows:
            click.echo(format_table(rows, header))
    click.echo(f"\nwrote {out_dir} in {time.time() - started:.1f} s", err=True)
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
        click.echo(str(d.summary()))
        rows = [[str(u.unit), u.label, f"{u.iou:.3f}"] for u in d.interpretable()[:top]]
        if rows:
            click.echo(format_table(rows, ["unit", "concept", "IoU"]))


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
