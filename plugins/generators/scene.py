"""The bundled scene generators: a ProGAN ("scene") and a VAE decoder ("scene-vae").

The scene diffusion model ("scene-diffusion") is registered here too, through the same hook;
its loader lives in :mod:`gdx.plugins.generators.scene_diffusion`.

Both were trained on the procedural scene world (:mod:`gdx.scenes`) by the scripts in
``tools.scenes.train_gan`` / ``tools.scenes.train_vae``; their weights ship inside the package
as safetensors (fp16, loaded as fp32) with a JSON config giving the layer widths and the
latent shape. The GAN is a gandissect ProGAN module tree (``layer1`` ... ``layer10``: 4x4, 4x4, 8x8,
8x8, 16x16, ..., then ``output_64x64``); the VAE decoder is
:class:`gdx.plugins.scene_arch.SceneVAEDecoder` (``layer1`` ... ``layer8``, ``layer4`` at 8x8).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

import gdx
from gdx.plugins.generators.progan_arch import ProgressiveGenerator
from gdx.plugins.generators.scene_diffusion import build_scene_diffusion
from gdx.plugins.generators.scene_weights import load_export
from gdx.hookspecs import Register

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: Default layer for ``gdx run``: the GAN's first 16x16 layer (128 units), where units are
#: interpretable for 10 concepts (layer4 at 8x8: 11, layer6: 12) and ablating the top-20
#: units removes more than half of tree, door, dome, cloud and roof (docs/intervention.md).
#: The VAE decoder's ``layer4`` (8x8) is its own best middle layer.
DEFAULT_LAYERS = {"scene": "layer5", "scene-vae": "layer4"}
#: Layer for ``gdx paint``: the GAN's second 16x16 layer, where switching units on draws the
#: concept (tree, grass, door, cloud and sky all paint there; at layer5 trees and sky barely
#: do). Measured in docs/paint.md ("Which layer").
PAINT_LAYERS = {"scene": "layer6"}


def _build(config: dict[str, Any]) -> nn.Module:
    if config.get("arch") == "scene-vae-decoder":
        from gdx.plugins.scene_arch import SceneVAEDecoder

        return SceneVAEDecoder(int(config["z_dim"]))
    return ProgressiveGenerator(sizes=[int(s) for s in config["sizes"]])


def _load(weights: str, default_name: str, name: str) -> gdx.Generator:
    path = Path(weights) if weights else WEIGHTS_DIR / default_name
    module, _, latent_shape = load_export(path, f"{name} generator weights", _build,
                                          "the training script's --export")
    gen = gdx.wrap_generator(module.eval(), latent_shape=latent_shape, name=name)
    gen.default_layer = DEFAULT_LAYERS[name]
    gen.paint_layer = PAINT_LAYERS.get(name)
    encoder = WEIGHTS_DIR / ENCODERS.get(name, "-")
    if not weights and encoder.exists():  # an encoder belongs to the weights it was trained against
        setattr(gen, "encode", SceneEncode(load_scene_encoder(encoder)))
    return gen


#: The bundled generators' encoders (gdx.invert's warm start), trained against the bundled weights.
ENCODERS = {"scene": "scene_encoder.safetensors"}


def load_scene_encoder(path: Path) -> nn.Module:
    """A :class:`gdx.plugins.scene_arch.SceneEncoder` export (fp16 safetensors + JSON config)."""
    from gdx.plugins.scene_arch import SceneEncoder

    module, _, _ = load_export(path, "scene GAN encoder weights", lambda c: SceneEncoder(int(c["z_dim"])),
                               "tools.scenes.train_encoder --export")
    return module.eval()


class SceneEncode:
    """``generator.encode(images) -> latents``: what ``gdx.invert`` starts from (no grad)."""

    def __init__(self, encoder: nn.Module) -> None:
        self.encoder = encoder

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.encoder(images.float())


def build_scene(weights: str = "") -> gdx.Generator:
    """Bundled 64x64 ProGAN trained on the procedural scene world (sky, tree, door, window...).

    With the bundled weights it has an encoder (``generator.encode``), gdx.invert's warm start.

    Args:
        weights: another export of the training script (.safetensors with its .json beside it); default: the bundled one
    """
    return _load(weights, "scene_gan.safetensors", "scene")


def build_scene_vae(weights: str = "") -> gdx.Generator:
    """Bundled 64x64 VAE decoder trained on the scene world (blurrier than the GAN; units still meaningful).

    Args:
        weights: another export of the training script (.safetensors with its .json beside it); default: the bundled one
    """
    return _load(weights, "scene_vae.safetensors", "scene-vae")


@gdx.hookimpl
def register_generators(register: Register) -> None:
    register("scene", build_scene)
    register("scene-vae", build_scene_vae)
    register("scene-diffusion", build_scene_diffusion)
