"""Shared fixtures: entry-point plugins off by default, tiny models with known units."""

from __future__ import annotations

import os

import pytest
import torch

# Installed third-party plugins must not change what the tests see (as llm's tests do).
os.environ.setdefault("GDX_LOAD_PLUGINS", "")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _fresh_registry():
    import gdx.manager

    gdx.manager.reset_default_registry()
    yield
    gdx.manager.reset_default_registry()


@pytest.fixture
def toy_pair():
    import gdx

    return gdx.load_generator("toy"), gdx.load_segmenter("toy")
