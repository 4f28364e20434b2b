"""Safe reading of weight files: ``torch.load(weights_only=True)`` and safetensors.

Every adapter reads weights through here so that a missing, truncated or unsafe file
gives one clear :class:`~gdx.errors.CheckpointError` naming the file and the fix.
Formats that need full pickle (NVIDIA ``.pkl``) go through
:mod:`gdx.plugins.generators.safe_unpickle`, never through plain ``pickle``.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from gdx.errors import CheckpointError


def existing_file(path: str | os.PathLike[str], *, what: str) -> Path:
    """``path`` as a Path, or a CheckpointError saying which file is missing."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{what} file not found: {p}. Check the path (the generator option `weights=...` or the segmenter option `weights=...`).")
    return p


def load_torch_file(
    path: str | os.PathLike[str],
    *,
    what: str,
    safe_globals: Iterable[Any] = (),
) -> Any:
    """Load a ``.pt``/``.pth`` file with ``weights_only=True``.

    ``safe_globals`` allow-lists extra classes (e.g. ``argparse.Namespace`` in
    rosinality checkpoints). Truncated or non-torch files raise CheckpointError.
    """
    p = existing_file(path, what=what)
    if p.is_dir():
        raise CheckpointError(f"{what}: {p} is a directory; expected a .pt/.pth file.")
    if p.suffix == ".safetensors":
        return load_safetensors_file(p, what=what)
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch.load's weights-only refusals and corrupt pickles
        text = str(exc).lower()
        if "global" not in text:  # not a refused class: a damaged or foreign file (e.g. "Unsupported operand")
            raise CheckpointError(
                f"{what}: {p} is not a torch checkpoint ({_refusal(exc, 'an unreadable pickle')}); it may be truncated or another "
                "kind of file: download it again and compare its size/checksum."
            ) from None
        raise CheckpointError(
            f"{what}: refused {p} as unsafe: it asks to build objects that are not plain tensors "
            f"({_refusal(exc)}), and gdx never runs code from a checkpoint, so nothing from it was run. "
            "Re-save it as a plain state dict (torch.save(model.state_dict(), path)) or as safetensors "
            "in an environment you trust."
        ) from None
    except CheckpointError:
        raise
    except (Exception, RecursionError) as exc:  # noqa: BLE001 - zip, pickle, overflow, memory: one error
        raise CheckpointError(
            f"{what}: cannot read {p} ({_first(exc)}). The file may be truncated or not a "
            "torch checkpoint: download it again and compare its size/checksum."
        ) from None


def load_safetensors_file(path: str | os.PathLike[str], *, what: str) -> dict[str, torch.Tensor]:
    """Read a safetensors file into a dict of CPU tensors."""
    from safetensors.torch import load_file
    from safetensors import SafetensorError

    p = existing_file(path, what=what)
    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{what}: cannot read {p} as safetensors ({_first(exc)}); the file may be truncated."
        ) from None


def unwrap_state_dict(obj: Any, *, what: str, keys: Iterable[str] = ("state_dict", "model")) -> dict[str, torch.Tensor]:
    """The tensor dict inside ``obj`` (a state dict, or one nested under ``keys``)."""
    if isinstance(obj, dict):
        for k in keys:
            if k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = type(obj).__name__
        raise CheckpointError(f"{what}: expected a state dict of tensors, found a {kind}.")
    return obj


def _refusal(exc: BaseException, default: str = "an object outside the tensor allow-list") -> str:
    """What torch's weights-only unpickler refused, without its advice to turn the check off."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    m = re.search(r"(Unsupported (?:global|operand)[^\n]*|Trying to [^\n.]*|GLOBAL [\w.]+[^\n.]*)", text)
    if m:
        return m.group(1).strip()[:200]
    return default if "weights_only" in text or "weights only" in text.lower() else _first(exc)


def _first(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
