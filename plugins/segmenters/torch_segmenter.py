"""A Segmenter around a torch module that outputs class logits, with exact preprocessing.

Every adapter that runs a torch model (smp, torchvision, mit_semseg) differs only in
how it builds the module and how the model was trained to see its input. That input
convention is a :class:`Preprocess`; the rest (resizing to a stride multiple,
upsampling the logits back, argmax) is shared here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gdx.errors import AdapterOptionError
from gdx.interfaces import Segmenter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How a model expects its input, starting from gdx's RGB images in [-1, 1].

    ``x = (to_range(img) [RGB->BGR if bgr] - mean) / std`` where ``to_range`` maps
    [-1, 1] linearly onto ``[0, scale]`` (``scale`` 1 for "0..1" models, 255 for
    "0..255" models). ``mean``/``std`` are in the same units as ``scale``.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: float = 1.0
    bgr: bool = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() + 1.0) * (self.scale / 2.0)
        if self.bgr:
            x = x.flip(1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def describe(self) -> str:
        order = "BGR" if self.bgr else "RGB"
        rng = "0..1" if self.scale == 1.0 else f"0..{self.scale:g}"
        return f"{order} {rng}, mean {list(self.mean)}, std {list(self.std)}"


class TorchSegmenter(Segmenter):
    """Runs ``module(preprocess(images))`` -> logits and returns per-pixel argmax labels.

    ``module`` returns logits N x C x h x w (any h, w) or, for multi-head models, a
    list of K such tensors whose classes are offsets into one shared label list
    (``head_offsets``). Inputs whose size is not a multiple of ``multiple`` (the
    network's stride) are resized bilinearly up to the next multiple, as the
    reference test loaders do; logits are resized back to the input size bilinearly
    (``align_corners=False``) before the argmax, as mit_semseg and smp do.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        labels: Sequence[str],
        categories: dict[str, str] | None = None,
        name: str,
        preprocess: Preprocess,
        input_size: tuple[int, int] | None = None,
        multiple: int = 1,
        head_offsets: Sequence[int] | None = None,
        postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        details: str = "",
    ) -> None:
        self.module = module.eval()
        self._labels = list(labels)
        self._categories = dict(categories or {})
        self.name = name
        self.preprocess = preprocess
        self.input_size = input_size
        self.multiple = max(1, int(multiple))
        self.head_offsets = list(head_offsets) if head_offsets is not None else None
        self.postprocess = postprocess
        self.details = details

    @property
    def labels(self) -> list[str]:
        return self._labels

    @property
    def categories(self) -> dict[str, str]:
        return self._categories

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> "TorchSegmenter":
        self.module.to(device)
        return self

    def logits(self, images: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Class logits at the input's resolution (N x C x H x W, or a list per head)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images N x 3 x H x W, got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        x = self.preprocess(images.to(self.device))
        m = self.multiple
        padded = (-(-h // m) * m, -(-w // m) * m)
        if padded != (h, w):
            x = F.interpolate(x, size=padded, mode="bilinear", align_corners=False)
        with torch.no_grad():
            out = self.module(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        resized = [
            o if tuple(o.shape[-2:]) == (h, w) else F.interpolate(o, size=(h, w), mode="bilinear", align_corners=False)
            for o in outs
        ]
        return resized if isinstance(out, (list, tuple)) else resized[0]

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        out = self.logits(images)
        if isinstance(out, list):
            offsets = self.head_offsets or [0] * len(out)
            labels = torch.stack([o.argmax(1) + off for o, off in zip(out, offsets)], dim=1)
        else:
            labels = out.argmax(1)
        if self.postprocess is not None:
            labels = self.postprocess(labels)
        return labels.to(images.device)

    def describe(self) -> str:
        extra = f"; {self.details}" if self.details else ""
        return f"{self.name} ({len(self.labels)} labels; input {self.preprocess.describe()}{extra})"


def parse_size(text: str | None, *, option: str = "input_size") -> tuple[int, int] | None:
    """``"256"`` -> (256, 256), ``"240x320"`` -> (240, 320), ``None``/``""``/``"none"`` -> None."""
    if text is None:
        return None
    if isinstance(text, (tuple, list)) and len(text) == 2:
        return int(text[0]), int(text[1])
    if isinstance(text, int):
        return int(text), int(text)
    s = str(text).strip().lower()
    if s in ("", "none", "auto"):
        return None
    parts = s.replace("×", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) <= 0:
        raise AdapterOptionError(f"option {option}={text!r}: expected HxW (e.g. 256x256) or a single size.")
    return dims[0], dims[1]


def parse_triple(text: str | Sequence[float] | None, *, option: str) -> tuple[float, float, float] | None:
    """``"0.485,0.456,0.406"`` -> a 3-tuple of floats (one value is repeated); None stays None."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        values = [float(text)]
    elif isinstance(text, str):
        if not text.strip() or text.strip().lower() == "none":
            return None
        try:
            values = [float(v) for v in text.replace(" ", "").split(",") if v]
        except ValueError:
            values = []
    else:
        values = [float(v) for v in text]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise AdapterOptionError(f"option {option}={text!r}: expected three comma-separated numbers (R,G,B).")
    return values[0], values[1], values[2]
