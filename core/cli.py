"""The ``gdx`` command line.

``gdx run`` dissects layers of a registered generator against a registered segmenter;
``gdx plugins|generators|segmenters|metrics`` list what is installed. Plugins add
commands through the ``register_commands`` hook. Every :class:`gdx.GdxError` becomes
one line on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from gdx.cli_common import (  # noqa: F401  (re-exported for plugins that import them from gdx.cli)
    DEFAULT_GENERATORS,
    DEFAULT_SEGMENTERS,
    build_adapter,
    first_registered,
    format_table,
    friendly_errors,
    load_models,
    model_options,
    parse_threshold,
)
from gdx.errors import GdxError
from gdx.manager import default_registry, describe_default

class GdxGroup(click.Group):
    """A click group that adds plugin commands lazily, the first time it is used."""

    _plugins_loaded = False

    def _load_plugin_commands(self) -> None:
        if not self._plugins_loaded:
            self._plugins_loaded = True
            try:
                default_registry().pm.hook.register_commands(cli=self)
            except GdxError as exc:  # a broken plugin must not break the whole CLI
                click.echo(f"warning: plugin commands not loaded: {exc}", err=True)

    def list_commands(self, ctx):
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        self._load_plugin_commands()
        return super().get_command(ctx, name)


@click.group(cls=GdxGroup)
@click.version_option(package_name="gdx")
def cli() -> None:
    """gdx: dissect and steer generative image models (GAN Dissection and friends)."""


@cli.command()
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
def run(gen, seg, gen_opts, seg_opts, device, layers, samples, batch_size, seed, threshold, out, top,
        checkpoint_every, resume, overwrite, workers, make_report, quiet):
    """Dissect generator layers: which units match which concepts (SPEC §1)."""
    import shutil

    from gdx.distributed import init_world, launched_by_torchrun, shutdown
    from gdx.dissect import DissectionRun
    from gdx.runner import CHECKPOINT_DIR, RunFolder, run_state

    if workers > 1 and not launched_by_torchrun():
        relaunch_with_torchrun(workers)
        return
    thr = parse_threshold(threshold)
    gen_name, seg_name, generator, segmenter = load_models(gen, seg, gen_opts, seg_opts)
    if not layers:
        if not generator.default_layer:
            raise GdxError(
                f"generator {gen_name!r} has no default layer: pass --layer NAME "
                f"(layers: {', '.join(generator.layer_names()[:30])})"
            )
        layers = (generator.default_layer,)
    out_dir = Path(out) if out else Path("runs") / f"{gen_name}-{seg_name}"
    world = init_world(device)
    say = (lambda *a, **k: click.echo(*a, **k)) if world.is_main else (lambda *a, **k: None)
    state = run_state(out_dir)
    if state != "empty" and overwrite and world.is_main:
        shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
        (out_dir / "run.json").unlink(missing_ok=True)
    elif state == "finished" and not overwrite:
        raise GdxError(f"{out_dir} already holds a finished run; pass --overwrite to replace it, or another --out.")
    synthetic = "toy" in (gen_name, seg_name)
    if synthetic:
        say("note: using the SYNTHETIC built-in toy models (hand-built, untrained).", err=True)
    say(f"dissecting {gen_name}:{','.join(layers)} with {seg_name} ({samples} samples, seed {seed}, "
        f"threshold {thr}{f', {world.size} processes' if world.size > 1 else ''}) -> {out_dir}", err=True)
    started = time.time()
    dissection = DissectionRun(generator, segmenter, list(layers), samples=samples, batch_size=batch_size, seed=seed,
                               threshold=thr, device=device, progress=not quiet and world.is_main)
    settings = {
        "generator": gen_name, "segmenter": seg_name, "generator_options": sorted(gen_opts),
        "segmenter_options": sorted(seg_opts), "layers": list(layers), "samples": samples, "seed": seed,
        "threshold": thr, "batch_size": dissection.batch_size, "sketch_size": dissection.sketch_size,
    }
    folder = RunFolder(out_dir, dissection, settings, world=world, checkpoint_every=checkpoint_every)
    try:
        results = folder.execute(resume=resume)
        folder.finish({"format": "gdx.run", "version": 1, **settings, "processes": world.size,
                       "seconds": round(time.time() - started, 2), "synthetic": synthetic})
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


def _listing(kind: str, verbose: bool) -> None:
    reg = default_registry()
    packages = reg.plugin_packages()
    infos = reg.infos(kind)
    rows = [[name, packages.get(i.plugin, i.plugin), i.description] for name, i in infos.items()]
    click.echo(format_table(rows, ["name", "package", "description"]))
    if verbose:
        for name, info in infos.items():
            opts = info.options()
            if opts:
                text = ", ".join(f"{k}={describe_default(p)}" for k, p in opts.items())
                click.echo(f"\n{name} options: {text}")


def _describe(kind: str, name: str) -> None:
    """Print an adapter's description and its options with their defaults."""
    info = default_registry().info(kind, name)
    click.echo(f"{name}: {info.description}")
    for k, p in info.options().items():
        click.echo(f"  option {k} = {describe_default(p)}")


