"""Plugin loading and the registries of adapters.

A :class:`PluginRegistry` owns one pluggy ``PluginManager``. The default registry
(:func:`default_registry`) loads the built-in plugins and the ``gdx`` entry points;
an embedding tool can build its own with ``PluginRegistry(plugins=[...])`` and no
global state is touched. ``GDX_LOAD_PLUGINS`` (comma-separated distribution or entry
point names, empty for none) restricts which entry points load.

Two plugins registering the same adapter name is an error
(:class:`~gdx.errors.DuplicateAdapterError`), never a silent replacement. Messages
speak of options and adapter names ("the generator option `weights=...`", "the
generator `stylegan2`"), which the CLI maps onto its flags.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import os
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, overload

import pluggy

from gdx import hookspecs
from gdx.errors import AdapterOptionError, DuplicateAdapterError, UnknownAdapterError

if TYPE_CHECKING:
    from gdx.interfaces import Generator, Segmenter

#: Built-in plugin modules, registered through the same hooks as third-party ones.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "gdx.plugins.generators.toy",
    "gdx.plugins.generators.progan",
    "gdx.plugins.generators.stylegan2",
    "gdx.plugins.generators.vae",
    "gdx.plugins.generators.diffusion",
    "gdx.plugins.generators.scene",
    "gdx.plugins.segmenters.toy",
    "gdx.plugins.segmenters.upernet",
    "gdx.plugins.segmenters.deeplab",
    "gdx.plugins.segmenters.onnx",
    "gdx.plugins.segmenters.scene",
    "gdx.plugins.metrics.dissection",
    "gdx.plugins.metrics.frechet",
    "gdx.plugins.metrics.realism",
)

KINDS = ("generator", "segmenter", "metric")


@dataclasses.dataclass(frozen=True)
class AdapterInfo:
    """One registered factory: what ``gdx generators`` & co. list."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    description: str

    def options(self) -> dict[str, inspect.Parameter]:
        """Keyword options the factory takes (its signature, minus ``*args``/``**kw``)."""
        params = inspect.signature(self.factory).parameters
        return {
            n: p
            for n, p in params.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }

    def accepts_any_option(self) -> bool:
        params = inspect.signature(self.factory).parameters.values()
        return any(p.kind is p.VAR_KEYWORD for p in params)

    def option_docs(self) -> list[OptionDoc]:
        """Each option's type and default (from the signature) and its one-line description
        (from the factory's docstring: see :func:`option_descriptions`)."""
        described = option_descriptions(inspect.getdoc(self.factory) or "", list(self.options()))
        return [OptionDoc(n, annotation_text(p), describe_default(p), described.get(n, ""))
                for n, p in self.options().items()]


@dataclasses.dataclass(frozen=True)
class OptionDoc:
    """One adapter option as the listings show it."""

    name: str
    type: str
    default: str
    description: str

    def line(self, passed: str = "") -> str:
        """``name (type, default D)[ = passed]: description`` on one line."""
        text = f"{self.name} ({self.type}, default {self.default})" if self.default != "REQUIRED" else \
            f"{self.name} ({self.type}, REQUIRED)"
        if passed:
            text += f" = {passed} (passed)"
        return f"{text}: {self.description or '(not described by the adapter)'}"


def annotation_text(p: inspect.Parameter) -> str:
    """The option's type as written in the factory's signature (else the default's type)."""
    ann = p.annotation
    if ann is p.empty:
        return "any" if p.default in (p.empty, None) else type(p.default).__name__
    text = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
    return text.replace("typing.", "").replace("Optional[", "").rstrip("]") if "Optional[" in text else text


_INLINE = re.compile(r"((?:``\w+``\s*/\s*)*``\w+``)\s*(?:\(([^)]*)\))?\s*:\s*")
_NAMES = re.compile(r"``(\w+)``")
_ARG = re.compile(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$")


def option_descriptions(doc: str, names: list[str]) -> dict[str, str]:
    """One-line descriptions of the options ``names`` found in a factory docstring.

    Three layouts are read: a Google-style ``Args:`` (or ``Options:``) section
    (``name (type): text``, continuation lines indented deeper); inline ReST runs of a
    double-backquoted name, a colon and text (two names joined by ``/`` share the
    text), each running to the end of its sentence or the next such name; and plain
    ``name: text`` lines.
    """
    wanted = set(names)
    out: dict[str, str] = {}
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() in ("Args:", "Arguments:", "Options:", "Parameters:"):
            indent = None
            current = ""
            for follow in lines[i + 1 :]:
                if not follow.strip():
                    break
                depth = len(follow) - len(follow.lstrip())
                indent = depth if indent is None else indent
                m = _ARG.match(follow)
                if depth <= indent and m and m.group(1) in wanted:
                    current = m.group(1)
                    out[current] = m.group(2).strip()
                elif depth < indent:
                    break
                elif current:
                    out[current] += " " + follow.strip()
    flat = " ".join(doc.split())
    marks = list(_INLINE.finditer(flat))
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(flat)
        text = flat[m.end() : end].strip().rstrip(";,").strip()
        text = re.split(r"(?<=[a-z0-9)\]])\.\s+(?=[A-Z`])", text)[0]  # the first sentence
        for name in _NAMES.findall(m.group(1)):
            if name in wanted and name not in out:
                out[name] = text
    for name in _NAMES.findall(flat):  # ``name`` (description) in running text
        if name in wanted and name not in out:
            found = re.search(rf"``{name}``\s*\(([^)]*)\)", flat)
            if found:
                out[name] = found.group(1).strip()
    for line in lines:
        m = _ARG.match(line)
        if m and m.group(1) in wanted and m.group(1) not in out:
            out[m.group(1)] = m.group(2).strip()
    return {n: _one_line(t) for n, t in out.items() if t}


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    if text.endswith("."):
        text = text[:-1]
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].strip() if (text or "").strip() else ""


