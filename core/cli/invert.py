"""``gdx invert``: invert photos into a generator and save the inversions (docs/paint.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gdx.cli.options import friendly_errors
from gdx.hookspecs import hookimpl


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for inversion.safetensors, inversion.json and NNNN-photo.png / NNNN-reconstruction.png.")
@click.option("--gen", "gen", default=None, help="Registered generator (default: scene, else toy).")
@click.option("--gen-opt", "gen_opts", multiple=True, metavar="KEY=VALUE", help="Generator option, repeatable.")
@click.option("--layer", default=None, help="Layer whose feature map is optimised (default: the generator's default layer).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the candidate latents (the warm start).")
@click.option("--candidates", default=32, show_default=True, type=click.IntRange(1, 100000))
@click.option("--latent-steps", default=50, show_default=True, type=click.IntRange(0, 100000))
@click.option("--feature-steps", default=150, show_default=True, type=click.IntRange(0, 100000))
@click.option("--anchor", default=0.1, show_default=True, type=click.FloatRange(0),
              help="Pull of the optimised features towards the generator's own (keeps them paintable).")
@click.option("--tolerance", default=1e-3, show_default=True, type=click.FloatRange(0),
              help="Stop early once every image's pixel MSE is below this.")
@click.option("--run", "run_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="A 'gdx run' folder: invert its generator for painting, with the concept prior of its paint "
                   "engine (so that erasing a concept removes it; docs/paint.md). --gen is ignored.")
@click.option("--prior-weight", default=0.5, show_default=True, type=click.FloatRange(0),
              help="Weight of the concept prior (with --run; 0 turns it off).")
@friendly_errors
def invert(images: tuple[str, ...], out: str, gen: str | None, gen_opts: tuple[str, ...], layer: str | None, seed: int,
           candidates: int, latent_steps: int, feature_steps: int, anchor: float, tolerance: float,
           run_dir: str | None, prior_weight: float) -> None:
    """Invert PNG/JPEG IMAGES into the generator, so that they can be edited like its samples.

    Each image is centre-cropped and resized to the generator's resolution. 'gdx paint
    --image FILE' opens one in GANPaint; gdx.Inversion.load reads the saved file. With
    --run, the inversion is made as GANPaint makes it (its layer and concept prior);
    without, the concept prior is off and erasing a concept removes less of it.
    """
    import torch

    from gdx.cli.options import DEFAULT_GENERATORS, adapter_spec, first_registered
    from gdx.inversion import invert as invert_images
    from gdx.photos import read_image
    from gdx.plots import to_uint8, write_png

    prior = None
    if run_dir is not None:
        from gdx.inversion import layer_for_edits
        from gdx.paint.models import engine_from_run
        from gdx.runs import RunFolder

        if gen:
            click.echo("note: --gen is ignored with --run (the run's generator is used)", err=True)
        manifest = RunFolder(run_dir).manifest()
        with torch.no_grad():
            engine = engine_from_run(run_dir)
        generator, name = engine.generator, manifest.generator.name
        layer = layer or layer_for_edits(generator, engine.layer)
        if prior_weight > 0:
            prior = engine.photo_prior(manifest.segmenter.build("segmenter"), weight=prior_weight)
            click.echo(f"concept prior: {prior.describe()}", err=True)
    else:
        name = gen or first_registered("generator", DEFAULT_GENERATORS)
        generator = adapter_spec("generator", name, tuple(gen_opts)).build("generator")
    with torch.no_grad():
        probe = generator.generate(generator.sample_latents(1, seed=0).to(generator.device))
    size = (int(probe.shape[-2]), int(probe.shape[-1]))
    photos = torch.cat([read_image(Path(p).read_bytes(), size=size) for p in images])
    inv = invert_images(generator, photos, layer=layer, seed=seed, candidates=candidates, latent_steps=latent_steps,
                        feature_steps=feature_steps, anchor=anchor, tolerance=tolerance, prior=prior,
                        progress=True)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    inv.save(folder / "inversion.safetensors")
    psnr = inv.psnr().tolist()
    for i in range(len(inv)):
        write_png(folder / f"{i:04d}-photo.png", to_uint8(inv.targets[i]))
        write_png(folder / f"{i:04d}-reconstruction.png", to_uint8(inv.reconstructions[i]))
    summary = {"generator": name, "layer": inv.layer, "images": [str(p) for p in images],
               "psnr": [round(v, 3) for v in psnr], "steps": list(inv.steps), "prior": inv.settings.prior}
    (folder / "inversion.json").write_text(json.dumps(summary, indent=2) + "\n")
    click.echo(f"inverted {len(inv)} image(s) into {name}:{inv.layer}; mean PSNR {sum(psnr) / len(psnr):.2f} dB "
               f"-> {folder}")


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(invert)
