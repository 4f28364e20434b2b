"""Read and edit a network's layers by module name, inside a context manager.

Modelled on baukit's ``Trace``/``TraceDict``: forward hooks on named sub-modules
record (and optionally replace) their outputs. Hooks are always removed in
``finally``, so no hook survives an exception. ``stop=True`` aborts the forward pass
once every traced layer has run, for when only the layer's output is needed.

>>> with gdx.Trace(gen.module, ["layer4"], stop=True) as tr:
...     gen.generate(z)
>>> tr["layer4"].shape
torch.Size([8, 512, 8, 8])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn

from gdx.errors import UnknownLayerError

#: ``edit(layer_name, output) -> new_output``
EditFn = Callable[[str, torch.Tensor], torch.Tensor]


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early; caught by :class:`Trace`."""


def resolve_layers(module: nn.Module, names: str | Sequence[str]) -> dict[str, nn.Module]:
    """Map each layer name to its sub-module, or raise an error listing close matches."""
    if isinstance(names, str):
        names = [names]
    modules = dict(module.named_modules())
    out: dict[str, nn.Module] = {}
    for name in names:
        if name not in modules or not name:
            raise UnknownLayerError(name, [n for n in modules if n])
        out[name] = modules[name]
    return out


class Trace(contextlib.AbstractContextManager["Trace"]):
    """Record the outputs of ``layers`` of ``module`` during forward passes.

    ``edit(name, output)`` may return a replacement output (intervention);
    ``retain_grad`` keeps outputs in the graph (otherwise they are detached);
    ``stop`` ends the forward pass once all traced layers have produced output
    (the call then returns ``None``; read the outputs from the trace).
    Several traces on one module compose: each hook sees the previous one's output.
    """

    def __init__(
        self,
        module: nn.Module,
        layers: str | Sequence[str],
        *,
        edit: EditFn | None = None,
        stop: bool = False,
        retain_grad: bool = False,
        record: bool = True,
    ) -> None:
        self.module = module
        self.layers = resolve_layers(module, layers)
        self.edit = edit
        self.stop = stop
        self.retain_grad = retain_grad
        self.record = record
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._seen: set[str] = set()

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            if self.edit is not None:
                edited = self.edit(name, output)
                if edited is not None:
                    output = edited
            if self.record:
                detach = not self.retain_grad and isinstance(output, torch.Tensor)
                self.outputs[name] = output.detach() if detach else output
            self._seen.add(name)
            if self.stop and self._seen >= set(self.layers):
                raise StopForward()
            return output

        return hook

    def __enter__(self) -> "Trace":
        try:
            for name, mod in self.layers.items():
                self._handles.append(mod.register_forward_hook(self._hook(name)))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self.close()
        # StopForward ends a pass early on purpose; swallow it only here.
        return exc_type is not None and issubclass(exc_type, StopForward)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def reset(self) -> None:
        """Forget recorded outputs (before the next forward pass)."""
        self.outputs.clear()
        self._seen.clear()

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.outputs[name]

    def __contains__(self, name: object) -> bool:
        return name in self.outputs


def run_to_layers(
    fn: Callable[[], object], module: nn.Module, layers: str | Sequence[str], *, stop: bool = True
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
