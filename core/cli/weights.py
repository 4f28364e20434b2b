"""``gdx weights``: the published checkpoints each adapter knows, and where gdx looks for them.

The lists belong to the adapters: every module in :data:`WEIGHTS_MODULES` exposes a
``known_weights()`` function returning
:class:`gdx.plugins.generators.downloads.KnownWeights` entries. Only the CLI imports
adapter modules directly; the engine below it never does.
"""

from __future__ import annotations

import importlib

import click

from gdx.cli.options import cli_message, format_table, friendly_errors
from gdx.errors import UsageError
from gdx.hookspecs import hookimpl

#: Adapter modules with a ``known_weights()`` function, in the order they are listed.
WEIGHTS_MODULES: tuple[str, ...] = (
    "gdx.plugins.generators.progan",
    "gdx.plugins.generators.stylegan2",
    "gdx.plugins.segmenters.upernet",
    "gdx.plugins.segmenters.deeplab",
)

#: Which flag passes options to an adapter of each module.
_FLAG = {"generators": "--gen-opt", "segmenters": "--seg-opt"}


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(weights)


def _sha_text(sha256: str | None, prefix: str | None) -> str:
    if sha256:
        return sha256
    if prefix:
        return f"unknown (starts {prefix})"
    return "unknown"


@click.command()
@click.argument("adapter", required=False)
@friendly_errors
def weights(adapter: str | None) -> None:
    """List the known checkpoints per adapter (file, size, SHA-256), the cache folder, and how to place a file."""
    from gdx.plugins.generators.downloads import cache_dir

    cache = cache_dir()
    rows, notes, flags = [], [], {}
    known: list[str] = []
    for modname in WEIGHTS_MODULES:
        module = importlib.import_module(modname)
        flag = _FLAG[modname.split(".")[2]]
        for w in module.known_weights():
            if w.adapter not in known:
                known.append(w.adapter)
            if adapter is not None and w.adapter != adapter:
                continue
            flags[w.adapter] = flag
            if w.in_cache:
                where = "in the cache" if (cache / w.file).exists() else "not in the cache"
            else:
                where = f"{flag} {w.option}"
            rows.append([w.adapter, w.name, w.file, w.size or "unknown", _sha_text(w.sha256, w.sha256_prefix), where])
            if w.note and (w.adapter, w.note) not in notes:
                notes.append((w.adapter, w.note))
    if adapter is not None and not rows:
        raise UsageError(f"no known weights for adapter {adapter!r}; adapters with a list: {', '.join(known)}.")
    click.echo(format_table(rows, ["adapter", "name", "file", "size", "sha256", "where / how to pass"]))
    click.echo("")
    for name, note in notes:
        click.echo(f"{name}: {cli_message(note)}")
    click.echo("")
    click.echo(f"cache folder: {cache}  (set GDX_CACHE to move it; it holds weights/ under GDX_CACHE)")
    click.echo("A file obtained elsewhere (a colleague, a mirror, an archive):")
    click.echo(f"  * a file marked 'in the cache' / 'not in the cache': copy it into {cache} under the file name shown;")
    click.echo("    then the short name works (e.g. --gen-opt weights=churchoutdoor) and nothing is downloaded;")
    click.echo("  * any file or folder: pass its path, e.g. --gen-opt weights=./churchoutdoor_lsun.pth or")
    click.echo("    --seg-opt weights=./ade20k-resnet50-upernet/ (an existing path is always used as it is);")
    click.echo("  * check a copy with `sha256sum FILE` against the sha256 column; progan also takes --gen-opt sha256=HEX.")
    click.echo("Converting other formats (an NVIDIA .pkl, a diffusers folder, a CSAIL pair): docs/adapters.md.")
