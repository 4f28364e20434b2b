"""The bundled scene world: a procedural renderer with exact labels, and the scripts that
train the bundled scene GAN, VAE and segmenter on it."""

from gdx.scenes.render import CATEGORIES, LABEL_INDEX, LABELS, SceneBatch, label_frequencies, render_scenes

__all__ = ["CATEGORIES", "LABELS", "LABEL_INDEX", "SceneBatch", "label_frequencies", "render_scenes"]
