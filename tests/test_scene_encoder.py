"""The scene GAN's encoder (gdx.invert's warm start): its export format and what it buys.

The format test saves a randomly initialised encoder the way tools.scenes.train_encoder
checkpoints it, exports it, and loads it back through the plugin's loader. The bundled
encoder is checked against the bundled GAN it was trained for and against the random-latent
warm start on held-out rendered scenes (render seed 14_014; training pools start at 10,000,000).
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import gdx
from gdx.plugins.generators.scene import ENCODERS, WEIGHTS_DIR, load_scene_encoder
from gdx.plugins.scene_arch import SceneEncoder


def test_encoder_export_loads_back(tmp_path):
    from tools.scenes.train_encoder import export

    torch.manual_seed(0)
    enc = SceneEncoder(128)
    torch.save({"encoder": enc.state_dict(), "optimizer": {}, "step": 7, "seconds": 1.5}, tmp_path / "last.pt")
    export(tmp_path / "last.pt", tmp_path / "enc.safetensors")
    config = json.loads((tmp_path / "enc.json").read_text())
    assert config["arch"] == "scene-encoder" and config["z_dim"] == 128 and config["steps"] == 7
    back = load_scene_encoder(tmp_path / "enc.safetensors")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        want = SceneEncoder(128)
        want.load_state_dict({k: v.half().float() for k, v in enc.state_dict().items()})  # fp16 on disk
        torch.testing.assert_close(back(x), want(x))
        assert torch.allclose(back(x).pow(2).mean(1), torch.ones(2), atol=1e-4)  # unit RMS
    (tmp_path / "enc.json").write_text("{}")
    with pytest.raises(gdx.CheckpointError, match="train_encoder --export"):
        load_scene_encoder(tmp_path / "enc.safetensors")


bundled = pytest.mark.skipif(not (WEIGHTS_DIR / ENCODERS["scene"]).exists(), reason="no bundled scene encoder")


@bundled
def test_bundled_encoder_belongs_to_the_bundled_gan():
    config = json.loads((WEIGHTS_DIR / ENCODERS["scene"]).with_suffix(".json").read_text())
    gan = hashlib.sha256((WEIGHTS_DIR / "scene_gan.safetensors").read_bytes()).hexdigest()
    assert config["gan_weights_sha256"] == gan, "the encoder was trained against other GAN weights: train it again"
    assert callable(getattr(gdx.load_generator("scene"), "encode", None))
    assert not hasattr(gdx.load_generator("scene-vae"), "encode")


@bundled
def test_encoder_starts_closer_than_the_best_of_32_random_latents():
    from gdx.scenes import render_scenes

    gen = gdx.load_generator("scene")
    photos = render_scenes(16, seed=14_014).images
    encoded = gdx.invert(gen, photos, layer="layer5", latent_steps=0, feature_steps=0)
    plain = gdx.wrap_generator(gen.module, latent_shape=(128,), name="scene")  # the same GAN, no encoder
    sampled = gdx.invert(plain, photos, layer="layer5", latent_steps=0, feature_steps=0)
    assert encoded.settings.warm_start == "encoder" and sampled.settings.warm_start == "candidates"
    err = lambda inv: float(((inv.reconstructions - photos) ** 2).mean())  # noqa: E731
    assert err(encoded) < err(sampled)
