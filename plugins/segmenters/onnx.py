"""The "onnx" segmenter: any ONNX segmentation model plus a labels file, run by onnxruntime.

The segmenter ``onnx`` with the options ``model=net.onnx`` and ``labels=labels.json``
(``gdx.load_segmenter("onnx", model="net.onnx", labels="labels.json")``). The model takes
one image batch N x 3 x H x W and returns either class logits N x C x h x w (the
argmax is taken after bilinear resizing to the image size) or integer labels
N x h x w (resized nearest-neighbour; negative values mean "no label").

onnxruntime-gpu silently falls back to the CPU when CUDA cannot start, so the
segmenter records the execution providers the session really uses
(``session.get_providers()``) in :attr:`OnnxSegmenter.providers` and in
``describe()``, and warns when a requested provider did not start.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import gdx
from gdx.checkpoints import existing_file
from gdx.errors import AdapterOptionError, CheckpointError, SegmenterOutputError
from gdx.interfaces import Segmenter

from gdx.plugins.segmenters.labels import LabelSet, read_labels_file
from gdx.plugins.segmenters.torch_segmenter import parse_size, parse_triple
from gdx.hookspecs import Register

WHAT = "onnx segmenter model"
RANGES = {"-1,1": (-1.0, 1.0), "0,1": (0.0, 1.0), "0,255": (0.0, 255.0)}
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def default_providers() -> list[str]:
    """CUDA then CPU when this onnxruntime build has CUDA and a CUDA driver is present, else CPU.

    onnxruntime-gpu lists CUDA as available even on machines without a GPU, and
    asking for it there prints an error before falling back; the driver library
    check avoids that noise. What really runs is read from the session afterwards.
    """
    import ctypes.util

    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = ["CPUExecutionProvider"] if "CPUExecutionProvider" in available else []
    if "CUDAExecutionProvider" in available and ctypes.util.find_library("cuda"):
        wanted.insert(0, "CUDAExecutionProvider")
    return wanted or list(available)


def parse_providers(text: str | Sequence[str] | None) -> list[str]:
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "auto", "none")):
        return default_providers()
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in (s.strip() for s in items):
        low = item.lower()
        if low in ("cuda", "gpu"):
            item = "CUDAExecutionProvider"
        elif low == "cpu":
            item = "CPUExecutionProvider"
        elif low == "tensorrt":
            item = "TensorrtExecutionProvider"
        if item:
            out.append(item)
    return out


class OnnxSegmenter(Segmenter):
    """A Segmenter running an ONNX model through an onnxruntime ``InferenceSession``."""

    def __init__(
        self,
        path: Path,
        *,
        labels: LabelSet | None,
        input_size: tuple[int, int] | None,
        input_range: tuple[float, float],
        mean: tuple[float, float, float] | None,
        std: tuple[float, float, float] | None,
        bgr: bool,
        providers: list[str],
    ) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # the CUDA fallback is reported below, not as a log line
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"{WHAT}: cannot load {path} ({text}). The file may be truncated or not an ONNX model: "
                "re-export it (torch.onnx.export) or download it again."
            ) from None
        self.path = path
        self.name = "onnx"
        self.requested_providers = list(providers)
        #: The execution providers that actually run (CUDA may silently have fallen back to CPU).
        self.providers: list[str] = list(self.session.get_providers())
        missing = [p for p in providers if p not in self.providers]
        if missing:
            warnings.warn(
                f"onnx segmenter: requested {', '.join(missing)} did not start; running on "
                f"{', '.join(self.providers)}", stacklevel=3,
            )
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise CheckpointError(f"{WHAT}: {path} takes {len(inputs)} inputs; a segmenter needs exactly one image input.")
        self.input_name = inputs[0].name
        shape = list(inputs[0].shape)
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise CheckpointError(f"{WHAT}: {path} input {self.input_name} has shape {shape}; expected N x 3 x H x W.")
        self.input_dtype = _NP_TYPES.get(inputs[0].type)
        if self.input_dtype is None:
            raise CheckpointError(f"{WHAT}: {path} input type {inputs[0].type} is not a float image tensor.")
        self.static_batch = shape[0] if isinstance(shape[0], int) else None
        static_hw = (shape[2], shape[3]) if isinstance(shape[2], int) and isinstance(shape[3], int) else None
        self.model_size: tuple[int, int] | None = static_hw  # what the graph requires, if fixed
        self.input_size = input_size or static_hw
        self.input_range = input_range
        self.mean, self.std, self.bgr = mean, std, bgr
        out = self.session.get_outputs()[0]
        self.output_name = out.name
        self.output_is_logits = out.type in _NP_TYPES
        if not self.output_is_logits and "int" not in out.type:
            raise CheckpointError(f"{WHAT}: {path} output {out.name} has type {out.type}; expected logits or int labels.")
        self._labels = labels or self._labels_from_model(out.shape)

    def _labels_from_model(self, out_shape: Sequence[Any]) -> LabelSet:
        meta = self.session.get_modelmeta().custom_metadata_map
        if "labels" in meta:
            try:
                data = json.loads(meta["labels"])
                data = data if isinstance(data, dict) else {"labels": data}
                return LabelSet([str(x) for x in data["labels"]], dict(data.get("categories") or {}))
            except (json.JSONDecodeError, KeyError, TypeError):
                pass
        if self.output_is_logits and len(out_shape) == 4 and isinstance(out_shape[1], int):
            warnings.warn(
                f"onnx segmenter: {self.path.name} came without label names (no segmenter option "
                f"`labels=...` and no 'labels' metadata), so its {out_shape[1]} classes are named "
                f"class0..class{out_shape[1] - 1}; pass `labels=<file .txt/.json>` to get concept names.",
                stacklevel=4,
            )
            return LabelSet([f"class{i}" for i in range(out_shape[1])])
        raise CheckpointError(
            f"{WHAT}: {self.path} does not say how many classes it has; pass the segmenter option `labels=<file .txt/.json>`."
        )

    @property
    def labels(self) -> list[str]:
        return self._labels.labels

    @property
    def categories(self) -> dict[str, str]:
        return self._labels.categories

    def _prepare(self, images: torch.Tensor) -> np.ndarray:
        lo, hi = self.input_range
        x = images.detach().float().cpu()
        x = (x + 1.0) * ((hi - lo) / 2.0) + lo
        if self.bgr:
            x = x.flip(1)
        if self.mean is not None:
            x = x - torch.tensor(self.mean).view(1, 3, 1, 1)
        if self.std is not None:
            x = x / torch.tensor(self.std).view(1, 3, 1, 1)
        if self.model_size is not None and tuple(x.shape[-2:]) != self.model_size:
            x = F.interpolate(x, size=self.model_size, mode="bilinear", align_corners=False)
        return x.numpy().astype(self.input_dtype)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self.static_batch is not None and batch.shape[0] != self.static_batch:
            parts = [self._run_one(batch[i : i + self.static_batch]) for i in range(0, batch.shape[0], self.static_batch)]
            return np.concatenate(parts, 0)
        return self._run_one(batch)

    def _run_one(self, batch: np.ndarray) -> np.ndarray:
        if self.static_batch is not None and batch.shape[0] < self.static_batch:
            pad = np.repeat(batch[-1:], self.static_batch - batch.shape[0], 0)
            return self._run_one(np.concatenate([batch, pad], 0))[: batch.shape[0]]
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Raw logits N x C x H x W at the images' size (only for logits models)."""
        if not self.output_is_logits:
            raise SegmenterOutputError(f"{self.path} outputs labels, not logits")
        out = torch.from_numpy(np.ascontiguousarray(self._run(self._prepare(images)))).float()
        h, w = images.shape[-2:]
        if tuple(out.shape[-2:]) != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return out

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"onnx segmenter: expected images N x 3 x H x W, got {tuple(images.shape)}")
        if self.output_is_logits:
            labels = self.logits(images).argmax(1)
        else:
            out = torch.from_numpy(np.ascontiguousarray(self._run(self._prepare(images)))).long()
            if out.dim() == 4 and out.shape[1] == 1:
                out = out[:, 0]
            if out.dim() != 3:
                raise SegmenterOutputError(f"{self.path} returned labels of shape {tuple(out.shape)}; expected N x H x W.")
            h, w = images.shape[-2:]
            if tuple(out.shape[-2:]) != (h, w):
                out = F.interpolate(out[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
            labels = out.masked_fill(out < 0, -1)
            if int(labels.max()) >= len(self.labels):
                raise SegmenterOutputError(
                    f"{self.path} returned label {int(labels.max())} but the labels list has "
                    f"{len(self.labels)} names; pass the labels file that matches the model."
                )
        return labels.to(images.device)

    def describe(self) -> str:
        fell_back = [p for p in self.requested_providers if p not in self.providers]
        note = f" (requested {', '.join(fell_back)} did not start)" if fell_back else ""
        return (
            f"onnx {self.path.name} ({len(self.labels)} labels; providers {', '.join(self.providers)}{note}; "
            f"input range {self.input_range[0]:g}..{self.input_range[1]:g})"
        )


def build_onnx(
    model: str,
    labels: str | None = None,
    input_size: str | None = None,
    input_range: str = "-1,1",
    mean: str | None = None,
    std: str | None = None,
    bgr: bool = False,
    providers: str | None = None,
) -> gdx.Segmenter:
    """Any ONNX segmentation model (logits N x C x H x W or labels N x H x W) plus a labels file.

    ``model``: the .onnx file; ``labels``: .txt (one per line) or .json (list, or
    {"labels": [...], "categories": {...}}); ``input_size``: HxW (default: the model's
    static input size, else the image's); ``input_range``: "-1,1" (default), "0,1" or
    "0,255" (what the model expects before ``mean``/``std``, given in those units);
    ``mean``/``std``: per-channel normalisation, comma-separated, in ``input_range`` units;
    ``bgr``: feed BGR; ``providers``: comma-separated onnxruntime providers or
    cuda/cpu (default: CUDA then CPU). ``describe()`` names the provider that runs.
    """
    path = existing_file(model, what=WHAT)
    if path.is_dir():
        raise CheckpointError(f"{WHAT}: {path} is a directory; pass the .onnx file as the segmenter option `model=...`.")
    key = str(input_range).replace(" ", "").replace("..", ",")
    if key not in RANGES:
        raise AdapterOptionError(f"onnx option input_range={input_range!r}: choose one of {', '.join(RANGES)}.")
    chosen = read_labels_file(labels) if labels else None
    seg = OnnxSegmenter(
        path,
        labels=chosen,
        input_size=parse_size(input_size),
        input_range=RANGES[key],
        mean=parse_triple(mean, option="mean"),
        std=parse_triple(std, option="std"),
        bgr=bool(bgr),
        providers=parse_providers(providers),
    )
    if chosen is not None and seg.output_is_logits:
        n = seg.session.get_outputs()[0].shape[1]
        if isinstance(n, int) and n != len(chosen.labels):
            raise CheckpointError(
                f"{WHAT}: {path} predicts {n} classes but the labels file {labels} has {len(chosen.labels)} names."
            )
    return seg


@gdx.hookimpl
def register_segmenters(register: Register) -> None:
    register("onnx", build_onnx)


__all__ = ["OnnxSegmenter", "build_onnx", "default_providers"]
