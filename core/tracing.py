"""Read and edit a network's layers by module name, inside a context manager.

Modelled on baukit's ``Trace``/``TraceDict``: forward hooks on named sub-modules
record (and optionally replace) their outputs. Hooks are always removed in
``finally``, so no hook survives an exception. ``stop=True`` aborts the forward pass
once every traced layer has run, for when only the layer's output is needed.

>>> with gdx.Trace(gen, ["layer4"], stop=True) as tr:
...     gen.generate(z)
>>> tr["layer4"].shape
torch.Size([8, 512, 8, 8])

**Layers at a step.** A generator whose ``generate(z)`` runs its blocks several times
per image (a diffusion sampler: one call per denoising step) declares
``steps_per_image = S``; a layer is then a block *at a call*: ``"BLOCK@K"`` is the
block's K-th call (0-based) within one ``generate()``, ``"BLOCK@A-B"`` calls ``A..B``
inclusive (a step window, for editing). Calls are counted per hooked address and the
count restarts when the hooks go in and on every call of the generator's top-level
``module`` -- so a multi-step ``generate()`` must call ``module`` once and run all its
steps inside that call -- which keeps the count from going stale after an interrupted
sample. A bare ``"BLOCK"`` on a multi-step generator is refused (say which step); on a
one-step generator it means every call, exactly as before. Pass the generator (not
only its ``module``) so names are checked against its step count; with a bare
``nn.Module`` addresses still count calls but the step count is unknown.
See docs/diffusion.md, "Layers at a step".
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, Union

import torch
from torch import nn

from gdx.errors import LayerAddressError, StepCountError, UnknownLayerError
from gdx.interfaces import Generator

#: ``edit(layer_name, output) -> new_output``
EditFn = Callable[[str, torch.Tensor], torch.Tensor]
#: ``fn(layer_name, output, call) -> new_output or None``: a hook on one address; ``call``
#: is the block's call index within the current ``generate()`` (0 for a one-step generator).
StepHookFn = Callable[[str, Any, int], Any]
#: What the tracing functions take: a :class:`gdx.Generator` (its step count is known)
#: or a bare ``nn.Module`` (its ``named_modules()`` are the blocks; steps unknown).
Target = Union[Generator, nn.Module]

_ADDRESS = re.compile(r"(?P<block>[^@]*)@(?P<first>\d+)(?:-(?P<last>\d+))?")


class FeatureView(Protocol):
    """How a generator shows a block's raw output to the engine as N x U x h x w features.

    ``Generator.feature_view(block)`` may return one (default: None, the output as it
    is): a diffusion transformer's tokens (N x h*w x D) become a D x h x w map, and a
    guided sampler's doubled batch shows only the conditional rows. Hooks read
    ``to_map(output)``; an edited map goes back with ``from_map(output, features)``.
    """

    def to_map(self, output: Any) -> Any:
        """The features the engine reads and edits."""

    def from_map(self, output: Any, features: Any) -> Any:
        """``output`` with its features replaced by (edited) ``features``."""


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early; caught by :class:`Trace`."""


@dataclasses.dataclass(frozen=True)
class LayerAddress:
    """A layer name as the engine reads it: a block (module name) and which of its calls.

    ``first``/``last`` are None for a bare name (every call); ``"blk@2"`` is calls 2..2,
    ``"blk@0-4"`` calls 0..4 inclusive.
    """

    block: str
    first: int | None = None
    last: int | None = None

    @classmethod
    def parse(cls, name: str) -> "LayerAddress":
        """``"blk"``, ``"blk@K"`` or ``"blk@A-B"``; anything else with an ``@`` is an error."""
        if "@" not in name:
            return cls(name)
        m = _ADDRESS.fullmatch(name)
        if not m or not m.group("block"):
            raise LayerAddressError(
                f"layer {name!r} is not an address: write BLOCK@K for a block's K-th call within one "
                "generate() (0-based, e.g. mid_block@3) or BLOCK@A-B for calls A..B (e.g. mid_block@0-4)", name
            )
        first = int(m.group("first"))
        last = int(m.group("last")) if m.group("last") is not None else first
        if last < first:
            raise LayerAddressError(
                f"layer {name!r}: the window {first}-{last} is empty; write the earlier step first "
                f"({m.group('block')}@{last}-{first})", name
            )
        return cls(m.group("block"), first, last)

    @property
    def name(self) -> str:
        """The canonical text: ``blk``, ``blk@K`` or ``blk@A-B``."""
        if self.first is None:
            return self.block
        return f"{self.block}@{self.first}" if self.first == self.last else f"{self.block}@{self.first}-{self.last}"

    @property
    def is_window(self) -> bool:
        """Whether the address names more than one call (only edits accept it)."""
        return self.first is not None and self.last != self.first

    def covers(self, call: int) -> bool:
        """Whether call ``call`` of the block is addressed."""
        return self.first is None or (self.first <= call <= (self.last if self.last is not None else self.first))

    def done_after(self, call: int) -> bool:
        """Whether no later call is addressed (``stop=True`` may end the pass)."""
        return self.first is None or call >= (self.last if self.last is not None else self.first)

    def at(self, call: int) -> "LayerAddress":
        """The same block at one call."""
        return LayerAddress(self.block, call, call)

    def calls(self) -> list[int]:
        """The addressed calls (empty for a bare name)."""
        if self.first is None:
            return []
        return list(range(self.first, (self.last if self.last is not None else self.first) + 1))


