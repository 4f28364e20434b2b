"""The ProGAN generator architecture, module for module as gandissect builds it.

Parameter names (``layer{K}.conv.weight``, ``layer{K}.wscale.b``,
``output_{R}x{R}.conv.weight``, ``output_{R}x{R}.wscale.b``) match the published
gandissect ``*_lsun.pth`` checkpoints, so those state dicts load with
``load_state_dict`` unchanged, and so do the bundled scene GAN's weights.

Each block is PixelNorm -> (nearest 2x up) -> conv (no bias) -> WScale(+bias) ->
LeakyReLU(0.2). ``sizes`` lists the feature depth at each resolution, starting with
the latent size: ``[z_dim, depth@4x4, depth@8x8, ...]``; the output resolution is
``2 * 2**len(sizes)``. The output is RGB, roughly in [-1, 1] and unclamped.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

#: Feature depths per output resolution, as in gandissect and Karras et al. 2018.
STANDARD_SIZES: dict[int, list[int]] = {
    8: [512, 512, 512],
    16: [512, 512, 512, 512],
    32: [512, 512, 512, 512, 256],
    64: [512, 512, 512, 512, 256, 128],
    128: [512, 512, 512, 512, 256, 128, 64],
    256: [512, 512, 512, 512, 256, 128, 64, 32],
    1024: [512, 512, 512, 512, 512, 256, 128, 64, 32, 16],
}


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector to unit root-mean-square."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class DoubleResolution(nn.Module):
    """Nearest-neighbour 2x upsampling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, scale_factor=2, mode="nearest")


class WScale(nn.Module):
    """Equalised learning rate: scale by He's constant at run time, then add the bias ``b``."""

    def __init__(self, size: int, fan_in: int, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.scale = gain / math.sqrt(fan_in)
        self.b = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.b.view(1, -1, 1, 1)


class NormConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int) -> None:
        super().__init__()
        self.norm = PixelNorm()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, 1, padding, bias=False)
        self.wscale = WScale(out_channels, in_channels, gain=math.sqrt(2) / kernel_size)
        self.relu = nn.LeakyReLU(negative_slope=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.wscale(self.conv(self.norm(x))))


class NormUpscaleConvBlock(NormConvBlock):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding)
        self.up = DoubleResolution()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.wscale(self.conv(self.up(self.norm(x)))))


class OutputConvBlock(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.norm = PixelNorm()
        self.conv = nn.Conv2d(in_channels, 3, kernel_size=1, padding=0, bias=False)
        self.wscale = WScale(3, in_channels, gain=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wscale(self.conv(self.norm(x)))


class ProgressiveGenerator(nn.Sequential):
    """ProGAN generator: ``z`` (N x z_dim) -> image (N x 3 x R x R).

    Layers are ``layer1`` ... ``layer{2*(len(sizes)-1)}`` then ``output_{R}x{R}``;
    ``layer1``/``layer2`` are 4x4, ``layer3``/``layer4`` 8x8, and so on.

    >>> g = ProgressiveGenerator(sizes=[64, 64, 32, 16])
    >>> g(torch.randn(2, 64)).shape
    torch.Size([2, 3, 16, 16])
    """

    def __init__(self, resolution: int | None = None, sizes: list[int] | None = None) -> None:
        if (resolution is None) == (sizes is None):
            raise ValueError("give exactly one of resolution= or sizes=")
        if sizes is None:
            if resolution not in STANDARD_SIZES:
                raise ValueError(
                    f"no standard ProGAN sizes for resolution {resolution}; "
                    f"known: {sorted(STANDARD_SIZES)} (or pass sizes=[...])"
                )
            sizes = STANDARD_SIZES[resolution]
        if len(sizes) < 2:
            raise ValueError("sizes needs the latent size and at least one depth")
        sequence: list[tuple[str, nn.Module]] = []
        sequence.append(("layer1", NormConvBlock(sizes[0], sizes[1], kernel_size=4, padding=3)))
        sequence.append(("layer2", NormConvBlock(sizes[1], sizes[1], kernel_size=3, padding=1)))
        for si, so in zip(sizes[1:-1], sizes[2:]):
            k = len(sequence)
            sequence.append((f"layer{k + 1}", NormUpscaleConvBlock(si, so, kernel_size=3, padding=1)))
            sequence.append((f"layer{k + 2}", NormConvBlock(so, so, kernel_size=3, padding=1)))
        res = 4 * 2 ** (len(sequence) // 2 - 1)
        sequence.append((f"output_{res}x{res}", OutputConvBlock(sizes[-1])))
        super().__init__(OrderedDict(sequence))
        self.sizes = list(sizes)
        self.resolution = res
        self.z_dim = sizes[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.view(z.shape[0], z.shape[1], 1, 1)
        for module in self:
            x = module(x)
        return x


def sizes_from_state_dict(state_dict: dict[str, torch.Tensor]) -> list[int]:
    """Read the feature depths ``[z_dim, depth@4, depth@8, ...]`` off a state dict."""
    sizes: list[int] = []
    i = 0
    while f"layer{i + 1}.conv.weight" in state_dict:
        weight = state_dict[f"layer{i + 1}.conv.weight"]
        if i == 0:
            sizes.append(int(weight.shape[1]))
        if i % 2 == 0:
            sizes.append(int(weight.shape[0]))
        i += 1
    return sizes
