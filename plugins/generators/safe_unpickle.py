"""A restricted unpickler for NVIDIA StyleGAN ``.pkl`` files that never runs their code.

Why: stylegan2-ada/stylegan3 snapshots pickle each network through
``torch_utils.persistence``: the pickle calls
``torch_utils.persistence._reconstruct_persistent_obj(meta)``, whose ``meta`` holds the
network's *source code* (``module_src``), which NVIDIA's loader ``exec``s. Plain
``pickle.load`` on such a file runs whatever it says. This unpickler resolves only an
allow-list of globals, each mapped to a function that builds data and nothing else:

* ``torch_utils.persistence._reconstruct_persistent_obj`` -> :class:`PersistentObject`,
  a dict-like record of ``class_name``, ``module_src`` (kept as text, never executed)
  and ``state`` (the module's ``__dict__``: ``_parameters``, ``_buffers``, ``_modules``,
  ``_init_kwargs``, attributes);
* ``dnnlib.util.EasyDict`` -> :class:`EasyDict` (a plain dict subclass);
* tensors as torch pickles them outside ``torch.save``: ``torch._utils._rebuild_tensor_v2``
  / ``_rebuild_parameter`` over storages stored as ``torch.storage._load_from_bytes(b)``,
  where ``b`` is a legacy ``torch.save`` blob read back with ``weights_only=True``;
* ``collections.OrderedDict``, ``builtins.set``/``frozenset``, numpy scalars/arrays of
  non-object dtypes, torch dtypes and ``torch.Size``.

Any other global (``os.system``, ``builtins.exec``, ``torch_utils.persistence._src_to_module``...)
stops the load with :class:`UnsafePickleError` before it can be called.

>>> data = load_stylegan_pickle("network-snapshot.pkl")
>>> g = data["G_ema"]; g.class_name, g.init_kwargs["z_dim"]
>>> tensors = g.tensors()          # == G_ema.state_dict()
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gdx.checkpoints import existing_file
from gdx.errors import CheckpointError, UnsafePickleError


class PersistentObject(Mapping):
    """What a ``torch_utils.persistence`` object holds, without its class or code.

    Behaves as a read-only mapping over ``state`` (the original object's ``__dict__``).
    """

    def __init__(self, meta: Any) -> None:
        if not isinstance(meta, dict):
            raise pickle.UnpicklingError("persistent object without a meta dict")
        self.type = meta.get("type")
        self.version = meta.get("version")
        self.class_name = str(meta.get("class_name"))
        self.module_src = str(meta.get("module_src") or "")
        state = meta.get("state") or {}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"persistent object {self.class_name} has no state dict")
        self.state: dict[str, Any] = dict(state)

    def __getitem__(self, key: str) -> Any:
        return self.state[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.state)

    def __len__(self) -> int:
        return len(self.state)

    def __repr__(self) -> str:
        return f"<PersistentObject {self.class_name} ({len(self.state)} fields)>"

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """The constructor's keyword arguments as recorded by persistence (``_init_kwargs``)."""
        return dict(self.state.get("_init_kwargs") or {})

    def children(self) -> dict[str, Any]:
        """Sub-modules by attribute name (``_modules``), ``None`` entries dropped."""
        mods = self.state.get("_modules") or {}
        return {k: v for k, v in mods.items() if v is not None}

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The equivalent of ``module.state_dict()``: parameters and persistent buffers, dotted."""
        out: dict[str, torch.Tensor] = {}
        for k, v in (self.state.get("_parameters") or {}).items():
            if v is not None:
                out[prefix + k] = v
        skip = set(self.state.get("_non_persistent_buffers_set") or ())
        for k, v in (self.state.get("_buffers") or {}).items():
            if v is not None and k not in skip:
                out[prefix + k] = v
        for k, child in self.children().items():
            if isinstance(child, PersistentObject):
                out.update(child.tensors(prefix + k + "."))
            else:
                raise CheckpointError(
                    f"sub-module {prefix + k} is a {type(child).__name__}, not a persistent network object"
                )
        return out

    def find(self, path: str) -> "PersistentObject":
        """The sub-object at a dotted path such as ``synthesis.b4``."""
        obj: PersistentObject = self
        for part in path.split(".") if path else []:
            child = obj.children().get(part)
            if not isinstance(child, PersistentObject):
                raise KeyError(path)
            obj = child
        return obj


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a dict with attribute access."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    return PersistentObject(meta)


def _load_from_bytes(b: Any) -> Any:
    if not isinstance(b, (bytes, bytearray)):
        raise pickle.UnpicklingError("storage payload is not bytes")
    storage = torch.load(io.BytesIO(bytes(b)), map_location="cpu", weights_only=True)
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"storage payload holds a {type(storage).__name__}")
    return storage


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"tensor over a {type(storage).__name__}, not a storage")
    if not isinstance(storage_offset, int) or not all(isinstance(s, int) for s in (*size, *stride)):
        raise pickle.UnpicklingError("tensor with non-integer geometry")
    if isinstance(storage, torch.UntypedStorage):
        storage = torch.storage.TypedStorage(wrap_storage=storage, dtype=torch.uint8, _internal=True)
    return torch._utils._rebuild_tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter without tensor data")
    return data


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("numpy scalar of an object dtype")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


#: The largest numpy array a pickle may ask for (StyleGAN snapshots hold arrays of a few MB).
MAX_ARRAY_BYTES = 1 << 32


def _np_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("numpy array subclass")
    try:
        count = int(np.prod([int(x) for x in shape], dtype=np.float64))
        size = count * np.dtype(dtype).itemsize
    except (TypeError, ValueError, OverflowError):
        raise pickle.UnpicklingError("numpy array with a malformed shape or dtype") from None
    if size > MAX_ARRAY_BYTES:
        raise pickle.UnpicklingError(f"numpy array of {size} bytes (over {MAX_ARRAY_BYTES}): not a real snapshot")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _np_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    dtype = np.dtype(spec, align, copy)
    if dtype.hasobject:
        raise pickle.UnpicklingError("numpy object dtype")
    return dtype


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("numpy", "dtype"): _np_dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
}
_TORCH_DTYPES = {
    name: getattr(torch, name)
    for name in ("float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool")
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED.get((module, name))
        if target is None and module == "torch" and name in _TORCH_DTYPES:
            target = _TORCH_DTYPES[name]
        if target is None:
            raise UnsafePickleError(module, name)
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not used by StyleGAN pickles")


def safe_loads(data: bytes) -> Any:
    """Unpickle ``data`` with the allow-list above (raises UnsafePickleError otherwise)."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def load_stylegan_pickle(path: str | os.PathLike[str], *, what: str = "StyleGAN .pkl") -> Any:
    """Read an NVIDIA StyleGAN snapshot ``.pkl`` without executing anything from it.

    Returns the top-level object (a dict such as ``{'G': ..., 'D': ..., 'G_ema': ...}``)
    with networks as :class:`PersistentObject`. Raises CheckpointError for a missing,
    truncated, or unsafe file.
    """
    p: Path = existing_file(path, what=what)
    if p.is_dir():
        raise CheckpointError(f"{what}: {p} is a directory; expected a .pkl file.")
    try:
        with open(p, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except UnsafePickleError as exc:
        if exc.module.startswith("dnnlib.tflib"):
            raise CheckpointError(
                f"{what}: {p} is a TensorFlow StyleGAN pickle ({exc}); gdx reads the PyTorch "
                "(stylegan2-ada-pytorch/stylegan3) format. Convert it with rosinality's "
                "convert_weight.py and pass the .pt file."
            ) from None
        raise CheckpointError(
            f"{what}: refused {p}: the pickle asks to call {exc}, which is not on gdx's allow-list "
            "of data-only constructors, so nothing from it was run. If the file is a genuine "
            "NVIDIA snapshot, re-export the generator's state dict (torch.save(G.state_dict())) "
            "in an environment you trust and load that file with the generator option `conv_clamp=256` "
            "(NVIDIA's pickles use conv_clamp=256, which a state dict does not record)."
        ) from None
    except CheckpointError:
        raise
    except (Exception, RecursionError) as exc:  # noqa: BLE001 - every failure of a hostile or damaged file is one error
        text = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{what}: cannot read {p} ({type(exc).__name__}: {text[0][:200] if text else ''}). "
            "The file may be truncated or not a StyleGAN pickle: download it again and compare its size/checksum."
        ) from None