def module_and_steps(target: Target) -> tuple[nn.Module, int | None]:
    """The module whose sub-modules are hooked, and the step count (None: a bare module, unknown)."""
    if isinstance(target, Generator):
        return target.module, int(getattr(target, "steps_per_image", 1) or 1)
    if isinstance(target, nn.Module):
        return target, None
    raise TypeError(f"expected a gdx.Generator or nn.Module, got {type(target).__name__}")


def _step_error(name: str, problem: str, blocks: Sequence[str], steps: int) -> LayerAddressError:
    block = LayerAddress.parse(name).block if "@" in name else name
    example = block if block in blocks else (blocks or ["BLOCK"])[0]
    shown = ", ".join(blocks[:30]) + (" ..." if len(blocks) > 30 else "")
    return LayerAddressError(
        f"layer {name!r}: {problem}. This generator runs each block {steps} times per image (one call per "
        f"step): name a block at a step, BLOCK@K with K in 0..{steps - 1} (e.g. {example}@{steps // 2}), "
        f"or a window BLOCK@A-B for edits. Blocks: {shown}",
        name, blocks,
    )


def resolve_layers(target: Target, names: str | Sequence[str]) -> dict[str, nn.Module]:
    """Map each layer name (or address) to its block's module, or raise an error that teaches.

    A wrong block lists close matches; on a multi-step generator a bare block name or
    a step past ``steps_per_image - 1`` lists the blocks and the step count.
    """
    if isinstance(names, str):
        names = [names]
    module, steps = module_and_steps(target)
    modules = dict(module.named_modules())
    blocks = [n for n in modules if n]
    out: dict[str, nn.Module] = {}
    for name in names:
        addr = LayerAddress.parse(name)
        if addr.block not in modules or not addr.block:
            if steps is not None and steps > 1:
                raise _step_error(name, f"no block named {addr.block!r}", blocks, steps)
            raise UnknownLayerError(name, blocks)
        if steps is not None:
            if addr.first is None and steps > 1:
                raise _step_error(name, "a bare block name does not say which step", blocks, steps)
            if addr.last is not None and addr.last >= steps:
                if steps == 1:
                    raise LayerAddressError(
                        f"layer {name!r}: this generator runs {addr.block!r} once per image; "
                        f"write {addr.block!r} (or {addr.block}@0)", name, blocks
                    )
                raise _step_error(name, f"step {addr.last} does not exist", blocks, steps)
        out[name] = modules[addr.block]
    return out


class LayerHooks:
    """Forward hooks on layer addresses: ``fns[name]`` runs on the calls ``name`` addresses.

    The building block of :class:`Trace`, interventions and permanent edits (the
    ``ablate=`` option, repair): it counts each address's calls, restarts the count on
    every call of the top-level module (and on :meth:`install`), and checks that a
    block never runs more than ``steps_per_image`` times in one ``generate()`` (a
    stale count would edit the wrong step silently). :meth:`remove` takes every hook
    out; use it in ``finally``.
    """

    def __init__(self, target: Target, fns: Mapping[str, StepHookFn]) -> None:
        self.module, self.steps = module_and_steps(target)
        self.modules = resolve_layers(target, list(fns))
        views = getattr(target, "feature_view", None) if isinstance(target, Generator) else None
        self.views: dict[str, FeatureView | None] = {
            name: views(LayerAddress.parse(name).block) if callable(views) else None for name in fns
        }
        self.fns = dict(fns)
        self.addresses = {name: LayerAddress.parse(name) for name in self.fns}
        self.calls = dict.fromkeys(self.fns, 0)
        self.current = dict.fromkeys(self.fns, -1)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def install(self) -> "LayerHooks":
        """Register the hooks (on failure, none stay)."""
        self.reset()
        try:
            if any(a.first is not None for a in self.addresses.values()):
                self._handles.append(self.module.register_forward_pre_hook(lambda _m, _i: self.reset()))
            for name, mod in self.modules.items():
                self._handles.append(mod.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def reset(self) -> None:
        """Restart the call count (a new ``generate()`` begins)."""
        for name in self.calls:
            self.calls[name] = 0
            self.current[name] = -1

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], Any]:
        addr, fn = self.addresses[name], self.fns[name]

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            call = self.calls[name]
            self.calls[name] = call + 1
            self.current[name] = call
            if addr.first is not None and self.steps is not None and call >= self.steps:
                raise StepCountError(
                    f"block {addr.block!r} ran {call + 1} times in one generate(), but the generator declares "
                    f"steps_per_image={self.steps}: its generate() must call its module once per batch and run "
                    "every step inside that call (the call count restarts on each call of the module), and "
                    "steps_per_image must be the number of calls per block"
                )
            if not addr.covers(call):
                return None
            view = self.views[name]
            if view is None:
                return fn(name, output, call)
            features = view.to_map(output)
            edited = fn(name, features, call)
            return None if edited is None or edited is features else view.from_map(output, edited)

        return hook


