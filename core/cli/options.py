"""Pieces every gdx command shares: model options, adapter building, one-line errors.

Kept apart from :mod:`gdx.cli` so that command modules (intervention, report, paint)
can import them while ``gdx.cli`` imports those modules to attach their commands.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import click


from gdx.errors import GdxError, UsageError
from gdx.interfaces import Generator, Segmenter
from gdx.manager import AdapterInfo, default_registry, parse_options
from gdx.runs import AdapterSpec

F = TypeVar("F", bound=Callable[..., Any])

#: Preferred defaults for ``gdx run``: the bundled scene world, else the synthetic toy pair.
DEFAULT_GENERATORS = ("scene", "toy")
DEFAULT_SEGMENTERS = ("scene", "toy")


#: How the library's words for parameters and options read on the command line. The
#: library names Python parameters (``resume=True``) and adapter options ("generator
#: option `weights=...`"); only the CLI knows its flags.
_FLAG_WORDS: tuple[tuple[str, str], ...] = (
    (r"`resume=True`", "--resume"),
    (r"`overwrite=True`", "--overwrite"),
    (r"another `out` folder", "another --out"),
    (r"`layer=NAME`", "--layer NAME"),
    (r"`layer=`", "--layer"),
    (r"the generator option\(s\) ", "--gen-opt "),
    (r"the segmenter option\(s\) ", "--seg-opt "),
    (r"the generator option ", "--gen-opt "),
    (r"the segmenter option ", "--seg-opt "),
    (r"generator option\(s\) ", "--gen-opt "),
    (r"segmenter option\(s\) ", "--seg-opt "),
    (r"generator option ", "--gen-opt "),
    (r"segmenter option ", "--seg-opt "),
    (r"the generator `([^`]+)`", r"--gen \1"),
    (r"the segmenter `([^`]+)`", r"--seg \1"),
)


def cli_message(message: str) -> str:
    """A library error message in command-line words (flags instead of parameters)."""
    for pattern, flag in _FLAG_WORDS:
        message = re.sub(pattern, flag, message)
    return re.sub(r"--(gen|seg)-opt `([^`]+)`", r"--\1-opt \2", message)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn gdx's own errors into ``click.ClickException`` (one line, exit 1), in CLI words."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GdxError as exc:
            raise click.ClickException(cli_message(str(exc))) from None

    return wrapper


def first_registered(kind: str, preferred: tuple[str, ...]) -> str:
    infos = default_registry().infos(kind)
    for name in preferred:
        if name in infos:
            return name
    return next(iter(infos))


def adapter_spec(kind: str, name: str, pairs: tuple[str, ...]) -> AdapterSpec:
    """A registered adapter's name and its ``key=value`` option strings, parsed for its factory."""
    info: AdapterInfo = default_registry().info(kind, name)
    return AdapterSpec(name, parse_options(info, pairs))


def build_adapter(kind: Literal["generator", "segmenter"], name: str, pairs: tuple[str, ...]) -> Any:
    """Build a registered adapter from its name and ``key=value`` option strings."""
    return adapter_spec(kind, name, pairs).build(kind)


def parse_threshold(text: str) -> float | str:
    if text.strip().lower() == "iqr":
        return "iqr"
    try:
        q = float(text)
    except ValueError:
        raise UsageError(f"--threshold {text!r} is neither a quantile like 0.99 nor 'iqr'") from None
    if not 0 < q < 1:
        raise UsageError(f"--threshold {q} must be strictly between 0 and 1 (0.99 = each unit's top 1%)")
    return q


def model_options(fn: F) -> F:
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


@dataclass
class Models:
    """The adapters a command built, with the specs that rebuild them (for run.json)."""

    generator_spec: AdapterSpec
    segmenter_spec: AdapterSpec
    generator: Generator
    segmenter: Segmenter


def build_models(gen: str | None, seg: str | None, gen_opts: tuple[str, ...], seg_opts: tuple[str, ...],
                 device: str | None = None) -> Models:
    """Build ``--gen``/``--seg`` with their options; defaults: the bundled scene world, else toy."""
    gen_spec = adapter_spec("generator", gen or first_registered("generator", DEFAULT_GENERATORS), gen_opts)
    seg_spec = adapter_spec("segmenter", seg or first_registered("segmenter", DEFAULT_SEGMENTERS), seg_opts)
    generator = gen_spec.build("generator")
    segmenter = seg_spec.build("segmenter")
    if device:
        generator.to(device)
        segmenter.to(device)
    return Models(gen_spec, seg_spec, generator, segmenter)


def load_models(gen: str | None, seg: str | None, gen_opts: tuple[str, ...], seg_opts: tuple[str, ...],
                device: str | None = None) -> tuple[str, str, Generator, Segmenter]:
    """(generator name, segmenter name, generator, segmenter) as :func:`build_models` builds them."""
    m = build_models(gen, seg, gen_opts, seg_opts, device)
    return m.generator_spec.name, m.segmenter_spec.name, m.generator, m.segmenter


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
