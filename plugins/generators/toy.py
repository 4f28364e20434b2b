"""The built-in synthetic toy generator (hand-built, untrained, known units)."""

from __future__ import annotations

import gdx
from gdx.plugins.toy_world import LATENT_DIM, ToyGenerator
from gdx.hookspecs import Register


def build_toy(resolution: int = 32) -> gdx.Generator:
    """SYNTHETIC toy world: blobs of sun/tree/rock/lake with known units (layer 'features').

    Args:
        resolution: image size in pixels (square)
    """
    return gdx.wrap_generator(ToyGenerator(resolution), latent_shape=(LATENT_DIM,), name="toy", default_layer="features")


@gdx.hookimpl
def register_generators(register: Register) -> None:
    register("toy", build_toy)
