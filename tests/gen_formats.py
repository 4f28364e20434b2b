"""Writers of tiny random generator checkpoints in the exact published formats.

Shared by the generator tests and the adapter smoke test. Each writer takes a module
built here with random weights and stores it the way the original tool stores it:

* ProGAN: ``torch.save(state_dict)`` in gandissect's naming (optionally nested or in
  the old ``features.N`` naming);
* NVIDIA: a ``pickle.dump`` of a snapshot dict whose networks reduce through
  ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
  ``meta = dict(type='class', version=6, module_src=..., class_name=..., state=module.__dict__)``,
  exactly as stylegan2-ada-pytorch's ``persistent_class.__reduce__`` does, and
  tensors pickled by torch itself (``_rebuild_parameter``/``_rebuild_tensor_v2`` over
  ``_load_from_bytes`` storages). Fake ``torch_utils``/``dnnlib`` modules exist only
  while writing;
* rosinality: ``torch.save({'g_ema', 'latent_avg', 'args', ...})`` in rosinality's
  naming, with its buffers (``noises.noise_i``, blur/upsample kernels).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gdx.plugins.generators.progan_arch import ProgressiveGenerator
from gdx.plugins.generators.stylegan2_arch import StyleGAN2Config, StyleGAN2Generator

# -- ProGAN ---------------------------------------------------------------------------

def tiny_progan(seed: int = 0, sizes: tuple[int, ...] = (16, 16, 8, 8)) -> ProgressiveGenerator:
    torch.manual_seed(seed)
    net = ProgressiveGenerator(sizes=list(sizes))
    with torch.no_grad():  # non-zero biases so a dropped bias would show
        for name, p in net.named_parameters():
            if name.endswith("wscale.b"):
                p.normal_(0, 0.1)
    return net.eval()


def write_progan(net: ProgressiveGenerator, path: Path, *, layout: str = "plain", legacy: bool = False) -> Path:
    """layout: "plain" (gandissect), "nested" (under state_dict) or "old" (features.N).

    ``legacy`` writes torch's pre-1.6 (non-zip) format, as the published 2018 files are.
    """
    sd = net.state_dict()
    if layout == "old":
        old = {}
        for k, v in sd.items():
            head, rest = k.split(".", 1)
            if head.startswith("layer"):
                old[f"features.{int(head[5:]) - 1}.{rest}"] = v
            else:
                old[f"output.{rest}"] = v
        sd = old
    obj: Any = {"state_dict": sd} if layout in ("nested", "old") else sd
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


# -- StyleGAN2 ------------------------------------------------------------------------

def tiny_stylegan2(seed: int = 0, *, resolution: int = 16, c_dim: int = 0, conv_clamp: float | None = None,
                   mod_prescale: bool = False) -> StyleGAN2Generator:
    channels = {4: 16, 8: 16, 16: 8, 32: 8, 64: 4}
    cfg = StyleGAN2Config(
        z_dim=16, w_dim=16, c_dim=c_dim, img_resolution=resolution,
        channels={r: c for r, c in channels.items() if r <= resolution},
        mapping_layers=3, conv_clamp=conv_clamp, mod_prescale=mod_prescale,
    )
    torch.manual_seed(seed)
    net = StyleGAN2Generator(cfg)
    with torch.no_grad():  # random values everywhere a loader could drop or misplace
        for name, p in net.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
            elif name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
        net.mapping.w_avg.normal_()
    return net.eval().requires_grad_(False)


_NVIDIA_CLASS = {"StyleGAN2Generator": "Generator"}
_FAKE_SRC = "# networks.py (stand-in source; a real snapshot holds NVIDIA's module source here)\nimport torch\n"


def _reconstruct_persistent_obj(meta):  # pragma: no cover - only its import path is pickled
    raise RuntimeError("never called while writing")


class _EasyDict(dict):
    pass


class _Persistent:
    """Reduces exactly as NVIDIA's persistent_class decorator does."""

    def __init__(self, meta: dict) -> None:
        self.meta = meta

    def __reduce__(self):
        return (_reconstruct_persistent_obj, (self.meta,))


@contextlib.contextmanager
def _fake_nvidia_modules():
    persistence = types.ModuleType("torch_utils.persistence")
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence = persistence
    dnnlib = types.ModuleType("dnnlib")
    dnnlib_util = types.ModuleType("dnnlib.util")
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    _EasyDict.__module__, _EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    dnnlib_util.EasyDict = _EasyDict
    dnnlib.util = dnnlib_util
    fakes = {"torch_utils": torch_utils, "torch_utils.persistence": persistence, "dnnlib": dnnlib,
             "dnnlib.util": dnnlib_util}
    saved = {k: sys.modules.get(k) for k in fakes}
    sys.modules.update(fakes)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def persistent(module: nn.Module, *, init_kwargs: dict | None = None, class_name: str | None = None,
               module_src: str = _FAKE_SRC) -> _Persistent:
    """``module`` as NVIDIA's persistence pickles it (state = its ``__dict__``)."""
    state = {k: v for k, v in module.__dict__.items() if k != "cfg"}
    state["_modules"] = OrderedDict(
        (k, persistent(v, module_src=module_src) if v is not None else None) for k, v in module._modules.items()
    )
    state["_init_args"] = ()
    state["_init_kwargs"] = dict(init_kwargs or {})
    name = class_name or _NVIDIA_CLASS.get(type(module).__name__, type(module).__name__)
    return _Persistent(dict(type="class", version=6, module_src=module_src, class_name=name, state=state))


