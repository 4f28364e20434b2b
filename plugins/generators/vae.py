"""The "vae" generator: the decoder of a diffusers ``AutoencoderKL`` or ``AutoencoderTiny``.

A VAE decoder is a latent-to-image network like a GAN generator, so it can be
dissected the same way. ``weights`` is a local diffusers model folder
(``config.json`` + ``diffusion_pytorch_model.safetensors``, loaded offline); inside a
Stable Diffusion pipeline folder pass ``subfolder=vae`` (a folder with
``model_index.json`` and a ``vae/`` sub-folder is recognised on its own).

Latents: z ~ N(0, 1) of shape (latent_channels, R/f, R/f), drawn with
:func:`gdx.seeded_normal`, where R is ``resolution`` (default: the config's
``sample_size``, else 256) and f the decoder's upsampling factor. Before decoding,
z is mapped to the VAE's own latent scale as diffusers pipelines do:
``z / scaling_factor + shift_factor`` (shift 0 when the config has none). Images
come out in [-1, 1] (unclamped for AutoencoderKL).

Hookable layers are the decoder's module names, e.g. ``decoder.mid_block``,
``decoder.up_blocks.0`` ... ``decoder.up_blocks.3``, ``decoder.conv_out`` (KL) or
``decoder.layers.N`` (Tiny), and ``post_quant_conv`` (KL). The encoder is not run and
not listed.

Needs the optional dependency diffusers: ``pip install 'gdx[diffusers]'``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

import gdx
from gdx.wrappers import SeededNormalRows
from gdx.errors import AdapterOptionError, CheckpointError, GdxError, MissingDependencyError
from gdx.interfaces import Generator
from gdx.plugins.generators.sniff import describe_keys
from gdx.hookspecs import Register

WHAT = "vae weights"
SUPPORTED = ("AutoencoderKL", "AutoencoderTiny")

#: A diffusers ``AutoencoderKL`` or ``AutoencoderTiny`` (an ``nn.Module``). diffusers is an
#: optional dependency and its ``config``/sub-module attributes are dynamic, so it is ``Any``.
DiffusersVAE = Any


def _import_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as exc:
        raise MissingDependencyError(
            f"the vae generator needs the diffusers package ({exc}). Install it with: pip install 'gdx[diffusers]'"
        ) from None
    return diffusers


def resolve_model_dir(weights: str | Path, subfolder: str | None) -> tuple[Path, str | None, dict[str, Any]]:
    """(folder, subfolder, config) of a diffusers VAE, with errors that say what is there instead."""
    root = Path(weights).expanduser()
    if not root.exists():
        raise CheckpointError(f"{WHAT}: folder not found: {root}. Pass a diffusers VAE folder as the generator option `weights=...`.")
    if root.is_file():
        raise CheckpointError(
            f"{WHAT}: {root} is a file; the vae generator takes a diffusers model folder "
            "(config.json + diffusion_pytorch_model.safetensors), e.g. one written by save_pretrained."
        )
    if subfolder is None and (root / "model_index.json").exists() and (root / "vae" / "config.json").exists():
        subfolder = "vae"
    folder = root / subfolder if subfolder else root
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        hint = " It looks like a pipeline folder: pass the generator option `subfolder=vae`." if (root / "model_index.json").exists() else ""
        raise CheckpointError(f"{WHAT}: no config.json in {folder}.{hint}")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{WHAT}: cannot read {cfg_path} ({exc}); the file is damaged.") from None
    cls = config.get("_class_name")
    if cls not in SUPPORTED:
        raise CheckpointError(
            f"{WHAT}: {folder} holds a diffusers {cls or 'model of unknown class'}, not one of "
            f"{', '.join(SUPPORTED)}. Point the generator option `weights=...` (and the generator option `subfolder=...`) at the VAE."
        )
    weight_files = [p for p in folder.iterdir() if p.name.startswith("diffusion_pytorch_model")]
    if not weight_files:
        raise CheckpointError(
            f"{WHAT}: {folder} has config.json but no diffusion_pytorch_model.safetensors; copy the weights file there."
        )
    return root, subfolder, config


class VAEDecoder(nn.Module):
    """``z`` (N(0,1) scale) -> image: the VAE's decode, with only decoder modules as children."""

    _vae: DiffusersVAE  # held outside the module tree (see __init__)

    def __init__(self, vae: DiffusersVAE, *, scaling_factor: float, shift_factor: float) -> None:
        super().__init__()
        # The decoder parts are registered here (so their names are the layers and
        # .to() moves them); the whole VAE is held outside the module tree so the unused
        # encoder is neither listed nor moved.
        self.decoder = vae.decoder
        if getattr(vae, "post_quant_conv", None) is not None:
            self.post_quant_conv = vae.post_quant_conv
        object.__setattr__(self, "_vae", vae)
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        latents = z / self.scaling_factor + self.shift_factor
        dtype = self.decoder.conv_in.weight.dtype if hasattr(self.decoder, "conv_in") else latents.dtype
        return self._vae.decode(latents.to(dtype)).sample.float()


