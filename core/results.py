"""Result objects: dataclasses with named tensors and ``save``/``load`` (JSON + safetensors).

No pickle anywhere: a saved result is ``<dir>/dissection.json`` (settings, labels,
per-unit labels) plus ``<dir>/dissection.safetensors`` (the tensors), both written
atomically (temp file + rename). The other results (causal effects, rankings,
repairs...) are one JSON file each (:class:`JsonResult`); :func:`load_result` reads
any of them by its ``"kind"``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from gdx.errors import ResultFormatError

FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.exists():
        raise ResultFormatError(f"missing {path}; the result folder is incomplete (was the run finished?)")
    return load_file(str(path))


@dataclass(frozen=True)
class UnitLabel:
    """A unit's best concept: its label, IoU with it and (iqr mode) IQR."""

    unit: int
    label: str
    iou: float
    iqr: float | None = None
    category: str | None = None


@dataclass(frozen=True)
class DissectionSettings:
    """How a dissection was run: enough to reproduce it."""

    generator: str
    segmenter: str
    layer: str
    samples: int
    seed: int
    threshold: float | str
    batch_size: int
    iou_min: float = 0.05
    iqr_min: float = 0.01
    sketch_size: int = 16384
    top_k: int = 20
    metric: str = "iou"
    gdx_version: str = ""


@dataclass
class Summary:
    """Interpretable units per concept and per category (the paper's bar chart)."""

    layer: str
    units: int
    interpretable: int
    per_concept: dict[str, int]
    per_category: dict[str, int]

    def __str__(self) -> str:
        lines = [f"{self.layer}: {self.interpretable}/{self.units} interpretable units"]
        for cat, n in self.per_category.items():
            lines.append(f"  {cat}: {n}")
        for concept, n in self.per_concept.items():
            lines.append(f"    {concept:<20} {n}")
        return "\n".join(lines)