def nvidia_init_kwargs(net: StyleGAN2Generator) -> dict:
    cfg = net.cfg
    return dict(
        z_dim=cfg.z_dim, c_dim=cfg.c_dim, w_dim=cfg.w_dim, img_resolution=cfg.img_resolution,
        img_channels=cfg.img_channels,
        mapping_kwargs=_EasyDict(num_layers=cfg.mapping_layers),
        synthesis_kwargs=_EasyDict(channel_base=16384, channel_max=512, num_fp16_res=0, conv_clamp=cfg.conv_clamp),
    )


def write_nvidia_pkl(net: nn.Module, path: Path, *, extra: dict | None = None, only_g: bool = False) -> Path:
    """A stylegan2-ada-pytorch snapshot: dict(G, D, G_ema, augment_pipe, training_set_kwargs)."""
    with _fake_nvidia_modules():
        kwargs = nvidia_init_kwargs(net) if isinstance(net, StyleGAN2Generator) else {}
        disc = nn.Module()
        disc.b4 = nn.Module()
        disc.b4.conv = nn.Linear(4, 4)
        data: dict[str, Any] = dict(
            training_set_kwargs=_EasyDict(path="datasets/tiny.zip", resolution=16, use_labels=False),
            G=persistent(net, init_kwargs=kwargs),
            D=persistent(disc, class_name="Discriminator"),
            G_ema=persistent(net, init_kwargs=kwargs),
            augment_pipe=None,
        )
        if only_g:
            data = dict(G=data["G"])
        data.update(extra or {})
        with open(path, "wb") as f:
            pickle.dump(data, f)
    return path


def write_stylegan3_pkl(path: Path) -> Path:
    """A snapshot whose G_ema has StyleGAN3's synthesis.input layer (alias-free)."""
    g = nn.Module()
    g.mapping = nn.Module()
    g.mapping.fc0 = nn.Linear(4, 4)
    g.synthesis = nn.Module()
    g.synthesis.input = nn.Module()
    g.synthesis.input.affine = nn.Linear(4, 4)
    g.synthesis.L0_36_512 = nn.Linear(4, 4)
    src = "class SynthesisInput(torch.nn.Module):\n    pass\n"
    with _fake_nvidia_modules():
        data = dict(G_ema=persistent(g, class_name="Generator", module_src=src))
        with open(path, "wb") as f:
            pickle.dump(data, f)
    return path


