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

import json
from pathlib import Path

import gdx
from gdx.checkpoints import existing_file, load_safetensors_file
from gdx.errors import CheckpointError
from gdx.plugins.generators.scene_diffusion_arch import SceneFlowUNet, build_from_config

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
    what = "scene-diffusion generator weights"
    path = existing_file(path, what=what)
    config_path = path.with_suffix(".json")
    if not config_path.exists():
        raise CheckpointError(
            f"{what}: {config_path} (the config beside the weights) is missing; export the model "
            f"again with tools.scenes.train_diffusion --export, which writes both files."
        )
    try:
        config = json.loads(config_path.read_bytes())
        module: SceneFlowUNet = build_from_config(config)
        state = {k: v.float() for k, v in load_safetensors_file(path, what=what).items()}
        missing, unexpected = module.load_state_dict(state, strict=False)
        latent_shape = tuple(int(x) for x in config["latent_shape"])
    except gdx.GdxError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError, RecursionError) as exc:
        raise CheckpointError(
            f"{what}: {path} and its config {config_path} do not make a model ({type(exc).__name__}: "
            f"{str(exc)[:160]}); export both files again with tools.scenes.train_diffusion --export."
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: {path} does not match the architecture in {config_path} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); re-export both files together."
        )
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
