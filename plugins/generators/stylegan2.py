"""The "stylegan2" generator: NVIDIA ``.pkl`` snapshots and rosinality ``.pt`` checkpoints.

Both formats load into the one in-repo network, :mod:`gdx.plugins.generators.stylegan2_arch`
(plain torch, no CUDA extensions), whose module names are NVIDIA's:

* ``mapping.fc0`` ... ``mapping.fc7`` (and ``mapping.embed`` for conditional models)
* ``synthesis.b4.conv1``, ``synthesis.b4.torgb``
* ``synthesis.b{R}.conv0`` (upsampling), ``synthesis.b{R}.conv1``, ``synthesis.b{R}.torgb``
  for R = 8, 16, ..., the image resolution; ``.affine`` under each is its style layer.

Hook ``synthesis.b{R}.conv0``/``conv1`` to read or edit R x R feature maps (the usual
choice for dissection, e.g. ``synthesis.b16.conv1``).

Formats:

* **NVIDIA** (stylegan2-ada-pytorch, stylegan3 repo's StyleGAN2 configs): the ``.pkl``
  is read by :mod:`gdx.plugins.generators.safe_unpickle`, which never runs code from the file; ``G_ema``
  (else ``G``) is rebuilt from its recorded tensors and attributes. StyleGAN3
  (alias-free, ``synthesis.input`` / ``L0_36_512`` layers) pickles are recognised and
  refused: only the StyleGAN2 architecture builds. Only the 'skip' synthesis
  architecture (NVIDIA's generator default) is supported.
* **rosinality** (stylegan2-pytorch): ``.pt`` with ``g_ema`` (a state dict in
  rosinality's naming), ``latent_avg`` and optionally ``args`` (an argparse.Namespace,
  allow-listed for the weights-only load). A bare ``g_ema`` state dict also works.
* **a state dict in NVIDIA's naming** (``torch.save(G.state_dict(), "g.pt")``, the safe
  re-export of a snapshot); it does not record ``conv_clamp``, so none is applied
  unless the generator option ``conv_clamp=...`` is given. NVIDIA's pickles use
  ``conv_clamp=256`` (their training default); pass it to reproduce such a snapshot
  wherever the clamp binds.

Latents: ``latent="z"`` (default) samples z ~ N(0, 1) in R^z_dim with
:func:`gdx.seeded_normal`, and ``generate`` runs mapping + truncation + synthesis.
``latent="w"`` samples the same z and maps them once (with truncation) to w
(N x w_dim); ``generate`` then runs only the synthesis network, so ``mapping.*`` layers
do not fire. ``truncation`` is psi (1 = none), computed as the source does: NVIDIA's
``w_avg.lerp(w, psi)`` for NVIDIA formats, rosinality's ``tl + psi * (w - tl)`` for
rosinality checkpoints, so truncated outputs match either bit for bit.
``conv_clamp`` overrides the clamp after every synthesis layer (default: as the file
records it; none for state dicts and rosinality checkpoints). ``noise="const"`` (default) uses the
stored per-layer noise images, so outputs depend only on the latents; ``"random"``
draws fresh noise each call (not reproducible); ``"none"`` disables noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

import gdx
from gdx.checkpoints import existing_file, load_torch_file
from gdx.errors import AdapterOptionError, CheckpointError
from gdx.interfaces import Generator
from gdx.plugins.generators.downloads import KnownWeights
from gdx.plugins.generators.sniff import describe_keys
from gdx.plugins.generators.stylegan2_arch import (
    StyleGAN2Config,
    StyleGAN2Generator,
    SynthesisLayer,
    ToRGBLayer,
)
from gdx.plugins.generators.safe_unpickle import PersistentObject, load_stylegan_pickle
from gdx.hookspecs import Register

WHAT = "stylegan2 weights"
NOISE_MODES = ("const", "random", "none")


# -- NVIDIA .pkl ----------------------------------------------------------------------

def generator_from_nvidia_pickle(path: str | Path) -> StyleGAN2Generator:
    """Rebuild ``G_ema`` (else ``G``) of an NVIDIA snapshot without running its code."""
    return generator_from_nvidia_data(load_stylegan_pickle(path, what=WHAT), source=str(path))


def generator_from_nvidia_data(data: Any, *, source: str) -> StyleGAN2Generator:
    """``G_ema`` (else ``G``) of an unpickled snapshot (see :func:`gdx.plugins.generators.safe_unpickle.load_stylegan_pickle`)."""
    if isinstance(data, PersistentObject):
        net = data
    elif isinstance(data, dict):
        found = data.get("G_ema", data.get("G"))
        if not isinstance(found, PersistentObject):
            raise CheckpointError(
                f"{WHAT}: {source} is a pickle without a G_ema/G network (keys: {sorted(map(str, data))[:8]}); "
                "expected a stylegan2-ada-pytorch snapshot."
            )
        net = found
    else:
        raise CheckpointError(f"{WHAT}: {source} holds a {type(data).__name__}, not a StyleGAN snapshot dict.")
    return generator_from_persistent(net, source=source)


def generator_from_persistent(net: PersistentObject, *, source: str) -> StyleGAN2Generator:
    """Build the in-repo generator from a persistence record of NVIDIA's ``Generator``."""
    try:
        sd = net.tensors()
    except CheckpointError as exc:
        raise CheckpointError(f"{WHAT}: {source}: {exc}") from None
    if any(k.startswith("synthesis.input.") for k in sd) or "SynthesisInput" in net.module_src:
        raise CheckpointError(
            f"{WHAT}: {source} is a StyleGAN3 (alias-free) generator; gdx builds only the StyleGAN2 "
            "architecture. Use a StyleGAN2 snapshot (stylegan2-ada-pytorch, or stylegan3's "
            "--cfg=stylegan2 models)."
        )
    if net.class_name != "Generator" or "mapping.fc0.weight" not in sd or "synthesis.b4.const" not in sd:
        raise CheckpointError(
            f"{WHAT}: {source} holds a {net.class_name}, not a StyleGAN2 generator; it looks like "
            f"{describe_keys(sd)}."
        )
    try:
        mapping, synthesis = net.find("mapping"), net.find("synthesis")
        block4 = synthesis.find("b4")
        arch = block4.get("architecture", "skip")
        if arch != "skip":
            raise CheckpointError(
                f"{WHAT}: {source} uses the {arch!r} synthesis architecture; gdx builds NVIDIA's "
                "default 'skip' generator only."
            )
        layer = block4.find("conv1")
        if layer.get("activation", "lrelu") != "lrelu":
            raise CheckpointError(f"{WHAT}: {source} uses activation {layer.get('activation')!r}; expected 'lrelu'.")
        cfg = _config_from_tensors(
            sd,
            lr_multiplier=float(mapping.find("fc0").get("bias_gain", 0.01)),
            conv_clamp=layer.get("conv_clamp"),
            use_noise=bool(layer.get("use_noise", "synthesis.b4.conv1.noise_const" in sd)),
            img_channels=int(synthesis.get("img_channels", 3)),
            resample=sd.get("synthesis.b4.resample_filter"),
        )
    except KeyError as exc:
        raise CheckpointError(f"{WHAT}: {source} lacks the network part {exc}; the file is incomplete.") from None
    return _load_strict(cfg, sd, source=source)


