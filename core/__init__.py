"""gdx: dissect and steer generative image models.

The public API is this module's ``__all__``; everything else is internal.

>>> import gdx
>>> gen = gdx.load_generator("toy")
>>> seg = gdx.load_segmenter("toy")
>>> result = gdx.dissect(gen, seg, "features", samples=200)
>>> result.summary()
"""

from __future__ import annotations

from gdx.errors import (
    AdapterOptionError,
    CheckpointError,
    GdxError,
    GeneratorOutputError,
    InterventionError,
    MissingDependencyError,
    NonFiniteError,
    NotDifferentiableError,
    ResultFormatError,
    SegmenterOutputError,
    UnknownAdapterError,
    UnknownLayerError,
)
from gdx.hookspecs import hookimpl
from gdx.interfaces import Generator, Metric, Segmenter
from gdx.wrappers import seeded_normal, wrap_generator, wrap_segmenter
from gdx.manager import PluginRegistry, default_registry
from gdx.tracing import StopForward, Trace, resolve_layers
from gdx.results import Dissection, DissectionSettings, Summary, UnitLabel
from gdx.dissection import DissectionRun, dissect
from gdx.intervention import Edit, Intervention, intervene
from gdx.values import insertion_values, unit_quantiles
from gdx.causal import (
    CausalEffect,
    CumulativeCurve,
    LocationMap,
    RemovalTable,
    UnitRanking,
    causal_effect,
    cumulative_effect,
    location_map,
    optimize_units,
    rank_by_ace,
    rank_by_iou,
    removal_table,
    segment_probs,
)
from gdx.repair import ArtifactRepair, find_artifact_units


def load_generator(name: str, **options):
    """Build the registered generator ``name`` with ``options`` (as ``--gen-opt key=value``).

    >>> gen = gdx.load_generator("progan", weights="churchoutdoor_lsun.pth")
    """
    return default_registry().load_generator(name, **options)


def load_segmenter(name: str, **options):
    """Build the registered segmenter ``name`` with ``options`` (as ``--seg-opt key=value``)."""
    return default_registry().load_segmenter(name, **options)


from gdx._version import __version__

__all__ = [
    "ArtifactRepair",
    "CausalEffect",
    "CumulativeCurve",
    "Edit",
    "Intervention",
    "InterventionError",
    "LocationMap",
    "NotDifferentiableError",
    "RemovalTable",
    "UnitRanking",
    "causal_effect",
    "cumulative_effect",
    "find_artifact_units",
    "insertion_values",
    "intervene",
    "location_map",
    "optimize_units",
    "rank_by_ace",
    "rank_by_iou",
    "removal_table",
    "segment_probs",
    "unit_quantiles",
    "AdapterOptionError",
    "CheckpointError",
    "Dissection",
    "DissectionRun",
    "DissectionSettings",
    "GdxError",
    "Generator",
    "GeneratorOutputError",
    "Metric",
    "NonFiniteError",
    "PluginRegistry",
    "ResultFormatError",
    "Segmenter",
    "SegmenterOutputError",
    "StopForward",
    "Summary",
    "Trace",
    "UnitLabel",
    "UnknownAdapterError",
    "UnknownLayerError",
    "MissingDependencyError",
    "default_registry",
    "dissect",
    "hookimpl",
    "load_generator",
    "load_segmenter",
    "resolve_layers",
    "seeded_normal",
    "wrap_generator",
    "wrap_segmenter",
]
