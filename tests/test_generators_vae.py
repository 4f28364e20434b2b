"""The vae generator: tiny diffusers AutoencoderKL/AutoencoderTiny folders round-trip."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import gdx

diffusers = pytest.importorskip("diffusers")
from gen_formats import tiny_autoencoder_kl, tiny_autoencoder_tiny  # noqa: E402


def test_autoencoder_kl_folder_decodes_like_the_original(tmp_path):
    vae = tiny_autoencoder_kl(seed=1)
    vae.save_pretrained(tmp_path / "vae")
    gen = gdx.load_generator("vae", weights=str(tmp_path / "vae"))
    z = gen.sample_latents(2, seed=3)
    assert z.shape == (2, 4, 8, 8) and torch.equal(z, gdx.seeded_normal(2, (4, 8, 8), 3))
    with torch.no_grad():
        out = gen.generate(z)
        assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()
        # The scaling factor is applied: N(0,1) latents are divided by it before decoding.
        assert torch.equal(out, vae.decode(z / vae.config.scaling_factor).sample)
        assert not torch.equal(out, vae.decode(z).sample)
    names = gen.layer_names()
    assert "decoder.up_blocks.0" in names and "post_quant_conv" in names
    assert not any(n.startswith("encoder") for n in names)


def test_pipeline_folder_finds_the_vae_subfolder_and_resolution_option(tmp_path):
    vae = tiny_autoencoder_kl(seed=2)
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (tmp_path / "pipe" / "unet").mkdir()
    (tmp_path / "pipe" / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    auto = gdx.load_generator("vae", weights=str(tmp_path / "pipe"))
    explicit = gdx.load_generator("vae", weights=str(tmp_path / "pipe"), subfolder="vae", resolution=32)
    assert auto.latent_shape == (4, 8, 8) and explicit.latent_shape == (4, 16, 16)
    with torch.no_grad():
        assert explicit.generate(explicit.sample_latents(1, seed=0)).shape == (1, 3, 32, 32)
    with pytest.raises(gdx.CheckpointError, match="UNet2DConditionModel"):
        gdx.load_generator("vae", weights=str(tmp_path / "pipe"), subfolder="unet")
    with pytest.raises(gdx.AdapterOptionError, match="multiple"):
        gdx.load_generator("vae", weights=str(tmp_path / "pipe"), resolution=21)


def test_autoencoder_tiny_folder(tmp_path):
    vae = tiny_autoencoder_tiny(seed=3)
    vae.save_pretrained(tmp_path / "taesd")
    gen = gdx.load_generator("vae", weights=str(tmp_path / "taesd"), resolution=32)
    z = gen.sample_latents(2, seed=0)
    assert z.shape == (2, 4, 4, 4)
    with torch.no_grad():
        out = gen.generate(z)
        assert out.shape == (2, 3, 32, 32)
        assert torch.equal(out, vae.decode(z / vae.config.scaling_factor).sample)
    assert "decoder.layers.0" in gen.layer_names()


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(gdx.CheckpointError, match="not found"):
        gdx.load_generator("vae", weights=str(tmp_path / "missing"))
    (tmp_path / "file.safetensors").write_bytes(b"x")
    with pytest.raises(gdx.CheckpointError, match="is a file"):
        gdx.load_generator("vae", weights=str(tmp_path / "file.safetensors"))
    vae = tiny_autoencoder_kl()
    vae.save_pretrained(tmp_path / "v")
    weights = tmp_path / "v" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(gdx.CheckpointError, match="truncated"):
        gdx.load_generator("vae", weights=str(tmp_path / "v"))
    weights.unlink()
    with pytest.raises(gdx.CheckpointError, match="no diffusion_pytorch_model"):
        gdx.load_generator("vae", weights=str(tmp_path / "v"))


def test_a_missing_diffusers_says_how_to_install_it(tmp_path, monkeypatch):
    tiny_autoencoder_kl().save_pretrained(tmp_path / "v")
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(gdx.GdxError, match=r"pip install 'gdx\[diffusers\]'"):
        gdx.load_generator("vae", weights=str(tmp_path / "v"))


def test_weights_of_another_model_are_refused_naming_missing_keys(tmp_path):
    """diffusers only logs "newly initialized" for weights that do not fit; gdx refuses them."""
    from safetensors.torch import load_file, save_file

    vae = tiny_autoencoder_kl(seed=4)
    vae.save_pretrained(tmp_path / "v")
    weights = tmp_path / "v" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    dropped = sorted(k for k in state if k.startswith("decoder.up_blocks.0"))
    assert dropped
    other = {k: v for k, v in state.items() if k not in dropped}
    other["some_other_model.weight"] = torch.zeros(3)
    save_file(other, str(weights))
    with pytest.raises(gdx.CheckpointError, match="missing") as info:
        gdx.load_generator("vae", weights=str(tmp_path / "v"))
    message = str(info.value)
    assert dropped[0] in message and "some_other_model.weight" in message and "strict=false" in message
    loose = gdx.load_generator("vae", weights=str(tmp_path / "v"), strict=False)  # the escape hatch
    assert loose.latent_shape == (4, 8, 8)
