"""Pieces every gdx command shares: model options, adapter building, one-line errors.

Kept apart from :mod:`gdx.cli` so that command modules (intervention, report, paint)
can import them while ``gdx.cli`` imports those modules to attach their commands.
"""

from __future__ import annotations

import functools
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


def load_models(gen: str | None, seg: str | None, gen_opts, seg_opts, device: str | None = None):
    """(generator name, segmenter name, generator, segmenter); defaults: the bundled scene world, else toy."""
    gen = gen or first_registered("generator", DEFAULT_GENERATORS)
    seg = seg or first_registered("segmenter", DEFAULT_SEGMENTERS)
    generator = build_adapter("generator", gen, gen_opts)
    segmenter = build_adapter("segmenter", seg, seg_opts)
    if device:
        generator.to(device)
        segmenter.to(device)
    return gen, seg, generator, segmenter


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
