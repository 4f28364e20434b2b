"""``gdx report`` and ``gdx compare``: static HTML views of finished runs."""

from __future__ import annotations

from pathlib import Path

import click

from gdx.cli.options import friendly_errors
from gdx.hookspecs import hookimpl


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", default=None, type=click.Path(file_okay=False), help="Output folder (default RUN_DIR/report).")
@click.option("--top-k", default=8, show_default=True, type=click.IntRange(1, 100), help="Samples per unit strip.")
@click.option("--image-size", default=None, type=click.IntRange(16, 512), help="Tile edge in pixels (default: 96-128 px, narrower when --top-k tiles would not fit a 1400 px window).")
@click.option("--no-images", is_flag=True, help="Skip regenerating samples (tables and charts only).")
@click.option("--overlay", is_flag=True, help="Also tint, in each tile, where the run's segmenter finds the unit's label.")
@friendly_errors
def report(run_dir: str, out: str | None, top_k: int, image_size: int | None, no_images: bool, overlay: bool) -> None:
    """Write a static HTML report of RUN_DIR (a 'gdx run --out' folder); opens offline."""
    import torch

    from gdx.report import write_report

    # A context, not torch.set_grad_enabled(False): the command also runs in-process
    # (click's CliRunner, tools embedding gdx), where a global switch would leak.
    with torch.no_grad():
        index = write_report(run_dir, out, top_k=top_k, image_size=image_size, images=not no_images,
                             overlay=overlay, progress=lambda msg: click.echo(msg, err=True))
    click.echo(str(index))


@click.command()
@click.argument("a", type=click.Path(exists=True, file_okay=False))
@click.argument("b", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", default=None, type=click.Path(file_okay=False), help="Output folder (default compare-A-B beside A).")
@friendly_errors
def compare(a: str, b: str, out: str | None) -> None:
    """Compare two runs or layers side by side (A and B: run folders with one layer, or RUN/LAYER folders)."""
    from gdx.report import write_compare

    out = out or str(Path(a).parent / f"compare-{Path(a).name}-{Path(b).name}")
    click.echo(str(write_compare(a, b, out)))


@hookimpl
def register_commands(cli: click.Group) -> None:
    for command in (report, compare):
        cli.add_command(command)
