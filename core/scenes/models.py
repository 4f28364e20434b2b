"""The network definitions shared by the scene training scripts and the bundled plugins.

Why a separate module: the plugin that serves a model and the script that trains it must
build exactly the same module tree, or the shipped state dict would not load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: The bundled scene segmenter: a U-Net on a MobileNetV3-small encoder (about 1M
#: parameters), at 64x64 four levels deep (4x4 bottleneck: it sees the whole scene).
SEGMENTER_CONFIG: dict[str, Any] = {
    "arch": "Unet",
    "encoder_name": "tu-mobilenetv3_small_100",
    "encoder_depth": 4,
    "decoder_channels": [64, 32, 16, 16],
    "input_size": [64, 64],
}


class SceneSegmenterNet(nn.Module):
    """RGB N x 3 x H x W in [-1, 1] -> logits N x C x H x W (H, W multiples of 16).

    The input range is the model's own normalisation (it was trained on [-1, 1] images),
    so the ONNX export of this module needs no preprocessing outside it.
    """

    def __init__(self, num_classes: int, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        cfg = dict(SEGMENTER_CONFIG if config is None else config)
        arch = getattr(smp, cfg["arch"])
        self.net = arch(
            encoder_name=cfg["encoder_name"],
            encoder_weights=None,
            encoder_depth=cfg["encoder_depth"],
            decoder_channels=list(cfg["decoder_channels"]),
            classes=num_classes,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
