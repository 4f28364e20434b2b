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


class _UpConv(nn.Module):
    """(optional nearest 2x up) -> 3x3 conv -> BatchNorm -> LeakyReLU(0.2)."""

    def __init__(self, cin: int, cout: int, up: bool) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest") if up else nn.Identity()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.norm = nn.BatchNorm2d(cout)
        self.relu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.norm(self.conv(self.up(x))))


class _Project(nn.Module):
    """Latent N x z -> N x C x 4 x 4 (linear, BatchNorm, LeakyReLU)."""

    def __init__(self, z_dim: int, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(z_dim, channels * 16, bias=False)
        self.norm = nn.BatchNorm2d(channels)
        self.relu = nn.LeakyReLU(0.2)
        self.channels = channels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.relu(self.norm(self.fc(z.flatten(1)).view(-1, self.channels, 4, 4)))


class SceneVAEDecoder(nn.Sequential):
    """The scene VAE's decoder: z (N x z_dim) -> image N x 3 x 64 x 64 in about [-1, 1].

    Layers ``layer1`` (4x4), ``layer2`` (4x4), ``layer3``/``layer4`` (8x8),
    ``layer5``/``layer6`` (16x16), ``layer7`` (32x32), ``layer8`` (64x64), ``output``
    (tanh). BatchNorm trains this plain conv decoder quickly and reliably on a CPU budget.
    """

    def __init__(self, z_dim: int = 64, widths: tuple[int, ...] = (256, 128, 64, 32, 16)) -> None:
        w4, w8, w16, w32, w64 = widths
        super().__init__()
        self.add_module("layer1", _Project(z_dim, w4))
        self.add_module("layer2", _UpConv(w4, w4, up=False))
        self.add_module("layer3", _UpConv(w4, w8, up=True))
        self.add_module("layer4", _UpConv(w8, w8, up=False))
        self.add_module("layer5", _UpConv(w8, w16, up=True))
        self.add_module("layer6", _UpConv(w16, w16, up=False))
        self.add_module("layer7", _UpConv(w16, w32, up=True))
        self.add_module("layer8", _UpConv(w32, w64, up=True))
        self.add_module("output", nn.Sequential(nn.Conv2d(w64, 3, 3, 1, 1), nn.Tanh()))
        self.z_dim = z_dim
        self.widths = list(widths)


class SceneRealismNet(nn.Module):
    """RGB N x 3 x 64 x 64 in [-1, 1] -> N logits, positive = "looks like a rendered scene".

    A small all-convolutional critic (four stride-2 convolutions, then the mean of a 1x1
    head over the 4x4 grid): the mean over positions makes it a sum of local judgements,
    so a streak or a blotch anywhere lowers the score. Trained by
    ``tools.scenes.train_realism`` on rendered scenes against scene-GAN samples; it reads
    pixels, so it is independent of the segmenter features the Fréchet distance uses.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for w in widths:
            layers += [nn.Conv2d(cin, w, 4, 2, 1), nn.LeakyReLU(0.2)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(cin, 1, 1)
        self.widths = list(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).mean(dim=(1, 2, 3))


class SceneEncoder(nn.Module):
    """64x64 RGB in [-1, 1] -> a scene GAN latent (N x z_dim), the warm start of ``gdx.invert``.

    Four stride-2 convolutions (64 -> 4) and a linear head. The output is scaled to unit
    RMS per image: the GAN pixel-normalises its latent first, so only the direction
    matters, and unit RMS is the scale of the N(0, I) latents the inversion otherwise
    starts from (its learning rate is tuned for them). Trained by ``tools.scenes.train_encoder``.
    """

    def __init__(self, z_dim: int = 128, widths: tuple[int, ...] = (32, 64, 128, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for w in widths:
            layers += [nn.Conv2d(cin, w, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(w, w, 3, 1, 1), nn.LeakyReLU(0.2)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin * 16, z_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z = self.head(self.features(images).flatten(1))
        return z / z.pow(2).mean(1, keepdim=True).add(1e-8).sqrt()
