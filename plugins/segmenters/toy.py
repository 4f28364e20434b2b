"""The built-in synthetic toy segmenter: reads the toy world's colours back exactly."""

from __future__ import annotations

import gdx
from gdx.plugins.toy_world import TOY_CATEGORIES, TOY_LABELS, toy_segment
from gdx.hookspecs import Register


def build_toy() -> gdx.Segmenter:
    """SYNTHETIC toy segmenter: exact labels for the toy generator's colours."""
    return gdx.wrap_segmenter(toy_segment, labels=TOY_LABELS, categories=TOY_CATEGORIES, name="toy")


@gdx.hookimpl
def register_segmenters(register: Register) -> None:
    register("toy", build_toy)
