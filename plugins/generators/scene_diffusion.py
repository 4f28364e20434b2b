"""The bundled scene diffusion model ("scene-diffusion"): a rectified-flow U-Net with a 10-step sampler.

Trained on the procedural scene world (:mod:`gdx.scenes`) by ``tools.scenes.train_diffusion``;
the weights ship inside the package (``weights/scene_diffusion.safetensors``, fp16, loaded
as fp32) with a JSON config giving the widths and the sampler (steps, time shift). The
network is :class:`gdx.plugins.generators.scene_diffusion_arch.SceneFlowUNet`, whose
``forward(noise)`` runs the whole Euler sampler, so each block (``stem``, ``down1``,
``down2``, ``mid``, ``up2``, ``up1``, ``head`` and their sub-modules) runs once per step
and the engine addresses it as ``"mid@K"`` (step K, 0-based, from noise) or
``"mid@A-B"`` (a window of steps, for edits). docs/diffusion.md, "The bundled
scene-diffusion model", says which blocks and steps carry which concepts.

Latents are the initial noise, N x 3 x 64 x 64, seeded like every scene generator:
``torch.randn((n, 3, 64, 64), generator=torch.Generator().manual_seed(seed))``.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import gdx
from gdx.plugins.generators.scene_diffusion_arch import SceneFlowUNet, build_from_config
from gdx.plugins.generators.scene_weights import load_export

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_NAME = "scene_diffusion.safetensors"


def _middle_step(steps: int) -> int:
    return steps // 2 - 1 if steps > 1 else 0


def build_scene_diffusion(weights: str = "", steps: int = 0) -> gdx.Generator:
    """Bundled 64x64 rectified-flow U-Net trained on the scene world; samples in 10 Euler steps.

    Args:
        weights: another export of tools.scenes.train_diffusion (.safetensors with its .json beside it); default: the bundled one
        steps: Euler steps per image (0: the config's, 10); fewer is faster and blurrier
    """
    path = Path(weights) if weights else WEIGHTS_DIR / WEIGHTS_NAME
    loaded, _, latent_shape = load_export(path, "scene-diffusion generator weights", build_from_config,
                                          "tools.scenes.train_diffusion --export")
    module = cast(SceneFlowUNet, loaded)
    if steps < 0:
        raise gdx.AdapterOptionError(f"scene-diffusion: steps must be >= 1 (0 for the default), got {steps}")
    if steps:
        module.steps = int(steps)
    gen = gdx.wrap_generator(module.eval(), latent_shape=latent_shape, name="scene-diffusion")
    gen.steps_per_image = module.steps
    # Dissect the 8x8 middle block at the middle step; paint at the 32x32 decoder block over
    # the first half of the steps (units ranked at the window's last step): edits there draw
    # trees inside the brush, while single-step edits or the 8x8/16x16 blocks are undone by
    # the later steps (docs/diffusion.md, "The bundled scene-diffusion model").
    middle = _middle_step(module.steps)
    gen.default_layer = f"mid@{middle}"
    gen.paint_layer = f"up1@0-{middle}" if middle > 0 else f"up1@{middle}"
    return gen
