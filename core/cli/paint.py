"""``gdx paint``: the GANPaint app on a local web server."""

from __future__ import annotations


from pathlib import Path

import click

from gdx.cli.options import friendly_errors

from gdx.errors import GdxError, MissingDependencyError
from gdx.hookspecs import hookimpl


@click.command()
@click.option("--gen", "gen", default=None, help="Registered generator (default: scene, else toy). Ignored with --run.")
@click.option("--seg", "seg", default=None, help="Registered segmenter for the startup dissection (default: scene, else toy).")
@click.option("--gen-opt", "gen_opts", multiple=True, metavar="KEY=VALUE", help="Generator option, repeatable.")
@click.option("--seg-opt", "seg_opts", multiple=True, metavar="KEY=VALUE", help="Segmenter option, repeatable.")
@click.option("--run", "run_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="A 'gdx run' folder to take the generator and the unit ranking from.")
@click.option("--layer", default=None,
              help="Layer to paint on (default: the generator's paint layer, e.g. layer6 of the scene GAN; "
                   "with --run, that layer if the run has it, else the run's first layer).")
@click.option("--samples", default=300, show_default=True, type=click.IntRange(20, 100000),
              help="Samples for the startup dissection when no --run is given (cached).")
@click.option("--iou-min", default=None, type=click.FloatRange(0, 1),
              help="IoU a unit needs to be painted with for a concept (default: 0.02, the paint floor; docs/paint.md).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0 exposes it to the network).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default web browser.")
@click.option("--image", "image", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A PNG or JPEG to open as the canvas: inverted into the generator first (docs/paint.md).")
@friendly_errors
def paint(gen: str | None, seg: str | None, gen_opts: tuple[str, ...], seg_opts: tuple[str, ...],
          run_dir: str | None, layer: str | None, samples: int, iou_min: float | None, host: str, port: int,
          open_browser: bool, image: str | None) -> None:
    """Start GANPaint: brush concepts into generated images (docs/method.md, "GANPaint")."""
    try:
        import uvicorn

        from gdx.paint.server import create_app
    except ImportError as exc:
        raise MissingDependencyError(
            f"gdx paint needs the 'paint' extra ({exc.name} is missing): pip install 'gdx[paint]'"
        ) from None
    import torch

    from gdx.cli.options import DEFAULT_GENERATORS, DEFAULT_SEGMENTERS, adapter_spec, first_registered
    from gdx.paint.engine import PaintEngine
    from gdx.interfaces import Segmenter
    from gdx.paint.models import engine_from_run, quick_dissection
    from gdx.runs import RunFolder

    from gdx.paint.worker import ModelThread

    def build() -> tuple[PaintEngine, Segmenter]:
        # A context, not torch.set_grad_enabled(False): the command also runs in-process
        # (click's CliRunner, tools embedding gdx), where a global switch would leak. The
        # engine's edits run under their own no_grad.
        with torch.no_grad():
            folder: str | Path
            if run_dir is None:
                gen_name = gen or first_registered("generator", DEFAULT_GENERATORS)
                seg_name = seg or first_registered("segmenter", DEFAULT_SEGMENTERS)
                folder = quick_dissection(adapter_spec("generator", gen_name, tuple(gen_opts)),
                                           adapter_spec("segmenter", seg_name, tuple(seg_opts)), layer,
                                           samples=samples, log=lambda m: click.echo(f"no --run given: {m}", err=True))
            else:
                folder = run_dir
                if gen:
                    click.echo("note: --gen is ignored with --run (the run's generator is used)", err=True)
            # the run's segmenter: photos are inverted with the engine's concept prior (docs/paint.md)
            return engine_from_run(folder, layer, iou_min=iou_min), RunFolder(folder).manifest().segmenter.build("segmenter")

    # The startup dissection, the engine and every later edit run on one thread: torch on
    # several threads of one process is about twice as slow on a small CPU (gdx.paint.worker).
    model_thread = ModelThread()
    engine, segmenter = model_thread.call(build)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.secho(f"WARNING: listening on {host}: anyone who can reach this machine can use the model "
                    "(there is no authentication).", fg="red", err=True)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    click.echo(f"gdx paint: {len(engine.concepts)} concepts on {engine.layer} -> {url}", err=True)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    from gdx.paint.server import allowed_hosts

    photos = []
    if image is not None:
        from gdx.photos import read_image

        photos.append(model_thread.call(read_image, Path(image).read_bytes(), size=engine.image_size))
        click.echo(f"inverting {image} into {engine.generator.name} (a few seconds)", err=True)
    app = create_app(engine, hosts=allowed_hosts(host), photos=photos, model_thread=model_thread, segmenter=segmenter)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@hookimpl
def register_commands(cli: click.Group) -> None:
    for command in (paint,):
        cli.add_command(command)