@cli.command()
def plugins():
    """List installed plugins and the package each comes from."""
    reg = default_registry()
    packages = reg.plugin_packages()
    rows = []
    for name in reg.plugin_names():
        plugin = reg.pm.get_plugin(name)
        hooks = sorted(h.name for h in reg.pm.get_hookcallers(plugin) or [])
        rows.append([name, packages.get(name, ""), ", ".join(hooks)])
    click.echo(format_table(rows, ["plugin", "package", "hooks"]))


@cli.command()
@click.argument("name", required=False)
@click.option("-v", "--verbose", is_flag=True, help="Show each adapter's options.")
@click.option("--gen-opt", "opts", multiple=True, metavar="KEY=VALUE", help="Options to build NAME with (to list its layers).")
@friendly_errors
def generators(name, verbose, opts):
    """List generators; with NAME, build it and list its options and layers."""
    if name is None:
        _listing("generator", verbose)
        return
    _describe("generator", name)
    generator = build_adapter("generator", name, opts)
    click.echo("layers: " + ", ".join(generator.layer_names()))


@cli.command()
@click.argument("name", required=False)
@click.option("-v", "--verbose", is_flag=True, help="Show each adapter's options.")
@click.option("--seg-opt", "opts", multiple=True, metavar="KEY=VALUE", help="Options to build NAME with (to list its labels).")
@friendly_errors
def segmenters(name, verbose, opts):
    """List segmenters; with NAME, build it and list its options and labels."""
    if name is None:
        _listing("segmenter", verbose)
        return
    _describe("segmenter", name)
    segmenter = build_adapter("segmenter", name, opts)
    click.echo(f"labels ({len(segmenter.labels)}): " + ", ".join(segmenter.labels))


@cli.command()
@click.option("-v", "--verbose", is_flag=True)
def metrics(verbose):
    """List metrics (dissection scores and image-quality metrics)."""
    _listing("metric", verbose)


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--top", default=15, show_default=True)
@friendly_errors
def show(run_dir, top):
    """Print the table of a finished run folder again."""
    from gdx.results import Dissection

    folder = Path(run_dir)
    manifest = folder / "run.json"
    if not manifest.exists():
        if (folder / "checkpoint").exists():
            raise GdxError(f"{folder} is an unfinished run: continue it with the same 'gdx run' command plus --resume.")
        raise GdxError(f"{folder} has no run.json: not a finished gdx run folder.")
    meta = json.loads(manifest.read_text())
    for layer in meta["layers"]:
        d = Dissection.load(folder / layer)
        click.echo(str(d.summary()))
        rows = [[str(u.unit), u.label, f"{u.iou:.3f}"] for u in d.interpretable()[:top]]
        if rows:
            click.echo(format_table(rows, ["unit", "concept", "IoU"]))


def _attach_builtin_commands() -> None:
    """Commands that live in their own modules (intervention, report, paint)."""
    import importlib

    for modname in ("gdx.intervene_cli", "gdx.report_cli", "gdx.paint_cli"):
        for command in importlib.import_module(modname).COMMANDS:
            cli.add_command(command)


_attach_builtin_commands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name="gdx", standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
