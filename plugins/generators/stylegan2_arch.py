"""One StyleGAN2 generator in plain torch, named like NVIDIA's stylegan2-ada-pytorch.

Why in-repo: the reference code needs CUDA extensions (``bias_act``, ``upfirdn2d``)
and pickles its own source. This module uses only ``torch.nn.functional`` ops that run
on any device, and its module tree and state-dict keys are exactly those of
``training/networks.py`` (``Generator``), so a state dict recovered from an NVIDIA
``.pkl`` loads with ``load_state_dict(strict=True)``; rosinality's ``.pt`` files are
renamed onto the same tree (see :mod:`gdx.plugins.generators.stylegan2`).

Math follows NVIDIA's reference ops for the eval-mode, float32 path (fused modulated
convolution as a grouped conv; transposed conv + [1,3,3,1] FIR for upsampling; the
``_upfirdn2d_ref`` and ``_bias_act_ref`` formulas). gdx always computes in float32;
NVIDIA's fp16 blocks on a GPU differ from it by fp16 rounding.

Module tree (hookable layer names)::

    mapping.fc0 ... mapping.fc{L-1}     # z -> w, L = 8 usually (mapping.embed if conditional)
    synthesis.b4                        # const 4x4 input (parameter synthesis.b4.const)
    synthesis.b4.conv1, synthesis.b4.torgb
    synthesis.b{R}.conv0                # R = 8, 16, ... : upsampling 3x3 modulated conv
    synthesis.b{R}.conv1                # 3x3 modulated conv
    synthesis.b{R}.torgb                # 1x1 to RGB, added to the upsampled skip image
    synthesis.b{R}.conv0.affine         # style (w -> per-channel scales) of that layer

A block ``synthesis.b{R}`` outputs a tuple (features, image); hook ``conv0``/``conv1``
to read or edit the R x R feature maps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2.0)


@dataclasses.dataclass(frozen=True)
class StyleGAN2Config:
    """Everything that shapes the network and is not a weight.

    ``channels`` maps each resolution 4, 8, ..., img_resolution to its feature depth.
    ``mod_prescale`` selects rosinality's order of operations in the modulated
    convolution (weight scaled by 1/sqrt(fan_in) before modulation); NVIDIA applies no
    scale there because demodulation cancels it. The two agree to ~1e-7.
    """

    z_dim: int
    w_dim: int
    img_resolution: int
    channels: dict[int, int]
    c_dim: int = 0
    img_channels: int = 3
    mapping_layers: int = 8
    lr_multiplier: float = 0.01
    embed_features: int | None = None
    layer_features: int | None = None
    conv_clamp: float | None = None
    use_noise: bool = True
    resample_filter: tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)
    mod_prescale: bool = False
    #: Truncation as the source computes it: "lerp" (NVIDIA: ``w_avg.lerp(w, psi)``) or
    #: "affine" (rosinality: ``w_avg + psi * (w - w_avg)``); they differ in the last bits.
    truncation: str = "lerp"

    @property
    def block_resolutions(self) -> list[int]:
        log2 = int(math.log2(self.img_resolution))
        return [2**i for i in range(2, log2 + 1)]

    @property
    def num_ws(self) -> int:
        return 2 * len(self.block_resolutions)


def channels_from_base(img_resolution: int, channel_base: int = 32768, channel_max: int = 512) -> dict[int, int]:
    """NVIDIA's depth rule: ``min(channel_base // res, channel_max)`` per resolution."""
    log2 = int(math.log2(img_resolution))
    return {2**i: min(channel_base // 2**i, channel_max) for i in range(2, log2 + 1)}


# -- reference ops --------------------------------------------------------------------

def setup_filter(taps: Sequence[float]) -> torch.Tensor:
    """2-D FIR filter: outer product of ``taps``, normalised to sum 1 (NVIDIA setup_filter)."""
    f = torch.as_tensor(list(taps), dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, *, up: int = 1, padding: Sequence[int] = (0, 0, 0, 0),
              gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad, and convolve with the 2-D filter ``f`` (no down).

    ``padding`` is (x0, x1, y0, y1), negative values crop; as NVIDIA's ``_upfirdn2d_ref``.
    """
    n, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    f = f * (gain ** (f.ndim / 2))
    f = f.to(x.dtype).flip([0, 1])
    weight = f[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, weight, groups=c)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """2x FIR upsampling of an image (the skip path), as NVIDIA's ``upsample2d``."""
    fw = f.shape[-1]
    p0, p1 = (fw + up - 1) // 2, (fw - up) // 2
    return upfirdn2d(x, f, up=up, padding=(p0, p1, p0, p1), gain=up * up)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None, *, up: int = 1,
                    padding: int = 0, groups: int = 1) -> torch.Tensor:
    """Convolution, optionally preceded by 2x FIR upsampling (NVIDIA ``conv2d_resample``).

    Weights are applied as correlation (``F.conv2d``), i.e. ``flip_weight=True`` for
    ``up == 1``; for ``up > 1`` NVIDIA passes ``flip_weight=False`` to a transposed
    convolution, which is again an unflipped ``conv_transpose2d``.
    """
    out_ch, in_per_group, kh, kw = w.shape
    if up == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    if f is None:
        raise ValueError("upsampling needs a resample filter")
    fh, fw = f.shape
    px0 = padding + (fw + up - 1) // 2
    px1 = padding + (fw - up) // 2
    py0 = padding + (fh + up - 1) // 2
    py1 = padding + (fh - up) // 2
    if kw == 1 and kh == 1:
        x = F.conv2d(x, w, groups=groups)
        return upfirdn2d(x, f, up=up, padding=(px0, px1, py0, py1), gain=up * up)
    if groups == 1:
        wt = w.transpose(0, 1)
    else:
        wt = w.reshape(groups, out_ch // groups, in_per_group, kh, kw).transpose(1, 2)
        wt = wt.reshape(groups * in_per_group, out_ch // groups, kh, kw)
    px0 -= kw - 1
    px1 -= kw - up
    py0 -= kh - 1
    py1 -= kh - up
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    x = F.conv_transpose2d(x, wt, stride=up, padding=[pyt, pxt], groups=groups)
    return upfirdn2d(x, f, padding=(px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt), gain=up * up)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *,
                     noise: torch.Tensor | None = None, up: int = 1, padding: int = 0,
                     resample_filter: torch.Tensor | None = None, demodulate: bool = True,
                     prescale: float = 1.0) -> torch.Tensor:
    """Per-sample modulated (and demodulated) convolution as one grouped convolution."""
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    base = weight * prescale if prescale != 1.0 else weight
    w = base.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_ch, kh, kw)
    x = conv2d_resample(x, w.to(x.dtype), resample_filter, up=up, padding=padding, groups=n)
    x = x.reshape(n, -1, *x.shape[2:])
    if noise is not None:
        x = x.add_(noise)
    return x


def bias_act(x: torch.Tensor, b: torch.Tensor | None, *, act: str = "linear", gain: float | None = None,
             clamp: float | None = None) -> torch.Tensor:
    """Bias, activation, gain, clamp in that order (NVIDIA ``_bias_act_ref``)."""
    if b is not None:
        x = x + b.reshape([-1 if i == 1 else 1 for i in range(x.ndim)])
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
        gain = LRELU_GAIN if gain is None else gain
    elif act == "linear":
        gain = 1.0 if gain is None else gain
    else:
        raise ValueError(f"unsupported activation {act!r}")
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


# -- layers ---------------------------------------------------------------------------

class FullyConnectedLayer(nn.Module):
    """Equalised-lr linear layer: ``weight * lr/sqrt(in)``, ``bias * lr``."""

    def __init__(self, in_features: int, out_features: int, *, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype)
        if self.bias_gain != 1:
            b = b * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)


class MappingNetwork(nn.Module):
    """z (and optional class c) -> w, broadcast to ``num_ws`` copies; truncation toward ``w_avg``."""

    w_avg: torch.Tensor  # buffer

    def __init__(self, cfg: StyleGAN2Config) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = cfg.z_dim, cfg.c_dim, cfg.w_dim
        self.num_ws = cfg.num_ws
        self.num_layers = cfg.mapping_layers
        embed = (cfg.embed_features or cfg.w_dim) if cfg.c_dim > 0 else 0
        hidden = cfg.layer_features or cfg.w_dim
        features = [cfg.z_dim + embed] + [hidden] * (cfg.mapping_layers - 1) + [cfg.w_dim]
        if cfg.c_dim > 0:
            self.embed = FullyConnectedLayer(cfg.c_dim, embed)
        for i in range(cfg.mapping_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], activation="lrelu",
                                                        lr_multiplier=cfg.lr_multiplier))
        self.register_buffer("w_avg", torch.zeros([cfg.w_dim]))
        self.truncation = cfg.truncation

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0) -> torch.Tensor:
        x = normalize_2nd_moment(z.to(torch.float32)) if self.z_dim > 0 else None
        if self.c_dim > 0:
            if c is None:
                raise ValueError("this StyleGAN2 is conditional: pass class labels c")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        if x is None:
            raise ValueError("this mapping network has neither latents nor classes (z_dim = c_dim = 0)")
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if self.truncation == "affine":  # rosinality: truncation_latent + truncation * (style - truncation_latent)
                x = self.w_avg + truncation_psi * (x - self.w_avg)
            else:  # NVIDIA: self.w_avg.lerp(x, truncation_psi)
                x = self.w_avg.lerp(x, truncation_psi)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (+2x upsampling for conv0), noise, bias, lrelu*sqrt(2), clamp."""

    resample_filter: torch.Tensor  # buffer
    noise_const: torch.Tensor  # buffer, when cfg.use_noise

    def __init__(self, in_channels: int, out_channels: int, *, w_dim: int, resolution: int, up: int = 1,
                 cfg: StyleGAN2Config) -> None:
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.use_noise = cfg.use_noise
        self.activation = "lrelu"
        self.conv_clamp = cfg.conv_clamp
        self.register_buffer("resample_filter", setup_filter(cfg.resample_filter))
        self.padding = 1
        self.act_gain = LRELU_GAIN
        self.prescale = 1.0 / math.sqrt(in_channels * 9) if cfg.mod_prescale else 1.0
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 3, 3]))
        if cfg.use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, prescale=self.prescale)
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain, clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to RGB without demodulation, bias, clamp."""

    def __init__(self, in_channels: int, out_channels: int, *, w_dim: int, cfg: StyleGAN2Config) -> None:
        super().__init__()
        self.conv_clamp = cfg.conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1.0 / math.sqrt(in_channels)
        self.prescale_first = cfg.mod_prescale

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.prescale_first:  # rosinality: (scale * weight) * style
            x = modulated_conv2d(x, self.weight, self.affine(w), demodulate=False, prescale=self.weight_gain)
        else:  # NVIDIA: weight * (style * scale)
            x = modulated_conv2d(x, self.weight, self.affine(w) * self.weight_gain, demodulate=False)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the 'skip' architecture: (const | conv0 up), conv1, torgb + upsampled skip."""

    resample_filter: torch.Tensor  # buffer

    def __init__(self, in_channels: int, out_channels: int, *, resolution: int, is_last: bool,
                 cfg: StyleGAN2Config) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.w_dim = cfg.w_dim
        self.resolution = resolution
        self.img_channels = cfg.img_channels
        self.is_last = is_last
        self.architecture = "skip"
        self.register_buffer("resample_filter", setup_filter(cfg.resample_filter))
        self.num_conv = 0
        self.num_torgb = 1
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=cfg.w_dim, resolution=resolution,
                                        up=2, cfg=cfg)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=cfg.w_dim, resolution=resolution, cfg=cfg)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, cfg.img_channels, w_dim=cfg.w_dim, cfg=cfg)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: str = "const") -> tuple[torch.Tensor, torch.Tensor]:
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode)
        else:
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(w_iter)).to(torch.float32)
        img = img.add_(y) if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws (N x num_ws x w_dim) -> image N x img_channels x R x R."""

    def __init__(self, cfg: StyleGAN2Config) -> None:
        super().__init__()
        self.w_dim = cfg.w_dim
        self.img_resolution = cfg.img_resolution
        self.img_channels = cfg.img_channels
        self.block_resolutions = cfg.block_resolutions
        self.num_ws = 0
        for res in self.block_resolutions:
            in_ch = cfg.channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_ch, cfg.channels[res], resolution=res,
                                   is_last=res == cfg.img_resolution, cfg=cfg)
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1

    def forward(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            cur = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, cur, noise_mode=noise_mode)
        if img is None:
            raise ValueError("this synthesis network has no blocks")
        return img


class StyleGAN2Generator(nn.Module):
    """StyleGAN2 generator: ``mapping`` (z -> ws) then ``synthesis`` (ws -> image in ~[-1, 1]).

    >>> cfg = StyleGAN2Config(z_dim=32, w_dim=32, img_resolution=16, channels={4: 32, 8: 16, 16: 8})
    >>> StyleGAN2Generator(cfg)(torch.randn(2, 32)).shape
    torch.Size([2, 3, 16, 16])
    """

    def __init__(self, cfg: StyleGAN2Config) -> None:
        super().__init__()
        if cfg.img_resolution < 4 or cfg.img_resolution & (cfg.img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {cfg.img_resolution}")
        missing = [r for r in cfg.block_resolutions if r not in cfg.channels]
        if missing:
            raise ValueError(f"channels lacks resolutions {missing}")
        self.cfg = cfg
        self.z_dim, self.c_dim, self.w_dim = cfg.z_dim, cfg.c_dim, cfg.w_dim
        self.img_resolution, self.img_channels = cfg.img_resolution, cfg.img_channels
        self.synthesis = SynthesisNetwork(cfg)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(cfg)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                noise_mode: str = "const") -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi)
        return self.synthesis(ws, noise_mode=noise_mode)
