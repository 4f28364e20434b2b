"""The ``gdx`` click group and the console-script entry point.

Every command, built-in or third-party, is added through the ``register_commands``
hook. The built-in command modules (:data:`BUILTIN_COMMAND_PLUGINS`) are registered
as plugins by name, as simonw/llm loads its ``DEFAULT_PLUGINS``, the first time the
group is asked for its commands, so ``import gdx.cli`` stays cheap and a broken
third-party plugin cannot break the built-in commands.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from gdx.errors import GdxError
from gdx.manager import PluginRegistry, default_registry

#: Modules whose ``register_commands`` hook adds the built-in commands.
BUILTIN_COMMAND_PLUGINS: tuple[str, ...] = (
    "gdx.cli.run",
    "gdx.cli.listing",
    "gdx.cli.intervene",
    "gdx.cli.report",
    "gdx.cli.paint",
    "gdx.cli.invert",
    "gdx.cli.weights",
)


def register_builtin_commands(registry: PluginRegistry) -> None:
    """Register the built-in command modules with ``registry`` (idempotent)."""
    for modname in BUILTIN_COMMAND_PLUGINS:
        if registry.pm.get_plugin(modname) is None:
            registry.pm.register(importlib.import_module(modname), name=modname)


class GdxGroup(click.Group):
    """A click group that adds its commands lazily, the first time it is used."""

    _commands_loaded = False

    def load_commands(self) -> None:
        """Call ``register_commands`` on every plugin (built-ins first), once."""
        if self._commands_loaded:
            return
        self._commands_loaded = True
        registry = default_registry()
        register_builtin_commands(registry)
        for impl in reversed(registry.pm.hook.register_commands.get_hookimpls()):
            try:
                impl.function(cli=self)
            except GdxError as exc:  # a broken plugin must not break the whole CLI
                click.echo(f"warning: commands of plugin {impl.plugin_name!r} not loaded: {exc}", err=True)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.load_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self.load_commands()
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        """Every command, third-party ones too, ends in one line on error (see ``friendly_errors``)."""
        from gdx.cli.options import one_line_errors

        with one_line_errors():
            return super().invoke(ctx)


@click.group(cls=GdxGroup)
@click.version_option(package_name="gdx")
def cli() -> None:
    """gdx: dissect and steer generative image models (GAN Dissection and friends).

    The method is described in docs/ of the gdx repository (dissection.md,
    intervention.md, paint.md).
    """


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    try:
        return cli.main(args=argv, prog_name="gdx", standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        click.echo("interrupted", err=True)
        sys.exit(130)
