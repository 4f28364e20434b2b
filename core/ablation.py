"""Units switched off for good: the generator option ``ablate=`` that every generator takes.

Why a generator option: a repair (docs/method.md, "Repair") is only useful if the user
keeps working with the repaired model. As an option of the generator it travels
everywhere a generator is named — ``gdx run``/``gdx paint``/``gdx ace --gen-opt
ablate=layer5:3,17``, ``gdx.load_generator("scene", ablate="layer5:3,17")`` and the
``run.json`` of a run folder (reopened runs are rebuilt with the same units off) —
without touching any adapter. The registry (:mod:`gdx.manager`) takes the option off
before calling the factory and applies it to the generator the factory returns.

Text form: ``LAYER:U,U,...`` with ``;`` between layers (``layer4:3,17;layer6:5``), or
the path of a JSON file with an ``"ablate"`` field in that form (``gdx repair`` writes
``repair.json`` with one).

>>> gen = gdx.load_generator("scene", ablate="layer5:3,17")
>>> gen.ablation
UnitAblation(units={'layer5': (3, 17)})
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from gdx.errors import AdapterOptionError
from gdx.interfaces import Generator
from gdx.tracing import LayerHooks

#: The name of the option, reserved for every generator.
ABLATE_OPTION = "ablate"


@dataclasses.dataclass(frozen=True)
class UnitAblation:
    """Which units of which layers are zeroed: ``{"layer5": (3, 17)}``."""

    units: dict[str, tuple[int, ...]]

    @classmethod
    def parse(cls, text: str) -> UnitAblation:
        """Read ``LAYER:U,U;LAYER:U`` or the path of a JSON file whose ``"ablate"`` field holds it."""
        text = text.strip()
        if text.endswith(".json"):
            path = Path(text)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise AdapterOptionError(
                    f"generator option `ablate={text}`: cannot read it as a JSON file ({type(exc).__name__}: {exc}); "
                    "give a repair.json written by gdx repair, or the units as `ablate=layer5:3,17`"
                ) from None
            if not isinstance(data, dict) or not isinstance(data.get("ablate"), str):
                raise AdapterOptionError(
                    f"generator option `ablate={text}`: the file has no \"ablate\" field; give a repair.json "
                    "written by gdx repair, or the units as `ablate=layer5:3,17`"
                )
            return cls.parse(data["ablate"])
        units: dict[str, tuple[int, ...]] = {}
        for part in (p.strip() for p in text.split(";")):
            if not part:
                continue
            layer, sep, rest = part.partition(":")
            try:
                found = tuple(int(u) for u in rest.split(",") if u.strip())
            except ValueError:
                found = ()
            if not sep or not layer.strip() or not found or any(u < 0 for u in found):
                raise AdapterOptionError(
                    f"generator option `ablate={text}`: {part!r} is not LAYER:UNITS; write e.g. "
                    "`ablate=layer5:3,17` (several layers: `layer4:1,2;layer6:5`) or the path of a repair.json"
                )
            units[layer.strip()] = tuple(sorted(set(units.get(layer.strip(), ()) + found)))
        if not units:
            raise AdapterOptionError(f"generator option `ablate={text!r}` names no units; write e.g. `ablate=layer5:3,17`")
        return cls(units)

    def __str__(self) -> str:
        return ";".join(f"{layer}:{','.join(map(str, us))}" for layer, us in self.units.items())

    def apply(self, generator: Generator) -> Generator:
        """Zero the units in ``generator`` (in place, with forward hooks) and return it.

        The hooks live as long as the module; ``generator.gdx_ablation_handles`` holds
        them (``remove()`` each to undo). ``LAYER`` may be a step address (``blk@0-4``) on
        a multi-step generator (docs/diffusion.md, "Layers at a step"). A unit index past the layer's width fails at
        the first forward with the layer's width in the message.
        """
        hooks = LayerHooks(generator, {layer: _zeroing_hook(layer, us) for layer, us in self.units.items()})
        handles = list(getattr(generator, "gdx_ablation_handles", []))
        handles.append(hooks.install())  # LayerHooks.remove() takes them all out
        generator.gdx_ablation_handles = handles  # type: ignore[attr-defined]
        generator.ablation = self  # type: ignore[attr-defined]
        return generator


def _zeroing_hook(layer: str, units: tuple[int, ...]) -> Any:
    index = torch.tensor(units, dtype=torch.long)

    def hook(_layer: str, out: Any, _call: int) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or out.dim() < 2:
            raise AdapterOptionError(
                f"generator option `ablate=`: layer {layer!r} does not output one N x C ... tensor; "
                "name a layer whose output is a feature map"
            )
        if max(units) >= out.shape[1]:
            raise AdapterOptionError(
                f"generator option `ablate=`: layer {layer!r} has {out.shape[1]} units; "
                f"unit {max(units)} does not exist (units count from 0)"
            )
        out = out.clone()
        out[:, index.to(out.device)] = 0
        return out

    return hook


def split_ablation(options: dict[str, Any]) -> tuple[dict[str, Any], UnitAblation | None]:
    """``options`` without ``ablate``, and the ablation it named (None when absent or empty)."""
    rest = dict(options)
    value = rest.pop(ABLATE_OPTION, None)
    if value is None or value == "":
        return rest, None
    if isinstance(value, UnitAblation):
        return rest, value
    if isinstance(value, dict):
        return rest, UnitAblation({str(k): tuple(int(u) for u in v) for k, v in value.items()})
    return rest, UnitAblation.parse(str(value))
