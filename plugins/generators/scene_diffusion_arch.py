"""The bundled scene diffusion model: a compact pixel-space U-Net with a few-step flow sampler.

Why this design: the scene world is 64x64 RGB, small enough to model in pixel space (no
autoencoder to train, and every block sees image structure). The U-Net predicts a
*rectified-flow* velocity: images are ``x_t = (1 - t) * x_0 + t * noise`` with t in [0, 1],
the target is ``noise - x_0``, and sampling integrates ``dx/dt = v(x, t)`` from pure noise
at t = 1 to an image at t = 0 with a handful of Euler steps. Flow matching's paths are
straight where the data allow it, so 8-10 Euler steps already give sharp layouts, where a
DDPM needs hundreds and a distilled sampler would need a second training run.

The module *is* the sampler: ``forward(z)`` runs every step, so a generator adapter can
call it like a GAN (``images = module(noise)``) while each named block (``stem``,
``down1``, ``down2``, ``mid``, ``up2``, ``up1``, ``head``) runs once per step -- the
engine addresses a block at step K as ``"mid@K"``. Block outputs are feature maps
N x C x H x W: ``down1``/``up1`` at 32x32, ``down2``/``up2`` at 16x16, ``mid`` at 8x8.
A 2x2 pixel-unshuffle stem puts the first level at 32x32 (a quarter of the 64x64 cost,
where a CPU spends most of its time) and a pixel-shuffle head returns to 64x64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Default widths (32x32, 16x16, 8x8), time-embedding width, default sampling steps.
DEFAULT_CONFIG: dict[str, Any] = {
    "arch": "scene-flow-unet",
    "widths": [64, 128, 256],
    "temb": 128,
    "steps": 10,
    "shift": 1.0,
    "resolution": 64,
}


def _groups(channels: int) -> int:
    return 8 if channels % 8 == 0 else 1


def _zero(conv: nn.Conv2d) -> None:
    """Start a residual branch's last layer at zero, so every block starts as the identity."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv -> time scale/shift -> GroupNorm -> SiLU -> 3x3 conv, plus a skip."""

    def __init__(self, cin: int, cout: int, temb: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(temb, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip: nn.Module = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        _zero(self.conv2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        out: torch.Tensor = self.skip(x) + h
        return out


class Attention(nn.Module):
    """Single-head self-attention over the positions of a small feature map (the 8x8 middle)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        _zero(self.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).transpose(2, 3).unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)
        out: torch.Tensor = x + self.proj(a.transpose(1, 2).reshape(n, c, h, w))
        return out


class Stem(nn.Module):
    """64x64 RGB -> 2x2 pixel-unshuffle -> 3x3 conv: N x C1 x 32 x 32."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(2)
        self.conv = nn.Conv2d(12, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(self.unshuffle(x))
        return out


class DownBlock(nn.Module):
    """(optional 2x average-pool) -> residual block; its output is also the skip of the matching up block."""

    def __init__(self, cin: int, cout: int, temb: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.res = ResBlock(cin, cout, temb)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = F.avg_pool2d(x, 2)
        out: torch.Tensor = self.res(x, emb)
        return out


class MidBlock(nn.Module):
    """2x average-pool -> residual block -> self-attention -> residual block, at 8x8."""

    def __init__(self, cin: int, cout: int, temb: int) -> None:
        super().__init__()
        self.res1 = ResBlock(cin, cout, temb)
        self.attn = Attention(cout)
        self.res2 = ResBlock(cout, cout, temb)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.res2(self.attn(self.res1(F.avg_pool2d(x, 2), emb)), emb)
        return out


class UpBlock(nn.Module):
    """2x nearest upsample -> concatenate the skip -> residual block."""

    def __init__(self, cin: int, cskip: int, cout: int, temb: int) -> None:
        super().__init__()
        self.res = ResBlock(cin + cskip, cout, temb)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        out: torch.Tensor = self.res(torch.cat([x, skip], dim=1), emb)
        return out


class Head(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv to 12 channels -> 2x2 pixel-shuffle: the velocity N x 3 x 64 x 64."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(width), width)
        self.conv = nn.Conv2d(width, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        _zero(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.shuffle(self.conv(F.silu(self.norm(x))))
        return out


class TimeEmbedding(nn.Module):
    """t in [0, 1] (N,) -> sinusoidal features -> 2-layer MLP: N x temb."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU())

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = (t.float() * 1000.0)[:, None] * freqs[None]
        out: torch.Tensor = self.mlp(torch.cat([args.sin(), args.cos()], dim=1))
        return out


def sampling_times(steps: int, shift: float = 1.0) -> list[float]:
    """The ``steps + 1`` times from 1 (noise) to 0 (image) that the Euler sampler visits.

    ``shift`` > 1 spends more steps at high noise (layout), < 1 at low noise (detail):
    ``t' = shift * t / (1 + (shift - 1) * t)`` on a uniform grid, as in SD3.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    grid = [1.0 - i / steps for i in range(steps + 1)]
    return [shift * t / (1.0 + (shift - 1.0) * t) for t in grid]


class SceneFlowUNet(nn.Module):
    """Rectified-flow U-Net for 64x64 scenes; ``forward(noise)`` samples images in [-1, 1].

    >>> net = SceneFlowUNet()
    >>> images = net(torch.randn(4, 3, 64, 64))   # 10 Euler steps; each block runs 10 times
    >>> v = net.velocity(images, torch.full((4,), 0.5))  # one network evaluation

    Args:
        widths: channels at 32x32, 16x16 and 8x8
        temb: width of the time embedding
        steps: Euler steps of :meth:`forward` (each runs every block once)
        shift: time-grid shift of :func:`sampling_times`
    """

    def __init__(self, widths: Sequence[int] = (64, 128, 256), temb: int = 128, steps: int = 10,
                 shift: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = (int(w) for w in widths)
        self.widths = (c1, c2, c3)
        self.steps = int(steps)
        self.shift = float(shift)
        self.time_embed = TimeEmbedding(temb)
        self.stem = Stem(c1)
        self.down1 = DownBlock(c1, c1, temb, down=False)
        self.down2 = DownBlock(c1, c2, temb, down=True)
        self.mid = MidBlock(c2, c3, temb)
        self.up2 = UpBlock(c3, c2, c2, temb)
        self.up1 = UpBlock(c2, c1, c1, temb)
        self.head = Head(c1)

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One evaluation: x_t N x 3 x 64 x 64 and t (N,) in [0, 1] -> velocity ``noise - x_0`` estimate."""
        emb = self.time_embed(t)
        s1 = self.down1(self.stem(x), emb)
        s2 = self.down2(s1, emb)
        h = self.mid(s2, emb)
        h = self.up2(h, s2, emb)
        h = self.up1(h, s1, emb)
        out: torch.Tensor = self.head(h)
        return out

    def sample(self, noise: torch.Tensor, steps: int | None = None, shift: float | None = None) -> torch.Tensor:
        """Euler integration of the flow from ``noise`` (t = 1) to images (t = 0), clamped to [-1, 1]."""
        times = sampling_times(self.steps if steps is None else steps, self.shift if shift is None else shift)
        x = noise
        for t, t_next in zip(times[:-1], times[1:]):
            v = self.velocity(x, torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype))
            x = x + (t_next - t) * v
        return x.clamp(-1.0, 1.0)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.sample(noise)


def build_from_config(config: dict[str, Any]) -> SceneFlowUNet:
    """The module a JSON config (as written by ``tools.scenes.train_diffusion --export``) describes."""
    if config.get("arch") != "scene-flow-unet":
        raise ValueError(f"not a scene-flow-unet config: arch={config.get('arch')!r}")
    return SceneFlowUNet(
        widths=[int(w) for w in config["widths"]],
        temb=int(config["temb"]),
        steps=int(config["steps"]),
        shift=float(config.get("shift", 1.0)),
    )