class PluginRegistry:
    """Plugins, and the generator/segmenter/metric factories they registered.

    >>> reg = PluginRegistry(plugins=[my_plugin_module], load_entrypoints=False)
    >>> gen = reg.load_generator("mygan", weights="g.pth")
    """

    def __init__(
        self,
        plugins: Iterable[Any] = (),
        *,
        builtins: bool = True,
        load_entrypoints: bool | None = None,
    ) -> None:
        self.pm = pluggy.PluginManager("gdx")
        self.pm.add_hookspecs(hookspecs)
        #: Plugin name -> the distribution its entry point came from.
        self._distributions: dict[str, importlib.metadata.Distribution] = {}
        if builtins:
            for modname in DEFAULT_PLUGINS:
                self.pm.register(importlib.import_module(modname), name=modname)
        if load_entrypoints is None:
            load_entrypoints = True
        if load_entrypoints:
            self._load_entrypoints()
        for plugin in plugins:
            self.pm.register(plugin)
        # A misspelt hook (register_generator) must fail loudly, not be ignored.
        self.pm.check_pending()
        self._infos: dict[str, dict[str, AdapterInfo]] | None = None

    def _load_entrypoints(self) -> None:
        allowed = os.environ.get("GDX_LOAD_PLUGINS")
        wanted = None if allowed is None else {s.strip() for s in allowed.split(",") if s.strip()}
        for ep in importlib.metadata.entry_points(group="gdx"):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else ""
            if wanted is not None and ep.name not in wanted and dist_name not in wanted:
                continue
            if self.pm.get_plugin(ep.name) is not None:
                continue
            self.pm.register(ep.load(), name=ep.name)
            if dist is not None:
                self._distributions[ep.name] = dist

    # -- collection -------------------------------------------------------------
    def _collect(self) -> dict[str, dict[str, AdapterInfo]]:
        if self._infos is not None:
            return self._infos
        infos: dict[str, dict[str, AdapterInfo]] = {k: {} for k in KINDS}
        hooks = {
            "generator": self.pm.hook.register_generators,
            "segmenter": self.pm.hook.register_segmenters,
            "metric": self.pm.hook.register_metrics,
        }
        for kind, hook in hooks.items():
            for impl in hook.get_hookimpls():
                plugin_name = impl.plugin_name

                def register(name: str, factory: Callable[..., Any], description: str | None = None,
                             *, _kind: str = kind, _plugin: str = plugin_name) -> None:
                    if not callable(factory):
                        raise TypeError(f"plugin {_plugin!r} registered {_kind} {name!r} with a non-callable factory")
                    earlier = infos[_kind].get(name)
                    if earlier is not None:
                        raise DuplicateAdapterError(
                            _kind, name, self._describe_plugin(earlier.plugin), self._describe_plugin(_plugin)
                        )
                    infos[_kind][name] = AdapterInfo(
                        _kind, name, factory, _plugin, description or _first_line(factory.__doc__)
                    )

                impl.function(register=register)
        self._infos = infos
        return infos

    def infos(self, kind: str) -> dict[str, AdapterInfo]:
        """Registered factories of ``kind`` ("generator", "segmenter" or "metric") by name."""
        return dict(sorted(self._collect()[kind].items()))

    def info(self, kind: str, name: str) -> AdapterInfo:
        infos = self._collect()[kind]
        if name not in infos:
            raise UnknownAdapterError(kind, name, infos)
        return infos[name]

    def plugin_names(self) -> list[str]:
        return sorted(n for n, _ in self.pm.list_name_plugin())

    def plugin_packages(self) -> dict[str, str]:
        """Plugin name -> distribution that provides it ("gdx (built-in)" for the built-ins)."""
        out: dict[str, str] = {}
        for name in self.plugin_names():
            dist = self._distributions.get(name)
            if dist is not None:
                out[name] = f"{dist.metadata['Name']} {dist.version}"
            else:
                out[name] = "gdx (built-in)" if name.startswith("gdx.") else ""
        return out

    def _describe_plugin(self, name: str) -> str:
        """A plugin's name for messages, with its package when an entry point brought it."""
        dist = self._distributions.get(name)
        if dist is not None:
            return f"{name!r} ({dist.metadata['Name']} {dist.version})"
        plugin = self.pm.get_plugin(name)
        if plugin is not None and name == str(id(plugin)):  # pluggy's name for an unnamed object
            return f"{name!r} ({type(plugin).__module__}.{type(plugin).__qualname__} object)"
        return repr(name)

    # -- building ---------------------------------------------------------------
    @overload
    def build(self, kind: Literal["generator"], name: str, **options: Any) -> Generator: ...
    @overload
    def build(self, kind: Literal["segmenter"], name: str, **options: Any) -> Segmenter: ...
    @overload
    def build(self, kind: str, name: str, **options: Any) -> Any: ...

    def build(self, kind: str, name: str, **options: Any) -> Any:
        """Check ``options`` against the factory of ``kind`` ``name`` and call it."""
        info = self.info(kind, name)
        ablation = None
        if kind == "generator":
            # Every generator takes ``ablate=`` (gdx.ablation): applied here, never seen by the factory.
            from gdx.ablation import split_ablation

            options, ablation = split_ablation(options)
        check_options(info, options)
        built = info.factory(**options)
        return ablation.apply(built) if ablation is not None else built

    def load_generator(self, name: str, **options: Any) -> Generator:
        """Build the generator ``name`` with ``options`` (its factory's keyword parameters)."""
        return self.build("generator", name, **options)

    def load_segmenter(self, name: str, **options: Any) -> Segmenter:
        """Build the segmenter ``name`` with ``options`` (its factory's keyword parameters)."""
        return self.build("segmenter", name, **options)


