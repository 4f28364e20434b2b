"""Label lists for the segmenter adapters: the built-in ADE20K/VOC lists and user files.

A segmenter's output index ``i`` means ``labels[i]``; these helpers make sure the
list a model is paired with has exactly as many names as the model has classes, so
a wrong labels file fails at load time instead of mislabelling every unit.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from gdx.errors import CheckpointError

#: PASCAL VOC 2012 classes in the order torchvision's and most VOC models predict them.
#: Index 0 ("background") is a real class of these models: see ``deeplab.py``.
VOC_LABELS: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)


@dataclass(frozen=True)
class LabelSet:
    """Names for a model's output indices, plus optional label -> category."""

    labels: list[str]
    categories: dict[str, str] = field(default_factory=dict)
    #: K label heads sharing one index space (e.g. ["object", "part", "material"]); empty for one.
    heads: list[str] = field(default_factory=list)


def _data_path(name: str) -> resources.abc.Traversable:
    return resources.files("gdx.plugins.segmenters").joinpath("data", name)


#: Where the ADE20K categories come from (also in ``data/README.md`` and docs/adapters.md).
ADE20K_CATEGORY_SOURCE = (
    "the Stuff column of object150_info.csv (CSAILVision/semantic-segmentation-pytorch): "
    "the Scene Parsing benchmark's split of its 150 classes into 35 stuff and 115 discrete objects"
)


def ade20k_labels() -> LabelSet:
    """The 150 ADE20K scene-parsing classes (first synonym of each row), "stuff" or "object".

    Order as CSAIL mit_semseg and smp's ADE20K conversions predict them (index 0 =
    wall). The data file is CSAILVision/semantic-segmentation-pytorch's
    object150_info.csv, shipped as package data; its ``Stuff`` column (1 for 35 classes
    such as sky, grass, road, wall, water) gives the category (:data:`ADE20K_CATEGORY_SOURCE`).
    """
    text = _data_path("ade20k_object150_info.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    rows.sort(key=lambda r: int(r["Idx"]))
    names = unique_names([_ADE20K_RENAMES.get(int(r["Idx"]), r["Name"].split(";")[0].strip()) for r in rows])
    return LabelSet(names, {n: _stuff_or_object(r) for n, r in zip(names, rows)})


def _stuff_or_object(row: dict[str, str]) -> str:
    """"stuff" for a row whose ``Stuff`` column is 1 (object150_info.csv), else "object"."""
    return "stuff" if str(row.get("Stuff", "")).strip() == "1" else "object"


#: Two ADE20K rows share the first synonym "screen"; their full names in ADE20K's
#: objectInfo150 ("screen door, screen" and "screen, silver screen, projection screen")
#: tell them apart, and label names must be unique.
_ADE20K_RENAMES = {59: "screen door", 131: "projection screen"}


def unique_names(names: list[str]) -> list[str]:
    """``names`` with later repeats suffixed ``#<index>`` so every label name is unique."""
    seen: set[str] = set()
    out = []
    for i, n in enumerate(names):
        out.append(n if n not in seen else f"{n}#{i}")
        seen.add(n)
    return out


def ade20k_palette() -> list[tuple[int, int, int]]:
    """The ADE20K colour of each of the 150 classes (RGB 0-255), for visualisations."""
    data = json.loads(_data_path("ade20k_color150.json").read_text(encoding="utf-8"))
    return [(int(c[0]), int(c[1]), int(c[2])) for c in data["colors"]]


def voc_labels() -> LabelSet:
    """The 21 PASCAL VOC labels (index 0 = background), all of category "object"."""
    return LabelSet(list(VOC_LABELS), {n: "object" for n in VOC_LABELS})


def read_labels_file(path: str | os.PathLike[str]) -> LabelSet:
    """Labels from a ``.txt`` (one name per line) or ``.json`` file.

    JSON may be a list of names or ``{"labels": [...], "categories": {name: category}}``
    (optionally with ``"heads": [...]`` for multi-head models). A CSV with a ``Name``
    column (ADE20K's object150_info.csv layout) also works; its first synonym is used,
    and a ``Stuff`` column (1 = stuff) gives the categories "stuff" / "object".
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"labels file not found: {p}. Pass the segmenter option `labels=<file .txt/.json>`.")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"labels file {p} is not valid JSON ({exc}).") from None
        if isinstance(data, list):
            data = {"labels": data}
        if not isinstance(data, dict) or not isinstance(data.get("labels"), list):
            raise CheckpointError(
                f"labels file {p}: expected a JSON list of names or {{\"labels\": [...], \"categories\": {{...}}}}."
            )
        labels = [str(x) for x in data["labels"]]
        cats = {str(k): str(v) for k, v in (data.get("categories") or {}).items()}
        heads = [str(h) for h in (data.get("heads") or [])]
        unknown = sorted(set(cats) - set(labels))
        if unknown:
            raise CheckpointError(f"labels file {p}: categories name unknown labels {unknown[:5]}.")
        result = LabelSet(labels, cats, heads)
    elif p.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if not rows or "Name" not in rows[0]:
            raise CheckpointError(f"labels file {p}: a CSV needs a 'Name' column.")
        names = [r["Name"].split(";")[0].strip() for r in rows]
        cats = {n: _stuff_or_object(r) for n, r in zip(names, rows)} if "Stuff" in rows[0] else {}
        result = LabelSet(names, cats)
    else:
        result = LabelSet([line.strip() for line in text.splitlines() if line.strip()])
    if not result.labels:
        raise CheckpointError(f"labels file {p} holds no label names.")
    if len(set(result.labels)) != len(result.labels):
        dup = sorted({n for n in result.labels if result.labels.count(n) > 1})
        raise CheckpointError(f"labels file {p}: duplicate label names {dup[:5]}; names must be unique.")
    return result


def choose_labels(num_classes: int, labels: str | None, *, default: LabelSet | None, what: str) -> LabelSet:
    """The label set for a model with ``num_classes`` outputs.

    ``labels`` (a file path) wins; else ``default`` when its size matches; else
    generic names ``class0..`` so that the model still runs, which the caller
    documents. A labels file of the wrong length is an error.
    """
    if labels:
        chosen = read_labels_file(labels)
        if len(chosen.labels) != num_classes:
            raise CheckpointError(
                f"{what}: the labels file {labels} has {len(chosen.labels)} names but the model "
                f"predicts {num_classes} classes. Use the labels file that came with the model."
            )
        return chosen
    if default is not None and len(default.labels) == num_classes:
        return default
    return LabelSet([f"class{i}" for i in range(num_classes)])