def _config_from_tensors(sd: dict[str, torch.Tensor], *, lr_multiplier: float, conv_clamp: Any,
                         use_noise: bool, img_channels: int, resample: torch.Tensor | None,
                         mod_prescale: bool = False, truncation: str = "lerp") -> StyleGAN2Config:
    resolutions = sorted(int(k.split(".")[1][1:]) for k in sd if k.startswith("synthesis.b") and k.endswith(".conv1.weight"))
    channels = {r: int(sd[f"synthesis.b{r}.conv1.weight"].shape[0]) for r in resolutions}
    n_map = sum(1 for k in sd if k.startswith("mapping.fc") and k.endswith(".weight"))
    fc0 = sd["mapping.fc0.weight"]
    w_dim = int(sd[f"mapping.fc{n_map - 1}.weight"].shape[0])
    c_dim = int(sd["mapping.embed.weight"].shape[1]) if "mapping.embed.weight" in sd else 0
    embed = int(sd["mapping.embed.weight"].shape[0]) if c_dim else None
    z_dim = int(fc0.shape[1]) - (embed or 0)
    layer_features = int(fc0.shape[0]) if n_map > 1 else None
    taps: tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)
    if resample is not None:
        f = resample.to(torch.float64)
        row = f.sum(dim=0)  # outer(t, t)/sum -> column sums are t/sum(t)
        taps = tuple(float(v) for v in (row / row[0]).tolist())
    return StyleGAN2Config(
        z_dim=z_dim, w_dim=w_dim, c_dim=c_dim, img_resolution=max(resolutions), channels=channels,
        img_channels=img_channels, mapping_layers=n_map, lr_multiplier=lr_multiplier,
        embed_features=embed, layer_features=layer_features,
        conv_clamp=None if conv_clamp is None else float(conv_clamp), use_noise=use_noise,
        resample_filter=taps, mod_prescale=mod_prescale, truncation=truncation,
    )


