"""Tiny random diffusers pipelines written with save_pretrained, for the diffusion generator's tests.

Every model is a few thousand parameters at 8x8 (pixels) or a 4x4 latent under the
16-px AutoencoderKL of gen_formats, so a whole sample takes milliseconds. No network.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gen_formats import tiny_autoencoder_kl


def _index(folder: Path, cls: str, parts: dict[str, tuple[str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": cls, "_diffusers_version": "0.42.0", **{k: list(v) for k, v in parts.items()}}
    (folder / "model_index.json").write_text(json.dumps(index))


def tiny_unet2d(seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, attention_head_dim=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D")).eval()


def tiny_unet_cond(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(sample_size=4, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()


def tiny_dit(seed: int = 0):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=8,
                                 num_layers=2, sample_size=4, patch_size=2, num_embeds_ada_norm=1000).eval()


def write_unet_pipeline(folder: Path, scheduler) -> Path:
    """A DDPMPipeline-style folder: unet/ + scheduler/ (pixel space, 8x8)."""
    tiny_unet2d().save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    _index(folder, "DDPMPipeline", {"unet": ("diffusers", "UNet2DModel"),
                                    "scheduler": ("diffusers", type(scheduler).__name__)})
    return folder


def write_cond_pipeline(folder: Path, scheduler) -> tuple[Path, Path]:
    """A StableDiffusionPipeline-style folder without a text encoder, and a prompt-embeddings file."""
    from safetensors.torch import save_file

    tiny_unet_cond().save_pretrained(folder / "unet")
    tiny_autoencoder_kl().save_pretrained(folder / "vae")
    scheduler.save_pretrained(folder / "scheduler")
    _index(folder, "StableDiffusionPipeline", {"unet": ("diffusers", "UNet2DConditionModel"),
                                               "vae": ("diffusers", "AutoencoderKL"),
                                               "scheduler": ("diffusers", type(scheduler).__name__),
                                               "text_encoder": ("", ""), "tokenizer": ("", "")})
    torch.manual_seed(1)
    embeds = folder / "prompt.safetensors"
    save_file({"prompt_embeds": torch.randn(1, 5, 8), "negative_prompt_embeds": torch.randn(1, 5, 8)}, str(embeds))
    return folder, embeds


def write_dit_pipeline(folder: Path, scheduler) -> Path:
    tiny_dit().save_pretrained(folder / "transformer")
    tiny_autoencoder_kl().save_pretrained(folder / "vae")
    scheduler.save_pretrained(folder / "scheduler")
    _index(folder, "DiTPipeline", {"transformer": ("diffusers", "DiTTransformer2DModel"),
                                   "vae": ("diffusers", "AutoencoderKL"),
                                   "scheduler": ("diffusers", type(scheduler).__name__)})
    return folder