class Trace(contextlib.AbstractContextManager["Trace"]):
    """Record the outputs of ``layers`` of ``target`` (a generator or module) during forward passes.

    ``edit(name, output)`` may return a replacement output (intervention);
    ``retain_grad`` keeps outputs in the graph (otherwise they are detached);
    ``stop`` ends the forward pass once all traced layers have produced output
    (the call then returns ``None``; read the outputs from the trace).
    Several traces on one module compose: each hook sees the previous one's output.
    Layer names may be addresses (``"blk@3"``, a window ``"blk@0-4"``): see the module
    docstring. Reading a window records its first call (``blk@0``), so shapes and grids
    can be probed at any address; what a unit does at several steps is read step by
    step (dissection refuses a window).
    """

    def __init__(
        self,
        module: Target,
        layers: str | Sequence[str],
        *,
        edit: EditFn | None = None,
        stop: bool = False,
        retain_grad: bool = False,
        record: bool = True,
    ) -> None:
        names = [layers] if isinstance(layers, str) else list(layers)
        self.target = module
        self.hooks = LayerHooks(module, {name: self._on_call for name in names})
        self.module = self.hooks.module
        self.layers = self.hooks.modules
        self.edit = edit
        self.stop = stop
        self.retain_grad = retain_grad
        self.record = record
        self.outputs: dict[str, torch.Tensor] = {}
        self._seen: set[str] = set()

    def _on_call(self, name: str, output: Any, call: int) -> Any:
        if self.edit is not None:
            edited = self.edit(name, output)
            if edited is not None:
                output = edited
        addr = self.hooks.addresses[name]
        if self.record and (addr.first is None or call == addr.first):
            detach = not self.retain_grad and isinstance(output, torch.Tensor)
            self.outputs[name] = output.detach() if detach else output
        # an edit must see every addressed call; a read is done at its (first) step
        if addr.done_after(call) or (self.edit is None and addr.covers(call)):
            self._seen.add(name)
        if self.stop and self._seen >= set(self.layers):
            raise StopForward()
        return output

    def call_index(self, name: str) -> int:
        """The call of ``name``'s block being hooked now (or last hooked; -1 before any)."""
        return self.hooks.current[name]

    def __enter__(self) -> "Trace":
        self.hooks.install()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self.close()
        # StopForward ends a pass early on purpose; swallow it only here.
        return exc_type is not None and issubclass(exc_type, StopForward)

    def close(self) -> None:
        self.hooks.remove()

    def reset(self) -> None:
        """Forget recorded outputs (before the next forward pass)."""
        self.outputs.clear()
        self._seen.clear()

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.outputs[name]

    def __contains__(self, name: object) -> bool:
        return name in self.outputs


def run_to_layers(
    fn: Callable[[], object], module: Target, layers: str | Sequence[str], *, stop: bool = True
) -> dict[str, torch.Tensor]:
    """Call ``fn()`` (a forward pass of ``module``) and return the layers' outputs.

    With ``stop`` the pass ends as soon as every layer has run.
    """
    with Trace(module, layers, stop=stop) as tr:
        try:
            fn()
        except StopForward:
            pass
    return dict(tr.outputs)


def count_hooks(module: nn.Module) -> int:
    """Number of forward hooks registered anywhere in ``module`` (for tests)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@contextlib.contextmanager
def no_hooks_left(module: nn.Module) -> Iterator[None]:
    """Assert on exit that ``module`` has no more hooks than on entry."""
    before = count_hooks(module)
    yield
    after = count_hooks(module)
    if after != before:
        raise RuntimeError(f"{after - before} hook(s) left behind on {type(module).__name__}")
