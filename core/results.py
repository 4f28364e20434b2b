"""Result objects: dataclasses with named tensors and ``save``/``load`` (JSON + safetensors).

No pickle anywhere: a saved result is ``<dir>/dissection.json`` (settings, labels,
per-unit labels) plus ``<dir>/dissection.safetensors`` (the tensors), both written
atomically (temp file + rename), both carrying the same run id so that a pair from two
runs is refused on load. The other results (causal effects, rankings,
repairs...) are one JSON file each (:class:`JsonResult`); :func:`load_result` reads
any of them by its ``"kind"``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import tempfile
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from gdx.errors import ResultFormatError

FORMAT_VERSION = 1


#: Under this environment variable (a number k) the process SIGKILLs itself right after
#: its k-th durable write (each rename of a file or folder into place). The kill-point
#: tests use it to stop a run at every write it makes; unset, it costs one dict lookup.
KILL_AFTER_WRITE_ENV = "GDX_KILL_AFTER_WRITE"
_writes_done = 0


def write_point() -> None:
    """Mark one durable write (called after every rename into place); see :data:`KILL_AFTER_WRITE_ENV`."""
    global _writes_done
    target = os.environ.get(KILL_AFTER_WRITE_ENV)
    if not target:
        return
    _writes_done += 1
    if _writes_done == int(target):
        os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (no race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_owner(path: Path) -> int | None:
    """The pid that made temp file ``path`` (``.NAME.PID.XXXX.tmp``), or None for another name."""
    parts = path.name.split(".")
    if len(parts) >= 5 and parts[-1] == "tmp" and parts[-3].isdigit():
        return int(parts[-3])
    return None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and a rename.

    The file gets the mode a plain ``open()`` would give it (0666 less the umask); the
    temp file's name holds this process's pid, so only its owner (or, once the owner is
    gone, a later writer holding the folder's lock) removes it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    write_point()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata))


def load_tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a safetensors file and its string metadata (a damaged file is a ResultFormatError)."""
    from safetensors import safe_open

    if not path.exists():
        raise ResultFormatError(f"missing {path}; the result folder is incomplete (was the run finished?)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except OSError:  # unreadable (permissions, I/O): the caller's OSError path says so
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError for a damaged file
        raise ResultFormatError(
            f"{path} is damaged ({type(exc).__name__}: {str(exc)[:200]}); run again to rewrite it"
        ) from None
    return tensors, metadata


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors_and_metadata(path)[0]


@dataclass(frozen=True)
class UnitLabel:
    """A unit's best concept: its label, IoU with it and (iqr mode) IQR.

    ``iou`` is the best label's IoU; :meth:`Dissection.iou_of` gives any concept's.
    ``iou_ci`` is its 95% confidence interval (Poisson bootstrap), ``null_iou`` the IoU
    of the spatial-prior null (the unit's maps against other samples' labels) and
    ``pvalue`` the one-sided p-value of "IoU exceeds the null"; all three are None in
    results saved before gdx computed them.
    """

    unit: int
    label: str
    iou: float
    iqr: float | None = None
    category: str | None = None
    iou_ci: tuple[float, float] | None = None
    null_iou: float | None = None
    pvalue: float | None = None


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
    control: str | None = None  # "random-weights": the generator's parameters were re-initialised


@dataclass
class Summary:
    """Interpretable units per concept and per category (the paper's bar chart).

    ``interpretable`` counts the paper's rule (IoU above ``iou_min``); ``significant``
    the units whose label beats the spatial-prior null (Benjamini-Hochberg at ``fdr``),
    None for results saved without p-values. Both are shown side by side.
    """

    layer: str
    units: int
    interpretable: int
    per_concept: dict[str, int]
    per_category: dict[str, int]
    significant: int | None = None
    significant_per_concept: dict[str, int] = field(default_factory=dict)
    significant_per_category: dict[str, int] = field(default_factory=dict)
    fdr: float = 0.05

    def __str__(self) -> str:
        head = f"{self.layer}: {self.interpretable}/{self.units} interpretable units (IoU rule)"
        if self.significant is not None:
            head += f", {self.significant} significant vs the spatial-prior null (FDR {self.fdr:g})"
        lines = [head]
        sig = self.significant is not None
        for cat, n in self.per_category.items():
            lines.append(f"  {cat}: {n}" + (f"  ({self.significant_per_category.get(cat, 0)} significant)" if sig else ""))
        for concept, n in self.per_concept.items():
            lines.append(f"    {concept:<20} {n}" + (f"  {self.significant_per_concept.get(concept, 0)}" if sig else ""))
        return "\n".join(lines)


@dataclass
class Dissection:
    """One layer's dissection (docs/method.md, "Dissection").

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
    #: The run that made this result; its JSON and its tensors both carry it, so a pair
    #: from two runs is refused on load. Empty until saved (``save`` draws one).
    run_id: str = ""
    iou_ci: torch.Tensor | None = None  # U x C x 2, 95% interval of iou (Poisson bootstrap)
    null_iou: torch.Tensor | None = None  # U x C, IoU against other samples' labels (spatial-prior null)
    pvalue: torch.Tensor | None = None  # U x C, one-sided p of iou > null_iou; NaN for absent labels

    @property
    def units(self) -> int:
        return int(self.iou.shape[0])

    def significant(self, fdr: float = 0.05) -> list[int]:
        """Units whose label beats its spatial-prior null, Benjamini-Hochberg at ``fdr`` over units x labels.

        Unit indices, ascending; empty for results saved without p-values.
        """
        from gdx.labelstats import benjamini_hochberg

        if self.pvalue is None:
            return []
        rejected = benjamini_hochberg(self.pvalue, fdr)
        labels = torch.tensor([self.labels.index(u.label) for u in self.unit_labels], dtype=torch.int64)
        passed = rejected[torch.arange(self.units), labels]
        return [int(u) for u in passed.nonzero().flatten()]

    def interpretable(self, iou_min: float | None = None, iqr_min: float | None = None) -> list[UnitLabel]:
        """Units whose best IoU exceeds ``iou_min`` (and IQR ``iqr_min`` in iqr mode), best first."""
        iou_min = self.settings.iou_min if iou_min is None else iou_min
        iqr_min = self.settings.iqr_min if iqr_min is None else iqr_min
        out = [
            u for u in self.unit_labels
            if u.iou > iou_min and (u.iqr is None or u.iqr > iqr_min)
        ]
        return sorted(out, key=lambda u: (-u.iou, u.unit))

    def summary(self, iou_min: float | None = None, fdr: float = 0.05) -> Summary:
        units = self.interpretable(iou_min)
        per_concept = Counter(u.label for u in units)
        per_category = Counter(self.categories.get(u.label, "concept") for u in units)
        sig = [self.unit_labels[u] for u in self.significant(fdr)] if self.pvalue is not None else None

        def ranked(c: Counter[str]) -> dict[str, int]:
            return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))

        return Summary(
            layer=self.layer,
            units=self.units,
            interpretable=len(units),
            per_concept=ranked(per_concept),
            per_category=ranked(per_category),
            significant=None if sig is None else len(sig),
            significant_per_concept=ranked(Counter(u.label for u in sig or [])),
            significant_per_category=ranked(Counter(self.categories.get(u.label, "concept") for u in sig or [])),
            fdr=fdr,
        )

    def _concept_column(self, concept: str) -> torch.Tensor:
        if concept not in self.labels:
            raise KeyError(f"unknown concept {concept!r}; this dissection has: {', '.join(self.labels)}")
        return self.iou[:, self.labels.index(concept)]

    def top_units(self, concept: str, n: int = 20) -> list[int]:
        """Up to ``n`` units ranked by their IoU with ``concept``, highest first (for intervention).

        Only units whose IoU with ``concept`` is above 0 are returned, so the list is
        shorter than ``n`` when fewer units overlap the concept at all; a
        :class:`UserWarning` then says how many there were. Ties keep unit order.
        """
        col = self._concept_column(concept)
        order = torch.argsort(col, descending=True, stable=True)
        ranked = [int(u) for u in order.tolist() if float(col[u]) > 0.0]
        if len(ranked) < n:
            warnings.warn(
                f"top_units({concept!r}, n={n}): only {len(ranked)} of {self.units} units of {self.layer} "
                f"have IoU > 0 with {concept!r}; returning those {len(ranked)}.",
                stacklevel=2,
            )
        return ranked[:n]

    def iou_of(self, unit: int, concept: str) -> float:
        """The IoU of ``unit`` with ``concept`` (``UnitLabel.iou`` is the IoU of its best concept only)."""
        if not 0 <= int(unit) < self.units:
            raise IndexError(f"unit {unit} is out of range: {self.layer} has units 0..{self.units - 1}")
        return float(self._concept_column(concept)[int(unit)])

    # -- persistence -------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path/dissection.json`` and ``path/dissection.safetensors``; returns ``path``."""
        folder = Path(path)
        tensors = {"iou": self.iou, "thresholds": self.thresholds,
                   "top_indices": self.top_indices, "top_values": self.top_values}
        for name in ("iqr", "levels", "fractions", "label_fraction", "iou_ci", "null_iou", "pvalue"):
            value = getattr(self, name)
            if value is not None:
                tensors[name] = value
        for k, v in self.extra.items():
            tensors[f"extra.{k}"] = v
        if not self.run_id:
            self.run_id = uuid.uuid4().hex
        atomic_save_tensors(folder / "dissection.safetensors", tensors, metadata={"run_id": self.run_id})
        meta = {
            "format": "gdx.dissection",
            "version": FORMAT_VERSION,
            "layer": self.layer,
            "run_id": self.run_id,
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
        meta = _read_json(meta_path)
        if not isinstance(meta, dict) or meta.get("format") != "gdx.dissection" or not isinstance(meta.get("version", 0), int) \
                or meta.get("version", 0) > FORMAT_VERSION:
            raise ResultFormatError(f"{meta_path} is not a gdx dissection of a version this gdx reads")
        t, tensor_meta = load_tensors_and_metadata(folder / "dissection.safetensors")
        run_id = str(meta.get("run_id") or "")
        if run_id and tensor_meta.get("run_id") != run_id:
            raise ResultFormatError(
                f"{folder}: dissection.json (run {run_id}) and dissection.safetensors "
                f"(run {tensor_meta.get('run_id', 'unknown')}) come from different runs; "
                "the folder was left half-written. Run 'gdx run' again (or restore both files)."
            )
        extra = {k[len("extra."):]: v for k, v in t.items() if k.startswith("extra.")}
        try:
            return cls(
                layer=str(meta["layer"]),
                labels=[str(x) for x in meta["labels"]],
                categories=dict(meta["categories"]),
                iou=t["iou"],
                thresholds=t["thresholds"],
                unit_labels=[_unit_label(u) for u in meta["unit_labels"]],
                top_indices=t["top_indices"],
                top_values=t["top_values"],
                settings=DissectionSettings(**meta["settings"]),
                iqr=t.get("iqr"),
                levels=t.get("levels"),
                fractions=t.get("fractions"),
                label_fraction=t.get("label_fraction"),
                extra=extra,
                run_id=run_id,
                iou_ci=t.get("iou_ci"),
                null_iou=t.get("null_iou"),
                pvalue=t.get("pvalue"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultFormatError(
                f"{folder} holds a damaged dissection ({type(exc).__name__}: {str(exc)[:200]}); run 'gdx run' again"
            ) from None


def _unit_label(data: dict[str, Any]) -> UnitLabel:
    """A saved unit label (older files lack the interval and p-value: they load as None)."""
    data = dict(data)
    if data.get("iou_ci") is not None:
        data["iou_ci"] = (float(data["iou_ci"][0]), float(data["iou_ci"][1]))
    return UnitLabel(**data)


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
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
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
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind != cls._kind:
            raise ResultFormatError(f"expected a saved {cls._kind!r} result, found kind {kind!r}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kwargs = {k: v for k, v in data.items() if k in names}
        try:
            for name in cls._tensors:
                if kwargs.get(name) is not None:
                    value = kwargs[name]
                    kwargs[name] = torch.tensor(value, dtype=torch.bool if name == "contains" else torch.float32)
            return cls(**kwargs)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ResultFormatError(
                f"a saved {cls._kind!r} result is damaged ({type(exc).__name__}: {str(exc)[:200]}); make it again"
            ) from None

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
