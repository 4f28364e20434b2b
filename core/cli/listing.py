"""``gdx plugins | generators | segmenters | metrics``: what is installed, and each adapter's options."""

from __future__ import annotations

import click

from typing import TYPE_CHECKING, Any

from gdx.cli.options import adapter_spec, format_table, friendly_errors
from gdx.hookspecs import hookimpl
from gdx.manager import default_registry

if TYPE_CHECKING:
    from gdx.interfaces import Generator


@hookimpl
def register_commands(cli: click.Group) -> None:
    for command in (plugins, generators, segmenters, metrics):
        cli.add_command(command)


def _listing(kind: str, verbose: bool) -> None:
    reg = default_registry()
    packages = reg.plugin_packages()
    infos = reg.infos(kind)
    rows = [[name, packages.get(i.plugin, i.plugin), i.description] for name, i in infos.items()]
    click.echo(format_table(rows, ["name", "package", "description"]))
    if verbose:
        for name, info in infos.items():
            docs = info.option_docs()
            if docs:
                click.echo(f"\n{name} options:")
                for doc in docs:
                    click.echo(f"  {doc.line()}")


def _describe(kind: str, name: str, given: dict[str, Any] | None = None) -> None:
    """Print an adapter's description and its options: type, default, description, and the
    value passed with ``--gen-opt``/``--seg-opt`` where one was."""
    info = default_registry().info(kind, name)
    given = given or {}
    click.echo(f"{name}: {info.description}")
    for doc in info.option_docs():
        click.echo(f"  option {doc.line(repr(given[doc.name]) if doc.name in given else '')}")


def layer_shapes(generator: Generator) -> dict[str, tuple[int, ...]]:
    """Each layer's output shape for one sample (batch dimension dropped), from one forward."""
    import torch

    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for lname, module in generator.module.named_modules():
        if not lname:
            continue

        view = generator.feature_view(lname)  # what the engine's hooks see (tokens as maps, guided rows)

        def record(_m: Any, _i: Any, output: Any, lname: str = lname, view: Any = view) -> None:
            if view is not None:
                output = view.to_map(output)
            if isinstance(output, torch.Tensor):
                shapes.setdefault(lname, tuple(int(d) for d in output.shape[1:]))

        handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            generator.generate(generator.sample_latents(1, seed=0).to(generator.device))
    finally:
        for h in handles:
            h.remove()
    return shapes


def _layer_table(generator: Generator) -> str:
    shapes = layer_shapes(generator)
    steps = int(generator.steps_per_image)
    marks: dict[str | None, str] = {}
    if generator.paint_layer and generator.paint_layer != generator.default_layer:
        marks[generator.paint_layer] = "paint default (gdx paint)"
    marks.setdefault(generator.default_layer, "default (gdx run, gdx paint)" if generator.paint_layer
                     == generator.default_layer else "default (gdx run)")
    names = generator.layer_names()
    header = ""
    if steps > 1:
        # a multi-step generator: one row per block (its shape at step 0), the steps said once
        names = generator.block_names()
        header = (f"runs each block {steps} times per image (one call per step): name a layer BLOCK@K "
                  f"(K in 0..{steps - 1}), a step window for edits BLOCK@A-B (docs/diffusion.md)\n")
        for address, mark in list(marks.items()):
            if address:
                marks.setdefault(address.split("@")[0], f"{mark}: {address}")
    rows = []
    for lname in names:
        shape = shapes.get(lname)
        text = "x".join(map(str, shape)) if shape else "(no tensor output)"
        if shape and len(shape) == 3:
            text = f"{shape[0]} units x {shape[1]}x{shape[2]}"
        rows.append([lname, text, marks.get(lname, "")])
    return header + format_table(rows, ["layer" if steps <= 1 else "block", "output (units x h x w)", ""])


@click.command()
def plugins() -> None:
    """List installed plugins and the package each comes from."""
    reg = default_registry()
    packages = reg.plugin_packages()
    rows = []
    for name in reg.plugin_names():
        plugin = reg.pm.get_plugin(name)
        hooks = sorted(h.name for h in reg.pm.get_hookcallers(plugin) or [])
        rows.append([name, packages.get(name, ""), ", ".join(hooks)])
    click.echo(format_table(rows, ["plugin", "package", "hooks"]))


@click.command()
@click.argument("name", required=False)
@click.option("-v", "--verbose", is_flag=True, help="Show each adapter's options.")
@click.option("--gen-opt", "opts", multiple=True, metavar="KEY=VALUE", help="Options to build NAME with (to list its layers).")
@friendly_errors
def generators(name: str | None, verbose: bool, opts: tuple[str, ...]) -> None:
    """List generators; with NAME, build it and list its options and layers."""
    if name is None:
        _listing("generator", verbose)
        return
    spec = adapter_spec("generator", name, opts)
    _describe("generator", name, spec.options)
    generator = spec.build("generator")
    click.echo(_layer_table(generator))


@click.command()
@click.argument("name", required=False)
@click.option("-v", "--verbose", is_flag=True, help="Show each adapter's options.")
@click.option("--seg-opt", "opts", multiple=True, metavar="KEY=VALUE", help="Options to build NAME with (to list its labels).")
@friendly_errors
def segmenters(name: str | None, verbose: bool, opts: tuple[str, ...]) -> None:
    """List segmenters; with NAME, build it and list its options and labels."""
    if name is None:
        _listing("segmenter", verbose)
        return
    spec = adapter_spec("segmenter", name, opts)
    _describe("segmenter", name, spec.options)
    segmenter = spec.build("segmenter")
    click.echo(f"labels ({len(segmenter.labels)}): " + ", ".join(segmenter.labels))


@click.command()
@click.option("-v", "--verbose", is_flag=True)
def metrics(verbose: bool) -> None:
    """List metrics (dissection scores and image-quality metrics)."""
    _listing("metric", verbose)
