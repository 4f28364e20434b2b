"""The bundled scene realism critic, served as the image-quality metric ``scene-realism``.

Why a second score: artifact repair on the scene GAN is searched and confirmed with a
Fréchet distance on the scene segmenter's encoder features; a small critic trained on
pixels (rendered scenes against scene-GAN samples, ``tools.scenes.train_realism``) is an
independent judge, so a repair both agree on is not an artefact of one feature space.
The score is the mean logit over the generated images (higher = more like rendered
scenes), a :class:`~gdx.plugins.metrics.frechet.RealismScore`.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

import gdx
from gdx.checkpoints import existing_file, load_safetensors_file
from gdx.errors import CheckpointError
from gdx.hookspecs import Register
from gdx.plugins.metrics.frechet import RealismScore

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def load_scene_critic(weights: str = "") -> nn.Module:
    """The critic network (images N x 3 x 64 x 64 in [-1, 1] -> N logits), in eval mode."""
    from gdx.plugins.scene_arch import SceneRealismNet

    what = "scene realism critic weights"
    path = existing_file(Path(weights) if weights else WEIGHTS_DIR / "scene_realism.safetensors", what=what)
    config_path = path.with_suffix(".json")
    if not config_path.exists():
        raise CheckpointError(
            f"{what}: {config_path} (the config beside the weights) is missing; export again with "
            "python -m tools.scenes.train_realism --export, which writes both files."
        )
    try:
        config = json.loads(config_path.read_bytes())
        net = SceneRealismNet(tuple(int(w) for w in config["widths"]))
        net.load_state_dict({k: v.float() for k, v in load_safetensors_file(path, what=what).items()})
    except gdx.GdxError:
        raise
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(
            f"{what}: {path} and {config_path} do not make a critic ({type(exc).__name__}: {str(exc)[:160]}); "
            "export both files again with python -m tools.scenes.train_realism --export"
        ) from None
    return net.eval()


def build_scene_realism(weights: str = "") -> RealismScore:
    """Realism critic of the scene world (mean logit, higher = more like rendered scenes); 64x64 input.

    Args:
        weights: another export of tools.scenes.train_realism (.safetensors with its .json beside it); default: the bundled one
    """
    return RealismScore(load_scene_critic(weights))


@gdx.hookimpl
def register_metrics(register: Register) -> None:
    register("scene-realism", build_scene_realism)
