"""``gdx plugins | generators | segmenters | metrics``: what is installed, and each adapter's options."""

from __future__ import annotations

import click

from gdx.cli.options import build_adapter, format_table, friendly_errors
from gdx.hookspecs import hookimpl
from gdx.manager import default_registry, describe_default


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
    _describe("generator", name)
    generator = build_adapter("generator", name, opts)
    click.echo("layers: " + ", ".join(generator.layer_names()))


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
    _describe("segmenter", name)
    segmenter = build_adapter("segmenter", name, opts)
    click.echo(f"labels ({len(segmenter.labels)}): " + ", ".join(segmenter.labels))


@click.command()
@click.option("-v", "--verbose", is_flag=True)
def metrics(verbose: bool) -> None:
    """List metrics (dissection scores and image-quality metrics)."""
    _listing("metric", verbose)