def to_rosinality(net: StyleGAN2Generator) -> dict[str, torch.Tensor]:
    """The same weights in rosinality's g_ema naming, with its buffers."""
    sd = net.state_dict()
    g: dict[str, torch.Tensor] = {}
    for i in range(net.cfg.mapping_layers):
        g[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"]
        g[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"]
    g["input.input"] = sd["synthesis.b4.const"][None]
    blur = sd["synthesis.b4.resample_filter"] * 4

    def styled(dst: str, src: str, noise_idx: int, up: bool) -> None:
        g[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None]
        g[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        g[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        if up:
            g[f"{dst}.conv.blur.kernel"] = blur
        g[f"{dst}.noise.weight"] = sd[f"{src}.noise_strength"].reshape(1)
        g[f"{dst}.activate.bias"] = sd[f"{src}.bias"]
        g[f"noises.noise_{noise_idx}"] = sd[f"{src}.noise_const"][None, None]

    def to_rgb(dst: str, src: str, up: bool) -> None:
        if up:
            g[f"{dst}.upsample.kernel"] = blur
        g[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None]
        g[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        g[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        g[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(1, -1, 1, 1)

    styled("conv1", "synthesis.b4.conv1", 0, False)
    to_rgb("to_rgb1", "synthesis.b4.torgb", False)
    for j, res in enumerate(net.cfg.block_resolutions[1:]):
        styled(f"convs.{2 * j}", f"synthesis.b{res}.conv0", 2 * j + 1, True)
        styled(f"convs.{2 * j + 1}", f"synthesis.b{res}.conv1", 2 * j + 2, False)
        to_rgb(f"to_rgbs.{j}", f"synthesis.b{res}.torgb", True)
    return {k: v.clone() for k, v in g.items()}


def write_rosinality_pt(net: StyleGAN2Generator, path: Path, *, with_args: bool = True,
                        with_latent_avg: bool = True) -> Path:
    g = to_rosinality(net)
    ckpt: dict[str, Any] = {"g": g, "d": {"convs.0.0.weight": torch.randn(4, 3, 1, 1)}, "g_ema": g}
    if with_latent_avg:
        ckpt["latent_avg"] = net.mapping.w_avg.clone()
    if with_args:
        ckpt["args"] = argparse.Namespace(size=net.cfg.img_resolution, latent=net.cfg.w_dim,
                                          n_mlp=net.cfg.mapping_layers, channel_multiplier=2, lr_mlp=0.01)
    torch.save(ckpt, path)
    return path


# -- an independent rosinality forward (its math, on its naming) ----------------------

def _upfirdn_native(x: torch.Tensor, k: torch.Tensor, up: int, pad: tuple[int, int]) -> torch.Tensor:
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = torch.nn.functional.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    kernel = torch.flip(k, [0, 1]).view(1, 1, *k.shape).repeat(c, 1, 1, 1)
    return torch.nn.functional.conv2d(x, kernel, groups=c)


def rosinality_forward(g: dict[str, torch.Tensor], z: torch.Tensor, *, truncation: float = 1.0,
                       latent_avg: torch.Tensor | None = None, lr_mlp: float = 0.01) -> torch.Tensor:
    """rosinality's Generator.forward(noise=stored noises, randomize_noise=False), written out."""
    F = torch.nn.functional
    x = z * torch.rsqrt(torch.mean(z**2, dim=1, keepdim=True) + 1e-8)
    i = 1
    while f"style.{i}.weight" in g:
        w, b = g[f"style.{i}.weight"], g[f"style.{i}.bias"]
        x = F.linear(x, w * (1 / math.sqrt(w.shape[1])) * lr_mlp)
        x = F.leaky_relu(x + b * lr_mlp, 0.2) * math.sqrt(2)
        i += 1
    if truncation != 1:
        x = latent_avg + truncation * (x - latent_avg)
    n = x.shape[0]

    def modconv(inp, prefix, demod=True, up=False):
        weight = g[f"{prefix}.weight"]
        _, out_c, in_c, k, _ = weight.shape
        style = F.linear(x, g[f"{prefix}.modulation.weight"] * (1 / math.sqrt(x.shape[1])),
                         ) + g[f"{prefix}.modulation.bias"]
        wgt = (1 / math.sqrt(in_c * k * k)) * weight * style.view(n, 1, in_c, 1, 1)
        if demod:
            wgt = wgt * torch.rsqrt(wgt.pow(2).sum([2, 3, 4]) + 1e-8).view(n, out_c, 1, 1, 1)
        h = inp.shape[-1]
        inp = inp.reshape(1, n * in_c, h, h)
        if up:
            wgt = wgt.view(n, out_c, in_c, k, k).transpose(1, 2).reshape(n * in_c, out_c, k, k)
            out = F.conv_transpose2d(inp, wgt, padding=0, stride=2, groups=n)
            out = out.view(n, out_c, *out.shape[2:])
            return _upfirdn_native(out, g[f"{prefix}.blur.kernel"], 1, (1, 1))
        out = F.conv2d(inp, wgt.view(n * out_c, in_c, k, k), padding=k // 2, groups=n)
        return out.view(n, out_c, *out.shape[2:])

    def styled(inp, prefix, noise_idx, up=False):
        out = modconv(inp, f"{prefix}.conv", up=up)
        out = out + g[f"{prefix}.noise.weight"] * g[f"noises.noise_{noise_idx}"]
        return F.leaky_relu(out + g[f"{prefix}.activate.bias"].view(1, -1, 1, 1), 0.2) * math.sqrt(2)

    def to_rgb(inp, prefix, skip=None):
        out = modconv(inp, f"{prefix}.conv", demod=False) + g[f"{prefix}.bias"]
        if skip is not None:
            out = out + _upfirdn_native(skip, g[f"{prefix}.upsample.kernel"], 2, (2, 1))
        return out

    out = g["input.input"].repeat(n, 1, 1, 1)
    out = styled(out, "conv1", 0)
    skip = to_rgb(out, "to_rgb1")
    j = 0
    while f"to_rgbs.{j}.conv.weight" in g:
        out = styled(out, f"convs.{2 * j}", 2 * j + 1, up=True)
        out = styled(out, f"convs.{2 * j + 1}", 2 * j + 2)
        skip = to_rgb(out, f"to_rgbs.{j}", skip)
        j += 1
    return skip


# -- diffusers VAEs (need diffusers) --------------------------------------------------

def tiny_autoencoder_kl(seed: int = 0):
    """A 16-px AutoencoderKL (2 levels, 8/16 channels) with random weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    ).eval()


def tiny_autoencoder_tiny(seed: int = 0):
    """An AutoencoderTiny (TAESD layout, 8 channels per block) with random weights."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4,
    ).eval()
