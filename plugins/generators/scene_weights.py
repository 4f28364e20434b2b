"""Loading a bundled scene model's export: ``NAME.safetensors`` plus the ``NAME.json`` config beside it.

The scene GAN, the scene VAE decoder and scene-diffusion are all exported by a training
script under ``tools.scenes`` as fp16 safetensors and a JSON config that says how to build
the module. One loader checks the pair the same way for all three, so a damaged or
mismatched export always gets the same teaching error (which file, what is wrong, which
``--export`` writes both again) instead of a torch traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

import gdx
from gdx.checkpoints import existing_file, load_safetensors_file
from gdx.errors import CheckpointError

#: what a damaged config or state raises inside ``build`` / ``load_state_dict``
_BUILD_ERRORS = (ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError, RecursionError)


def load_export(path: Path, what: str, build: Callable[[dict[str, Any]], nn.Module],
                exporter: str) -> tuple[nn.Module, dict[str, Any], tuple[int, ...]]:
    """(module with the weights loaded as fp32, its config, the latent shape) of an export.

    ``build(config)`` makes the untrained module; ``exporter`` names what writes both files
    again (e.g. ``"tools.scenes.train_diffusion --export"``), for the error messages.
    """
    path = existing_file(path, what=what)
    config_path = path.with_suffix(".json")
    if not config_path.exists():
        raise CheckpointError(
            f"{what}: {config_path} (the config beside the weights) is missing; export the model "
            f"again with {exporter}, which writes both files."
        )
    try:
        config = json.loads(config_path.read_bytes())
        module = build(config)
        state = {k: v.float() for k, v in load_safetensors_file(path, what=what).items()}
        missing, unexpected = module.load_state_dict(state, strict=False)
        latent_shape = tuple(int(x) for x in config["latent_shape"])
    except gdx.GdxError:
        raise
    except _BUILD_ERRORS as exc:
        raise CheckpointError(
            f"{what}: {path} and its config {config_path} do not make a model ({type(exc).__name__}: "
            f"{str(exc)[:160]}); the config may be damaged: export both files again with {exporter}."
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: {path} does not match the architecture in {config_path} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); re-export both files together."
        )
    return module, config, latent_shape
