"""GANPaint: paint concepts into generated images by editing dissected units (docs/method.md, "GANPaint").

>>> from gdx.paint import engine_from_run, create_app
>>> app = create_app(engine_from_run("runs/scene-scene"))     # serve with uvicorn
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gdx.errors import PaintError
from gdx.paint.engine import Concept, PaintEngine, Stroke, rank_concepts
from gdx.paint.models import engine_from_run, quick_dissection

if TYPE_CHECKING:
    from fastapi import FastAPI


def create_app(engine: PaintEngine, **kwargs: Any) -> FastAPI:
    """The FastAPI app (imported lazily: FastAPI is the optional ``paint`` extra)."""
    from gdx.paint.server import create_app as _create_app

    return _create_app(engine, **kwargs)


__all__ = ["Concept", "PaintEngine", "PaintError", "Stroke", "create_app", "engine_from_run", "quick_dissection",
           "rank_concepts"]
