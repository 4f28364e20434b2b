"""The ``gdx`` command line.

``gdx run`` dissects layers of a registered generator against a registered segmenter;
``gdx plugins|generators|segmenters|metrics`` list what is installed. Plugins add
commands through the ``register_commands`` hook. Every :class:`gdx.GdxError` becomes
one line on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from gdx.errors import GdxError
from gdx.manager import AdapterInfo, default_registry, parse_options

#: Preferred defaults for ``gdx run``: the bundled scene world, else the synthetic toy pair.
DEFAULT_GENERATORS = ("scene", "toy")
DEFAULT_SEGMENTERS = ("scene", "toy")


def friendly_errors(fn):
    """Turn gdx's own errors into ``click.ClickException`` (one line, exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GdxError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


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


def first_registered(kind: str, preferred: tuple[str, ...]) -> str:
    infos = default_registry().infos(kind)
    for name in preferred:
        if name in infos:
            return name
    return next(iter(infos))


def build_adapter(kind: str, name: str, pairs: tuple[str, ...]) -> Any:
    """Build a registered adapter from its name and ``key=value`` option strings."""
    info: AdapterInfo = default_registry().info(kind, name)
    options = parse_options(info, pairs)
    return default_registry().build(kind, name, **options)


def parse_threshold(text: str) -> float | str:
    if text.strip().lower() == "iqr":
        return "iqr"
    try:
        q = float(text)
    except ValueError:
        raise GdxError(f"--threshold {text!r} is neither a quantile like 0.99 nor 'iqr'") from None
    if not 0 < q < 1:
        raise GdxError(f"--threshold {q} must be strictly between 0 and 1 (0.99 = each unit's top 1%)")
    return q


def model_options(fn):
    """The options every model-driven command shares (``--gen``, ``--seg``, ...)."""
    decorators = [
        click.option("--gen", "gen", default=None, help="Registered generator (see 'gdx generators'). Default: scene, else toy."),
        click.option("--seg", "seg", default=None, help="Registered segmenter (see 'gdx segmenters')."),
        click.option("--gen-opt", "gen_opts", multiple=True, metavar="KEY=VALUE", help="Generator option, repeatable."),
        click.option("--seg-opt", "seg_opts", multiple=True, metavar="KEY=VALUE", help="Segmenter option, repeatable."),
        click.option("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: where the model is)."),
    ]
    for deco in reversed(decorators):
        fn = deco(fn)
    return fn


def load_models(gen: str | None, seg: str | None, gen_opts, seg_opts):
    gen = gen or first_registered("generator", DEFAULT_GENERATORS)
    seg = seg or first_registered("segmenter", DEFAULT_SEGMENTERS)
    return gen, seg, build_adapter("generator", gen, gen_opts), build_adapter("segmenter", seg, seg_opts)


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


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
                text = ", ".join(
                    f"{k}={'REQUIRED' if p.default is p.empty else repr(p.default)}" for k, p in opts.items()
                )
                click.echo(f"\n{name} options: {text}")


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
    info = default_registry().info("generator", name)
    click.echo(f"{name}: {info.description}")
    for k, p in info.options().items():
        click.echo(f"  option {k} = {'REQUIRED' if p.default is p.empty else repr(p.default)}")
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
    info = default_registry().info("segmenter", name)
    click.echo(f"{name}: {info.description}")
    for k, p in info.options().items():
        click.echo(f"  option {k} = {'REQUIRED' if p.default is p.empty else repr(p.default)}")
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
