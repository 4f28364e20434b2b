"""gdx: dissect and steer generative image models.

The public API is this module's ``__all__``; everything else is internal.

>>> import gdx
>>> gen = gdx.load_generator("toy")
>>> seg = gdx.load_segmenter("toy")
>>> result = gdx.dissect(gen, seg, "features", samples=200)
>>> result.summary()
"""

from __future__ import annotations

from typing import Any

from gdx.errors import (
    AdapterOptionError,
    CheckpointError,
    ControlError,
    DuplicateAdapterError,
    GdxError,
    GeneratorOutputError,
    InterventionError,
    InversionError,
    LayerAddressError,
    LayerOutputError,
    MetricSetupError,
    MissingDependencyError,
    NonFiniteError,
    NotDifferentiableError,
    PaintError,
    PhotoError,
    RepairError,
    ResultFormatError,
    ResumeError,
    RunFolderError,
    RunLockedError,
    SegmenterOutputError,
    SettingsError,
    StepCountError,
    UnknownAdapterError,
    UnknownLayerError,
)
from gdx.hookspecs import hookimpl
from gdx.interfaces import Generator, LatentRows, Metric, Segmenter
from gdx.wrappers import seeded_normal, wrap_generator, wrap_segmenter
from gdx.manager import PluginRegistry, default_registry
from gdx.tracing import LayerAddress, StopForward, Trace, resolve_layers
from gdx.results import Dissection, DissectionSettings, JsonResult, Summary, UnitLabel, load_result
from gdx.dissection import DissectionRun, dissect
from gdx.labelstats import random_weights
from gdx.intervention import Edit, Intervention, Value, intervene
from gdx.values import insertion_values, unit_quantiles
from gdx.concept_prior import ConceptPrior
from gdx.inversion import Inversion, InvertedGenerator, invert
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
    select_units,
)
from gdx.ablation import UnitAblation
from gdx.repair import ArtifactRepair, ScoreSpread, UnitEvidence, find_artifact_units, score_spread, unit_evidence
from gdx.runs import AdapterSpec, RunFolder, RunManifest


def load_generator(name: str, **options: Any) -> Generator:
    """Build the registered generator ``name`` with ``options`` (what the CLI takes as ``--gen-opt key=value``).

    >>> gen = gdx.load_generator("progan", weights="churchoutdoor_lsun.pth")
    """
    return default_registry().load_generator(name, **options)


def load_segmenter(name: str, **options: Any) -> Segmenter:
    """Build the registered segmenter ``name`` with ``options`` (what the CLI takes as ``--seg-opt key=value``)."""
    return default_registry().load_segmenter(name, **options)


from gdx._version import __version__

__all__ = [
    "AdapterOptionError",
    "AdapterSpec",
    "ArtifactRepair",
    "CausalEffect",
    "CheckpointError",
    "ConceptPrior",
    "ControlError",
    "CumulativeCurve",
    "Dissection",
    "DissectionRun",
    "DissectionSettings",
    "DuplicateAdapterError",
    "Edit",
    "GdxError",
    "Generator",
    "GeneratorOutputError",
    "Intervention",
    "InterventionError",
    "Inversion",
    "InversionError",
    "InvertedGenerator",
    "JsonResult",
    "LatentRows",
    "LayerAddress",
    "LayerAddressError",
    "LayerOutputError",
    "LocationMap",
    "Metric",
    "MetricSetupError",
    "MissingDependencyError",
    "NonFiniteError",
    "NotDifferentiableError",
    "PaintError",
    "PhotoError",
    "PluginRegistry",
    "RemovalTable",
    "RepairError",
    "ResultFormatError",
    "ResumeError",
    "RunFolder",
    "RunFolderError",
    "RunLockedError",
    "RunManifest",
    "ScoreSpread",
    "Segmenter",
    "SegmenterOutputError",
    "SettingsError",
    "StepCountError",
    "StopForward",
    "Summary",
    "Trace",
    "UnitAblation",
    "UnitEvidence",
    "UnitLabel",
    "UnitRanking",
    "UnknownAdapterError",
    "UnknownLayerError",
    "Value",
    "causal_effect",
    "cumulative_effect",
    "default_registry",
    "dissect",
    "find_artifact_units",
    "hookimpl",
    "insertion_values",
    "intervene",
    "invert",
    "load_generator",
    "load_result",
    "load_segmenter",
    "location_map",
    "optimize_units",
    "random_weights",
    "rank_by_ace",
    "rank_by_iou",
    "removal_table",
    "resolve_layers",
    "score_spread",
    "seeded_normal",
    "segment_probs",
    "select_units",
    "unit_evidence",
    "unit_quantiles",
    "wrap_generator",
    "wrap_segmenter",
]