@dataclass
class Dissection:
    """One layer's dissection (SPEC §1).

    ``iou[u, c]`` is the IoU of unit ``u``'s thresholded region with concept ``c`` at
    the unit's threshold ``thresholds[u]``; ``unit_labels[u]`` names its best concept.
    ``top_indices[u]`` / ``top_values[u]`` are the sample indices with the highest peak
    activation of ``u`` (regenerate them with the generator's ``sample_latents`` and
    ``settings.seed``).
    """

    layer: str
    labels: list[str]
    categories: dict[str, str]
    iou: torch.Tensor
    thresholds: torch.Tensor
    unit_labels: list[UnitLabel]
    top_indices: torch.Tensor
    top_values: torch.Tensor
    settings: DissectionSettings
    iqr: torch.Tensor | None = None
    levels: torch.Tensor | None = None
    fractions: torch.Tensor | None = None
    label_fraction: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def units(self) -> int:
        return int(self.iou.shape[0])

    def interpretable(self, iou_min: float | None = None, iqr_min: float | None = None) -> list[UnitLabel]:
        """Units whose best IoU exceeds ``iou_min`` (and IQR ``iqr_min`` in iqr mode), best first."""
        iou_min = self.settings.iou_min if iou_min is None else iou_min
        iqr_min = self.settings.iqr_min if iqr_min is None else iqr_min
        out = [
            u for u in self.unit_labels
            if u.iou > iou_min and (u.iqr is None or u.iqr > iqr_min)
        ]
        return sorted(out, key=lambda u: (-u.iou, u.unit))

    def summary(self, iou_min: float | None = None) -> Summary:
        units = self.interpretable(iou_min)
        per_concept = Counter(u.label for u in units)
        per_category = Counter(self.categories.get(u.label, "concept") for u in units)
        return Summary(
            layer=self.layer,
            units=self.units,
            interpretable=len(units),
            per_concept=dict(sorted(per_concept.items(), key=lambda kv: (-kv[1], kv[0]))),
            per_category=dict(sorted(per_category.items(), key=lambda kv: (-kv[1], kv[0]))),
        )

    def top_units(self, concept: str, n: int = 20) -> list[int]:
        """The ``n`` units with the highest IoU for ``concept`` (for intervention)."""
        if concept not in self.labels:
            raise KeyError(f"unknown concept {concept!r}; this dissection has: {', '.join(self.labels)}")
        col = self.iou[:, self.labels.index(concept)]
        return torch.argsort(col, descending=True, stable=True)[:n].tolist()

    # -- persistence -------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path/dissection.json`` and ``path/dissection.safetensors``; returns ``path``."""
        folder = Path(path)
        tensors = {"iou": self.iou, "thresholds": self.thresholds,
                   "top_indices": self.top_indices, "top_values": self.top_values}
        for name in ("iqr", "levels", "fractions", "label_fraction"):
            value = getattr(self, name)
            if value is not None:
                tensors[name] = value
        for k, v in self.extra.items():
            tensors[f"extra.{k}"] = v
        atomic_save_tensors(folder / "dissection.safetensors", tensors)
        meta = {
            "format": "gdx.dissection",
            "version": FORMAT_VERSION,
            "layer": self.layer,
            "labels": self.labels,
            "categories": self.categories,
            "settings": dataclasses.asdict(self.settings),
            "unit_labels": [dataclasses.asdict(u) for u in self.unit_labels],
        }
        # JSON last: its presence marks a complete result.
        atomic_write_json(folder / "dissection.json", meta)
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Dissection":
        folder = Path(path)
        meta_path = folder / "dissection.json"
        if not meta_path.exists():
            raise ResultFormatError(
                f"{folder} holds no dissection.json: not a finished gdx dissection "
                "(pass the folder 'gdx run --out' wrote, or its per-layer subfolder)."
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != "gdx.dissection" or meta.get("version", 0) > FORMAT_VERSION:
            raise ResultFormatError(f"{meta_path} is not a gdx dissection of a version this gdx reads")
        t = load_tensors(folder / "dissection.safetensors")
        extra = {k[len("extra."):]: v for k, v in t.items() if k.startswith("extra.")}
        return cls(
            layer=meta["layer"],
            labels=list(meta["labels"]),
            categories=dict(meta["categories"]),
            iou=t["iou"],
            thresholds=t["thresholds"],
            unit_labels=[UnitLabel(**u) for u in meta["unit_labels"]],
            top_indices=t["top_indices"],
            top_values=t["top_values"],
            settings=DissectionSettings(**meta["settings"]),
            iqr=t.get("iqr"),
            levels=t.get("levels"),
            fractions=t.get("fractions"),
            label_fraction=t.get("label_fraction"),
            extra=extra,
        )


# -- results saved as one JSON file ----------------------------------------------------

#: Saved JSON result kinds (the ``"kind"`` field) -> their class, filled as subclasses of
#: JsonResult are defined (``import gdx`` defines every built-in one: causal and repair results).
_RESULT_KINDS: dict[str, type[JsonResult]] = {}

_J = TypeVar("_J", bound="JsonResult")


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise ResultFormatError(f"no such result file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ResultFormatError(f"{path} is not valid JSON ({exc}); was it written by gdx?") from None


class JsonResult:
    """Base of the results saved as one JSON file: a dataclass with a ``_kind``.

    ``to_dict`` / ``save`` write every dataclass field plus ``"kind"`` and
    ``"version"``; tensor fields (listed in ``_tensors``) become nested lists and are
    turned back into tensors by ``from_dict`` / ``load``. A subclass that sets
    ``_kind`` is registered, so :func:`load_result` can read its files.
    """

    _tensors: ClassVar[tuple[str, ...]] = ()
    _kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("_kind")
        if kind:
            _RESULT_KINDS[kind] = cls

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self._kind, "version": 1}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _jsonable(getattr(self, f.name))
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the result as JSON to ``path`` (atomically)."""
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls: type[_J], data: dict[str, Any]) -> _J:
        if data.get("kind") != cls._kind:
            raise ResultFormatError(f"expected a saved {cls._kind!r} result, found kind {data.get('kind')!r}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kwargs = {k: v for k, v in data.items() if k in names}
        for name in cls._tensors:
            if kwargs.get(name) is not None:
                value = kwargs[name]
                kwargs[name] = torch.tensor(value, dtype=torch.bool if name == "contains" else torch.float32)
        return cls(**kwargs)

    @classmethod
    def load(cls: type[_J], path: str | os.PathLike[str]) -> _J:
        """Read a result written by :meth:`save`."""
        return cls.from_dict(_read_json(Path(path)))


def result_kinds() -> dict[str, type[JsonResult]]:
    """The known saved-result kinds (``"kind"`` field -> class), sorted by kind."""
    return dict(sorted(_RESULT_KINDS.items()))


def load_result(path: str | os.PathLike[str]) -> JsonResult | Dissection:
    """Read any saved gdx result: a JSON result by its ``"kind"``, or a dissection.

    A dissection is given as its folder or its ``dissection.json``.

    >>> from gdx.results import load_result
    >>> eff = load_result("runs/x/layer4/tree.json")    # e.g. a CausalEffect (by its "kind")
    >>> dis = load_result("runs/x/layer4")              # a Dissection
    """
    path = Path(path)
    if path.is_dir():
        return Dissection.load(path)
    if path.name == "dissection.json":
        return Dissection.load(path.parent)
    data = _read_json(path)
    if isinstance(data, dict) and data.get("format") == "gdx.dissection":
        return Dissection.load(path.parent)
    kinds = result_kinds()
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in kinds:
        raise ResultFormatError(
            f"{path} is not a saved gdx result: kind {kind!r}; known kinds: {', '.join(kinds)} "
            "(or a dissection folder / dissection.json)"
        )
    return kinds[kind].from_dict(data)
