"""Pieces every gdx command shares: model options, adapter building, one-line errors.

Kept apart from :mod:`gdx.cli` so that command modules (intervention, report, paint)
can import them while ``gdx.cli`` imports those modules to attach their commands.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import click


from gdx.errors import DeviceError, GdxError, UsageError
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


#: Set to 1 to see the traceback of an unexpected error instead of its one-line summary.
DEBUG_ENV = "GDX_DEBUG"

#: What to do about an OSError, by errno.
_OS_FIXES: dict[int, str] = {
    errno.ENOSPC: "the disk is full: free some space or choose a folder on another disk (--out)",
    errno.EDQUOT: "the disk quota is used up: free some space or choose another folder (--out)",
    errno.EROFS: "the file system is read-only: choose a folder you can write (--out)",
    errno.EACCES: "permission denied: choose a folder you may write, or fix its permissions",
    errno.EPERM: "not permitted: choose a folder you may write, or fix its permissions",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path or option value",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "a folder stands where a file is expected: check the path",
    errno.EEXIST: "something is already there: choose another path",
    errno.EIO: "an input/output error (a damaged disk or a network folder gone): check the disk",
}


def error_line(exc: BaseException) -> str:
    """The one line the CLI prints for an exception that reached a command's top (long values cut)."""
    return re.sub(r"\S{160,}", lambda m: f"{m.group(0)[:60]}...({len(m.group(0))} characters)", _error_text(exc))


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, GdxError):
        return cli_message(str(exc))
    if isinstance(exc, OSError) and exc.errno is not None:
        where = exc.filename if exc.filename is not None else ""
        fix = _OS_FIXES.get(exc.errno, f"{exc.strerror or os.strerror(exc.errno)}: check the path and the disk")
        return f"{_short(where)}: {fix}" if where else fix
    if isinstance(exc, MemoryError):
        return "out of memory: lower --samples or --batch-size, or use a machine with more memory"
    if isinstance(exc, RecursionError):
        return "an input nests too deeply to read (a damaged or hostile file?): check the files you passed"
    return (f"unexpected error ({type(exc).__name__}: {_short(str(exc))}); this is a bug in gdx or a plugin. "
            f"Run again with {DEBUG_ENV}=1 for the traceback.")


def _short(text: object, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} characters)"


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every error that reaches a command into ``click.ClickException``: one line, exit 1.

    gdx's own errors are put in CLI words; an ``OSError`` names the file and what to do; an
    unexpected exception (a bug) says so and how to see its traceback (``GDX_DEBUG=1``).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with one_line_errors():
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """The one error path of the CLI: click's own exceptions pass, anything else becomes one line.

    Used by :func:`friendly_errors` (a command run on any click group) and by the ``gdx``
    group itself (so third-party commands end the same way).
    """
    try:
        yield
    except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except Exception as exc:
        if os.environ.get(DEBUG_ENV) and not isinstance(exc, GdxError):
            raise
        raise click.ClickException(error_line(exc)) from None


def available_devices() -> list[str]:
    """The torch devices this machine has (``cpu``, each ``cuda:N``, ``mps``)."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used on this machine (None when it can), listing what it has."""
    import torch

    have = ", ".join(available_devices())
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        return f"{_short(device, 60)!r} is not a torch device; this machine has: {have}"
    name = parsed.type if parsed.index is None else f"{parsed.type}:{parsed.index}"
    if parsed.type == "cpu":
        ok = parsed.index in (None, 0)
    elif parsed.type == "cuda" and parsed.index is None:
        ok = "cuda:0" in available_devices()
    else:
        ok = name in available_devices()
    return None if ok else f"{device!r}: this machine has no such device; it has: {have}"


def check_device(device: str | None) -> str | None:
    """``device`` if it names a torch device this machine has, else :class:`DeviceError` listing them."""
    if device is not None:
        problem = device_problem(device)
        if problem:
            raise DeviceError(f"--device {problem}")
    return device


def _device_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    problem = None if value is None else device_problem(value)
    if problem:
        raise click.BadParameter(problem)
    return value


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
        click.option("--device", default=None, callback=_device_callback,
                     help="torch device, e.g. cpu or cuda:0 (default: where the model is); checked against this machine's."),
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
