"""The ``gdx`` command line: a click group whose commands come from plugins.

``gdx run`` dissects layers of a registered generator against a registered segmenter;
``gdx plugins|generators|segmenters|metrics`` list what is installed; intervention,
report and paint commands live in their own modules. Every module here adds its
commands through the ``register_commands`` hook, as a third-party plugin does. Every
:class:`gdx.GdxError` becomes one line on stderr and exit code 1, never a traceback.
Nothing outside ``gdx.cli`` imports it (an import-linter contract checks).
"""

from gdx.cli.main import GdxGroup, cli, main

__all__ = ["GdxGroup", "cli", "main"]
