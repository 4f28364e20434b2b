"""Segmenter entries of the adapter smoke test (tests/test_adapter_smoke.py).

``SEGMENTER_OPTIONS[name](tmp_path)`` writes the tiny random checkpoint segmenter
``name`` needs and returns the options to build it with; ``check_segmenter`` is the
contract every segmenter must meet. A registered segmenter without an entry here
fails the smoke test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import gdx

import seg_formats as sf

OptionsFn = Callable[[Path], dict[str, Any]]


def _upernet(tmp: Path) -> dict[str, Any]:
    folder, _ = sf.smp_directory(tmp / "upernet", classes=150, decoder_channels=32)
    return {"weights": str(folder)}


def _deeplab(tmp: Path) -> dict[str, Any]:
    path, _ = sf.smp_state_dict(tmp / "deeplab.pth", arch="DeepLabV3", encoder="resnet18", classes=21)
    return {"weights": str(path), "input_size": "64x64"}


def _onnx(tmp: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
    path = sf.onnx_export(tmp / "tiny.onnx", net, size=(64, 64), batch=1)
    (tmp / "labels.txt").write_text("sky\ntree\nroad\n")
    return {"model": str(path), "labels": str(tmp / "labels.txt")}


SEGMENTER_OPTIONS: dict[str, OptionsFn] = {
    "toy": lambda tmp: {},
    "scene": lambda tmp: {},  # the bundled weights
    "upernet": _upernet,
    "deeplab": _deeplab,
    "onnx": _onnx,
}


def check_segmenter(name: str, seg: gdx.Segmenter) -> None:
    """The Segmenter contract: labels, categories, shapes, dtype, range, determinism."""
    assert isinstance(seg, gdx.Segmenter), f"{name}: the factory must return a gdx.Segmenter"
    labels = list(seg.labels)
    assert labels and len(set(labels)) == len(labels), f"{name}: labels must be non-empty and unique"
    assert set(seg.categories) <= set(labels), f"{name}: categories must name labels"
    assert seg.input_size is None or (len(seg.input_size) == 2 and min(seg.input_size) > 0)
    assert seg.to("cpu") is seg
    assert isinstance(seg.describe(), str) and seg.describe()
    images = sf.images(2, (64, 64), seed=5)
    out = seg.segment(images)
    assert out.dtype == torch.int64, f"{name}: labels must be int64, got {out.dtype}"
    assert out.shape[0] == 2 and out.ndim in (3, 4), f"{name}: got shape {tuple(out.shape)}"
    assert int(out.min()) >= -1 and int(out.max()) < len(labels), f"{name}: label values out of range"
    assert torch.equal(out, seg.segment(images)), f"{name}: segment must be deterministic"
