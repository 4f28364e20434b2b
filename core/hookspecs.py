"""Hook specifications: how a plugin adds generators, segmenters, metrics and commands.

Every hook gets a ``register`` callback (or the click group) so that a plugin
registers *factories*, not loaded models: listing plugins stays instant and no weights
are read until a model is asked for by name. A minimal plugin module::

    import gdx

    @gdx.hookimpl
    def register_generators(register):
        register("mygan", build_mygan)   # build_mygan(**options) -> gdx.Generator

and one entry point in its ``pyproject.toml``::

    [project.entry-points.gdx]
    mygan = "mygan_gdx"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import pluggy

class Register(Protocol):
    """The callback a ``register_*`` hook gets: ``register(name, factory, description=None)``."""

    def __call__(self, name: str, factory: Callable[..., Any], description: str | None = None) -> None: ...


hookspec = pluggy.HookspecMarker("gdx")
hookimpl = pluggy.HookimplMarker("gdx")


@hookspec
def register_generators(register: Register) -> None:
    """Register generator factories: ``register(name, factory, description=None)``.

    ``factory(**options)`` returns a :class:`gdx.Generator`; its keyword parameters are
    the generator's options (``gdx.load_generator(name, **options)``, or the generator
    option ``key=value`` on the command line). A parameter without a default is a
    required option. ``description`` defaults to the first line of the factory's
    docstring. A name another plugin already registered raises
    :class:`gdx.errors.DuplicateAdapterError`.
    """


@hookspec
def register_segmenters(register: Register) -> None:
    """Register segmenter factories: ``register(name, factory, description=None)``.

    ``factory(**options)`` returns a :class:`gdx.Segmenter`; its keyword parameters are
    the segmenter's options (``gdx.load_segmenter(name, **options)``, or the segmenter
    option ``key=value`` on the command line). Names are unique across plugins, as for
    :func:`register_generators`.
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Register metric factories: ``register(name, factory, description=None)``.

    Dissection metrics (kind ``"dissection"``) are built by the engine with
    ``factory(context)``; quality metrics with ``factory(**options)``. Names are unique
    across plugins, as for :func:`register_generators`.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add sub-commands to the ``gdx`` click group ``cli``.

    Called once, the first time the CLI lists or looks up its commands, built-in command
    plugins first. Use ``@cli.command()`` or ``cli.add_command(...)``; a
    :class:`gdx.errors.GdxError` raised here skips this plugin's commands with a warning
    instead of breaking the CLI.
    """
