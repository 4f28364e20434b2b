"""The bundled scene world at run time: the procedural renderer with exact labels.

The scripts that trained the bundled scene models live outside the package, in
``tools/scenes/`` of the repository (they never ship in the wheel).
"""

from gdx.scenes.render import CATEGORIES, LABEL_INDEX, LABELS, SceneBatch, label_frequencies, render_scenes

__all__ = ["CATEGORIES", "LABELS", "LABEL_INDEX", "SceneBatch", "label_frequencies", "render_scenes"]