class VAEGenerator(Generator):
    """A diffusers VAE decoder as a :class:`gdx.Generator`."""

    name = "vae"

    def __init__(self, vae: DiffusersVAE, *, resolution: int | None = None) -> None:
        cfg = vae.config
        cls = type(vae).__name__
        if cls == "AutoencoderTiny":
            factor = int(cfg.upsampling_scaling_factor) ** (len(cfg.decoder_block_out_channels) - 1)
        else:
            factor = 2 ** (len(cfg.block_out_channels) - 1)
        sample = cfg.get("sample_size") if hasattr(cfg, "get") else getattr(cfg, "sample_size", None)
        if isinstance(sample, (list, tuple)):
            sample = sample[0]
        res = int(resolution or sample or 256)
        if res % factor:
            raise AdapterOptionError(f"vae option resolution={res}: must be a multiple of the decoder's factor {factor}.")
        self.resolution, self.factor = res, factor
        self.latent_shape = (int(cfg.latent_channels), res // factor, res // factor)
        shift = getattr(cfg, "shift_factor", None)
        self._module = VAEDecoder(vae, scaling_factor=float(cfg.scaling_factor),
                                  shift_factor=float(shift) if shift is not None else 0.0).eval()
        self.kind = cls
        self.default_layer = _middle_decoder_layer(vae)

    @property
    def module(self) -> VAEDecoder:
        return self._module

    def sample_latents(self, n: int, *, seed: int) -> torch.Tensor:
        return gdx.seeded_normal(n, self.latent_shape, seed)

    def latent_rows(self, n: int, *, seed: int) -> gdx.LatentRows:
        return SeededNormalRows(n, self.latent_shape, seed)  # drawn per batch, same bits

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return self._module(z)

    def describe(self) -> str:
        return f"vae ({self.kind}, {self.resolution}x{self.resolution}, latent {self.latent_shape})"


def _middle_decoder_layer(vae: DiffusersVAE) -> str:
    """A decoder stage halfway to the image (the default layer to dissect)."""
    decoder = vae.decoder
    if hasattr(decoder, "up_blocks"):
        return f"decoder.up_blocks.{max(len(decoder.up_blocks) // 2 - 1, 0)}"
    return f"decoder.layers.{len(decoder.layers) // 2}"


def _weight_keys(folder: Path) -> list[str] | None:
    """The parameter names stored in a diffusers model folder's weights file (None: no file gdx reads)."""
    st = folder / "diffusion_pytorch_model.safetensors"
    if st.is_file():
        from safetensors import safe_open

        with safe_open(str(st), framework="pt") as f:
            return list(f.keys())
    return None


def check_weight_keys(vae: DiffusersVAE, folder: Path, *, strict: bool = True) -> None:
    """Refuse a weights file that does not fill the model: diffusers only logs "newly initialized".

    The keys of the file must be the model's state-dict keys; missing or unexpected ones
    are a :class:`CheckpointError` naming a few (``strict=False`` accepts them).
    """
    keys = _weight_keys(folder)
    if keys is None or not strict:
        return
    want, have = set(vae.state_dict()), set(keys)
    missing, unexpected = sorted(want - have), sorted(have - want)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
        raise CheckpointError(
            f"{WHAT}: the weights in {folder} do not fit its {type(vae).__name__} config: "
            f"{'; '.join(parts)} of {len(want)} parameters. They are from another model or another "
            "version of this one; pass the matching folder, or the vae option `strict=false` to load "
            "what fits and leave the rest randomly initialised."
        )


def load_vae(weights: str | Path, *, subfolder: str | None = None, strict: bool = True) -> DiffusersVAE:
    """Load a diffusers AutoencoderKL/AutoencoderTiny from a local folder, offline (every weight must fit)."""
    root, subfolder, config = resolve_model_dir(weights, subfolder)
    diffusers = _import_diffusers()
    cls = getattr(diffusers, config["_class_name"])
    try:
        vae = cls.from_pretrained(str(root), subfolder=subfolder, local_files_only=True,
                                  low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        text = " ".join(str(exc).strip().splitlines()[:2])[:300]
        hint = "The weights file may be truncated or from another model"
        weights_file = (root / (subfolder or "") / "diffusion_pytorch_model.safetensors")
        if weights_file.exists():
            try:
                from safetensors import safe_open

                with safe_open(str(weights_file), framework="pt") as f:
                    hint += f"; its keys look like {describe_keys(list(f.keys()))}"
            except Exception:  # noqa: BLE001 - a damaged file: the main message says so
                hint += "; it cannot even be opened as safetensors (truncated?)"
        raise CheckpointError(f"{WHAT}: cannot load {config['_class_name']} from {root / (subfolder or '')} ({text}). {hint}.") from None
    try:
        check_weight_keys(vae, root / (subfolder or ""), strict=strict)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors' own error for a damaged header
        raise CheckpointError(f"{WHAT}: cannot read the weights in {root / (subfolder or '')} ({exc}).") from None
    return vae.eval().requires_grad_(False)


def build_vae(
    weights: str,
    subfolder: str | None = None,
    resolution: int | None = None,
    device: str = "cpu",
    strict: bool = True,
) -> gdx.Generator:
    """Decoder of a diffusers AutoencoderKL/AutoencoderTiny folder (needs gdx[diffusers]); layers decoder.*.

    Args:
        weights: a diffusers model folder (config.json + weights)
        subfolder: the VAE's subfolder inside a pipeline folder (e.g. vae)
        resolution: image size to decode to (default: the config's sample size)
        device: torch device to run on (cpu, cuda, ...)
        strict: refuse weights whose names do not match the config's model (false: load what fits)
    """
    vae = load_vae(weights, subfolder=subfolder, strict=strict)
    return VAEGenerator(vae, resolution=resolution).to(device)


@gdx.hookimpl
def register_generators(register: Register) -> None:
    register("vae", build_vae)