def _load_strict(cfg: StyleGAN2Config, sd: dict[str, torch.Tensor], *, source: str) -> StyleGAN2Generator:
    try:
        net = StyleGAN2Generator(cfg)
        net.load_state_dict(sd, strict=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        lines = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{WHAT}: {source} does not fit a StyleGAN2 of resolution {cfg.img_resolution} "
            f"({' '.join(lines[:2])[:300]}). The file may be damaged or a variant gdx does not build."
        ) from None
    return net.eval().requires_grad_(False)


# -- rosinality .pt -------------------------------------------------------------------

def rosinality_to_nvidia(g: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a rosinality ``g_ema`` state dict onto NVIDIA's module tree (same math)."""
    out: dict[str, torch.Tensor] = {}
    n_mlp = sum(1 for k in g if k.startswith("style.") and k.endswith(".weight"))
    for i in range(n_mlp):
        out[f"mapping.fc{i}.weight"] = g[f"style.{i + 1}.weight"]
        out[f"mapping.fc{i}.bias"] = g[f"style.{i + 1}.bias"]
    out["synthesis.b4.const"] = g["input.input"][0]

    def styled(src: str, dst: str, noise_idx: int) -> None:
        out[f"{dst}.weight"] = g[f"{src}.conv.weight"][0]
        out[f"{dst}.affine.weight"] = g[f"{src}.conv.modulation.weight"]
        out[f"{dst}.affine.bias"] = g[f"{src}.conv.modulation.bias"]
        out[f"{dst}.bias"] = g[f"{src}.activate.bias"]
        out[f"{dst}.noise_strength"] = g[f"{src}.noise.weight"].reshape([])
        noise = g.get(f"noises.noise_{noise_idx}")
        res = out["synthesis.b4.const"].shape[-1] * 2 ** ((noise_idx + 1) // 2)
        out[f"{dst}.noise_const"] = noise[0, 0] if noise is not None else torch.zeros(res, res)

    def to_rgb(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = g[f"{src}.conv.weight"][0]
        out[f"{dst}.affine.weight"] = g[f"{src}.conv.modulation.weight"]
        out[f"{dst}.affine.bias"] = g[f"{src}.conv.modulation.bias"]
        out[f"{dst}.bias"] = g[f"{src}.bias"].reshape(-1)

    styled("conv1", "synthesis.b4.conv1", 0)
    to_rgb("to_rgb1", "synthesis.b4.torgb")
    n_up = sum(1 for k in g if k.startswith("to_rgbs.") and k.endswith(".conv.weight"))
    for j in range(n_up):
        res = 8 * 2**j
        styled(f"convs.{2 * j}", f"synthesis.b{res}.conv0", 2 * j + 1)
        styled(f"convs.{2 * j + 1}", f"synthesis.b{res}.conv1", 2 * j + 2)
        to_rgb(f"to_rgbs.{j}", f"synthesis.b{res}.torgb")
    return out


def generator_from_rosinality(obj: Any, *, source: str) -> StyleGAN2Generator:
    """Build the in-repo generator from a loaded rosinality checkpoint (dict with ``g_ema``)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{WHAT}: {source} holds a {type(obj).__name__}, not a checkpoint dict.")
    g = obj.get("g_ema", obj if "style.1.weight" in obj else None)
    if not isinstance(g, dict) or "style.1.weight" not in g or "input.input" not in g:
        keys = g.keys() if isinstance(g, dict) else obj.keys()
        raise CheckpointError(
            f"{WHAT}: {source} is not a rosinality StyleGAN2 checkpoint (no g_ema with style.N/input.input); "
            f"it looks like {describe_keys(keys)}."
        )
    args = obj.get("args")
    lr_mlp = float(getattr(args, "lr_mlp", 0.01)) if args is not None else 0.01
    try:
        sd = rosinality_to_nvidia(g)
        kernel = g.get("convs.0.conv.blur.kernel")
        resample = kernel / kernel.sum() if kernel is not None else None
        for res in sorted({int(k.split(".")[1][1:]) for k in sd if k.startswith("synthesis.b")}):
            sd[f"synthesis.b{res}.resample_filter"] = resample if resample is not None else _default_filter()
            for conv in ("conv0", "conv1"):
                if f"synthesis.b{res}.{conv}.weight" in sd:
                    sd[f"synthesis.b{res}.{conv}.resample_filter"] = sd[f"synthesis.b{res}.resample_filter"]
    except KeyError as exc:
        raise CheckpointError(f"{WHAT}: {source} lacks {exc}; the rosinality checkpoint is incomplete.") from None
    cfg = _config_from_tensors(sd, lr_multiplier=lr_mlp, conv_clamp=None, use_noise=True, img_channels=3,
                               resample=sd["synthesis.b4.resample_filter"], mod_prescale=True,
                               truncation="affine")
    latent_avg = obj.get("latent_avg")
    if isinstance(latent_avg, torch.Tensor):
        sd["mapping.w_avg"] = latent_avg.reshape(-1).to(torch.float32)
    else:
        # rosinality's own mean_latent(4096), made deterministic with a fixed seed.
        sd["mapping.w_avg"] = torch.zeros(cfg.w_dim)
        probe = _load_strict(cfg, sd, source=source)
        with torch.no_grad():
            sd["mapping.w_avg"] = probe.mapping(gdx.seeded_normal(4096, (cfg.z_dim,), 0))[:, 0].mean(0)
    return _load_strict(cfg, sd, source=source)


def _default_filter() -> torch.Tensor:
    from gdx.plugins.generators.stylegan2_arch import setup_filter

    return setup_filter((1, 3, 3, 1))


def generator_from_torch_file(obj: Any, *, source: str) -> StyleGAN2Generator:
    """A weights-only torch file: rosinality checkpoint, or a state dict in NVIDIA's naming.

    A plain ``G.state_dict()`` does not record ``conv_clamp`` or the mapping
    learning-rate multiplier; NVIDIA's defaults (no clamp, 0.01) are used.
    """
    if isinstance(obj, dict) and ("g_ema" in obj or "style.1.weight" in obj):
        return generator_from_rosinality(obj, source=source)
    sd = obj
    if isinstance(obj, dict):
        for key in ("G_ema", "state_dict", "G"):
            if isinstance(obj.get(key), dict):
                sd = obj[key]
                break
    if isinstance(sd, dict) and "mapping.fc0.weight" in sd and "synthesis.b4.const" in sd:
        if any(k.startswith("synthesis.input.") for k in sd):
            raise CheckpointError(f"{WHAT}: {source} is a StyleGAN3 (alias-free) state dict; gdx builds only StyleGAN2.")
        try:
            cfg = _config_from_tensors(sd, lr_multiplier=0.01, conv_clamp=None,
                                       use_noise="synthesis.b4.conv1.noise_const" in sd, img_channels=int(
                                           sd["synthesis.b4.torgb.weight"].shape[0]),
                                       resample=sd.get("synthesis.b4.resample_filter"))
        except KeyError as exc:
            raise CheckpointError(f"{WHAT}: {source} lacks {exc}; the state dict is incomplete.") from None
        return _load_strict(cfg, sd, source=source)
    keys = sd.keys() if isinstance(sd, dict) else []
    raise CheckpointError(
        f"{WHAT}: {source} is neither a rosinality checkpoint (g_ema) nor a StyleGAN2 state dict; "
        f"it looks like {describe_keys(keys) if keys else 'a ' + type(sd).__name__}."
    )


# -- adapter --------------------------------------------------------------------------

#: The first object of a legacy (non-zip) ``torch.save`` file.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def load_stylegan2_network(weights: str | Path) -> StyleGAN2Generator:
    """Load any supported format, told apart by content first and by extension second.

    A torch zip container, or a ``.pt``/``.pth`` name, goes through the weights-only
    ``torch.load``; anything else through the restricted unpickler, which also
    recognises a legacy-format ``torch.save`` file and hands it back to ``torch.load``.
    """
    p = existing_file(weights, what=WHAT)
    if p.is_dir():
        raise CheckpointError(f"{WHAT}: {p} is a directory; expected a .pkl or .pt file.")
    with open(p, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"{WHAT}: {p} is empty; the download was probably interrupted.")
    if head.startswith(b"PK") or p.suffix in (".pt", ".pth"):
        obj = load_torch_file(p, what=WHAT, safe_globals=[argparse.Namespace])
        return generator_from_torch_file(obj, source=str(p))
    data = load_stylegan_pickle(p, what=WHAT)
    if isinstance(data, int) and data == _TORCH_LEGACY_MAGIC:
        obj = load_torch_file(p, what=WHAT, safe_globals=[argparse.Namespace])
        return generator_from_torch_file(obj, source=str(p))
    return generator_from_nvidia_data(data, source=str(p))


def set_conv_clamp(net: StyleGAN2Generator, conv_clamp: float) -> None:
    """Clamp every synthesis layer's output to +-``conv_clamp`` (NVIDIA's snapshots use 256)."""
    value = float(conv_clamp)
    if not math.isfinite(value) or value <= 0:
        raise AdapterOptionError(
            f"stylegan2 option conv_clamp={conv_clamp!r}: expected a positive number (NVIDIA's pickles use 256)."
        )
    for module in net.synthesis.modules():
        if isinstance(module, (SynthesisLayer, ToRGBLayer)):
            module.conv_clamp = value
    net.cfg = dataclasses.replace(net.cfg, conv_clamp=value)


class StyleGAN2(Generator):
    """A :class:`gdx.Generator` over :class:`StyleGAN2Generator` with z or w latents."""

    name = "stylegan2"

    def __init__(self, net: StyleGAN2Generator, *, latent: str = "z", truncation: float = 1.0,
                 noise: str = "const", class_index: int | None = None) -> None:
        if latent not in ("z", "w"):
            raise AdapterOptionError(f"stylegan2 option latent={latent!r}: expected 'z' or 'w'.")
        if noise not in NOISE_MODES:
            raise AdapterOptionError(f"stylegan2 option noise={noise!r}: expected one of {', '.join(NOISE_MODES)}.")
        if not math.isfinite(truncation):
            raise AdapterOptionError(f"stylegan2 option truncation={truncation!r}: expected a number such as 0.7.")
        if net.c_dim > 0 and class_index is None:
            raise AdapterOptionError(
                f"this StyleGAN2 is conditional on {net.c_dim} classes: pass the generator option `class_index=K` (0..{net.c_dim - 1})."
            )
        if class_index is not None and not 0 <= class_index < max(net.c_dim, 1):
            raise AdapterOptionError(f"stylegan2 option class_index={class_index}: the model has {net.c_dim} classes.")
        self._net = net
        self.latent, self.truncation, self.noise = latent, float(truncation), noise
        self.class_index = class_index if net.c_dim > 0 else None
        # A mid-level layer (32x32 on 256/1024-px models): objects and parts, as layer4 in ProGAN.
        res = min(32, max(8, net.img_resolution // 8))
        self.default_layer = f"synthesis.b{res}.conv1"

    @property
    def module(self) -> StyleGAN2Generator:
        return self._net

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self._net.z_dim,) if self.latent == "z" else (self._net.w_dim,)

    def layer_names(self) -> list[str]:
        """Modules whose output is one tensor: all but the blocks ``synthesis.b{R}``, which
        return a (features, image) tuple; hook their ``conv0``/``conv1``/``torgb`` instead."""
        blocks = {f"synthesis.b{r}" for r in self._net.synthesis.block_resolutions}
        return [n for n, _ in self._net.named_modules() if n and n not in blocks]

    def _labels(self, n: int, device: torch.device) -> torch.Tensor | None:
        if self.class_index is None:
            return None
        c = torch.zeros(n, self._net.c_dim, device=device)
        c[:, self.class_index] = 1
        return c

    def sample_latents(self, n: int, *, seed: int) -> torch.Tensor:
        z = gdx.seeded_normal(n, (self._net.z_dim,), seed)
        if self.latent == "z":
            return z
        with torch.no_grad():
            z = z.to(self.device)
            ws = self._net.mapping(z, self._labels(n, z.device), truncation_psi=self.truncation)
        return ws[:, 0].cpu()

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        if self.latent == "z":
            return self._net(z, self._labels(z.shape[0], z.device), truncation_psi=self.truncation,
                             noise_mode=self.noise)
        ws = z.unsqueeze(1).repeat([1, self._net.num_ws, 1])
        return self._net.synthesis(ws, noise_mode=self.noise)

    def describe(self) -> str:
        r = self._net.img_resolution
        return f"stylegan2 ({r}x{r}, latent {self.latent}, psi {self.truncation})"


def build_stylegan2(
    weights: str,
    latent: str = "z",
    truncation: float = 1.0,
    noise: str = "const",
    class_index: int | None = None,
    conv_clamp: float | None = None,
    device: str = "cpu",
) -> gdx.Generator:
    """StyleGAN2 (NVIDIA .pkl, safely unpickled, or rosinality .pt); layers synthesis.b{R}.conv0/conv1.

    Args:
        weights: an NVIDIA .pkl, an NVIDIA-named state dict or a rosinality .pt checkpoint
        latent: "z" (mapping + synthesis run in generate) or "w" (z mapped once; generate runs synthesis only)
        truncation: psi, 1 = none, computed as the checkpoint's source does
        noise: "const" (stored noise images, reproducible), "random" or "none"
        class_index: the class of a conditional model (0..classes-1)
        conv_clamp: clamp after every synthesis layer (NVIDIA pickles record 256; state dicts record none)
        device: torch device to run on (cpu, cuda, ...)
    """
    net = load_stylegan2_network(weights)
    if conv_clamp is not None:
        set_conv_clamp(net, conv_clamp)
    gen = StyleGAN2(net, latent=latent, truncation=truncation, noise=noise, class_index=class_index)
    return gen.to(device)


def known_weights() -> list[KnownWeights]:
    """No fixed list: any StyleGAN2 snapshot in a supported format (for ``gdx weights``)."""
    return [KnownWeights(
        adapter="stylegan2", name="(any snapshot)", file="*.pkl or *.pt",
        option="weights=PATH", in_cache=False,
        note="stylegan2-ada-pytorch / stylegan3 --cfg=stylegan2 .pkl, or rosinality .pt; see docs/adapters.md",
    )]


@gdx.hookimpl
def register_generators(register: Register) -> None:
    register("stylegan2", build_stylegan2)