def check_options(info: AdapterInfo, options: dict[str, Any]) -> None:
    """Raise :class:`AdapterOptionError` for an option the factory does not take.

    Every generator also takes ``ablate=`` (:mod:`gdx.ablation`), which the registry applies.
    """
    if info.accepts_any_option():
        return
    valid = info.options()
    for key in options:
        if key not in valid and not (info.kind == "generator" and key == "ablate"):
            listing = ", ".join(f"{k}={describe_default(p)}" for k, p in valid.items()) or "(none)"
            raise AdapterOptionError(
                f"{info.kind} {info.name!r} has no option {key!r}. Its options: {listing}"
            )
    missing = [k for k, p in valid.items() if p.default is p.empty and k not in options]
    if missing:
        # Each option keeps its own "the generator option `KEY=...`" so that the CLI can
        # turn every one into a flag.
        rest = "".join(f" and the {info.kind} option `{m}=...`" for m in missing[1:])
        raise AdapterOptionError(
            f"{info.kind} {info.name!r} needs the {info.kind} option(s) `{missing[0]}=...`{rest}"
        )


def describe_default(p: inspect.Parameter) -> str:
    """An option's default as the listings show it (REQUIRED when there is none)."""
    return "REQUIRED" if p.default is p.empty else repr(p.default)


def parse_option_value(info: AdapterInfo, key: str, text: str) -> Any:
    """Turn the string ``text`` of the option ``key=text`` into the type the factory expects."""
    param = info.options().get(key)
    if param is None and info.kind == "generator" and key == "ablate":
        from gdx.ablation import UnitAblation

        return str(UnitAblation.parse(text))  # a repair.json is read now: run.json keeps the units, not the path
    if param is None:
        if info.accepts_any_option():
            return _guess(text)
        check_options(info, {key: text})
    ann = param.annotation if param is not None else inspect.Parameter.empty
    if isinstance(ann, str):
        ann_text = ann
    else:
        ann_text = getattr(ann, "__name__", str(ann))
    default = param.default if param is not None else None
    try:
        if "bool" in ann_text or isinstance(default, bool):
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if ann_text.startswith("int") or (type(default) is int):
            return int(text)
        if ann_text.startswith("float") or isinstance(default, float):
            return float(text)
    except ValueError as exc:
        raise AdapterOptionError(
            f"{info.kind} {info.name!r} option {key}={text!r}: {exc}. "
            f"Expected {ann_text or type(default).__name__}."
        ) from None
    if ann is inspect.Parameter.empty and default is None:
        return _guess(text)
    return text


def _guess(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse_options(info: AdapterInfo, pairs: Iterable[str]) -> dict[str, Any]:
    """Parse ``["key=value", ...]`` for ``info``'s factory."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise AdapterOptionError(
                f"option {pair!r} for {info.kind} {info.name!r} is not key=value "
                f"(e.g. the {info.kind} option `weights=model.pth`)"
            )
        key, value = pair.split("=", 1)
        out[key.strip()] = parse_option_value(info, key.strip(), value)
    return out


_default: PluginRegistry | None = None


def default_registry() -> PluginRegistry:
    """The process-wide registry: built-ins plus installed ``gdx`` entry points."""
    global _default
    if _default is None:
        _default = PluginRegistry()
    return _default


def reset_default_registry() -> None:
    """Forget the default registry (tests; after installing a plugin at run time)."""
    global _default
    _default = None
