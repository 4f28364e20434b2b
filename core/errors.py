"""Named exceptions. Each message says what is wrong and how to fix it.

The CLI turns every :class:`GdxError` into one line on stderr and a non-zero exit,
without a traceback.
"""

from __future__ import annotations

import difflib
import pickle
from collections.abc import Iterable


class GdxError(Exception):
    """Base class of every error gdx raises on purpose."""


class UnknownAdapterError(GdxError, KeyError):
    """A generator, segmenter or metric name that no installed plugin registers."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(
            f"unknown {kind} {name!r}.{hint} Installed {kind}s: {', '.join(known) or '(none)'}. "
            f"Run 'gdx {kind}s' to list them, or install the plugin that provides it."
        )
        self.kind, self.name, self.known = kind, name, known

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class AdapterOptionError(GdxError, TypeError):
    """An option an adapter does not take, or a value it cannot parse."""


class UnknownLayerError(GdxError, KeyError):
    """A layer name that is not a module of the generator."""

    def __init__(self, name: str, valid: Iterable[str]) -> None:
        valid = [v for v in valid if v]
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        shown = ", ".join(valid[:40]) + (" ..." if len(valid) > 40 else "")
        super().__init__(
            f"no layer named {name!r} in the generator.{hint} Valid layers: {shown}"
        )
        self.name, self.valid = name, valid

    def __str__(self) -> str:
        return str(self.args[0])


class LayerAddressError(UnknownLayerError):
    """A layer address (``BLOCK@K``, ``BLOCK@A-B``) that is malformed or names a step the generator lacks.

    A subclass of :class:`UnknownLayerError`, so code that catches a wrong layer name
    catches a wrong step too; the message is written out in full by the caller.
    """

    def __init__(self, message: str, name: str = "", valid: Iterable[str] = ()) -> None:
        KeyError.__init__(self, message)
        self.name, self.valid = name, [v for v in valid if v]


class StepCountError(GdxError, RuntimeError):
    """A traced block ran more often in one ``generate()`` than the generator's ``steps_per_image``."""


class SegmenterOutputError(GdxError, ValueError):
    """A segmenter returned labels of the wrong shape, dtype or range."""


class GeneratorOutputError(GdxError, ValueError):
    """A generator returned images of the wrong shape or dtype."""


class NonFiniteError(GdxError, FloatingPointError):
    """NaN or Inf in activations or images; names the layer, batch and samples."""


class CheckpointError(GdxError, ValueError):
    """A weights file that is missing, truncated, unsafe or of another architecture."""


class ResultFormatError(GdxError, ValueError):
    """A saved result that cannot be read back (missing file, wrong version)."""


class MissingDependencyError(GdxError, ImportError):
    """An optional package an adapter or command needs is not installed (names the extra)."""


class DuplicateAdapterError(GdxError, ValueError):
    """Two plugins registered the same generator, segmenter or metric name.

    ``first`` and ``second`` describe the two plugins (their names, as pluggy's
    ``PluginValidationError`` names the plugin and the hook), in registration order.
    """

    def __init__(self, kind: str, name: str, first: str, second: str) -> None:
        same = first == second
        by = f"twice by the plugin {first}" if same else f"by two plugins: {first} and {second}"
        fix = (
            "Rename one of its registrations."
            if same
            else "Uninstall one of them, restrict the entry points with GDX_LOAD_PLUGINS, "
            "or rename one of the registrations."
        )
        super().__init__(f"{kind} {name!r} is registered {by}. {fix}")
        self.kind, self.name, self.first, self.second = kind, name, first, second

    def __reduce__(self) -> tuple[type[DuplicateAdapterError], tuple[str, str, str, str]]:
        return type(self), (self.kind, self.name, self.first, self.second)


class InterventionError(GdxError, ValueError):
    """An edit that cannot be applied (bad units, value or region)."""


class NotDifferentiableError(GdxError, TypeError):
    """The segmenter gives labels only; optimising units needs class probabilities."""


class RepairError(GdxError, ValueError):
    """An artifact-repair search that cannot run (no candidates, bad sizes, no real images)."""


class MetricSetupError(GdxError, ValueError):
    """A quality metric that lacks what it needs (weights, reference data, a module)."""


class RunFolderError(GdxError):
    """A run folder in a state the request does not fit (finished, unfinished, damaged)."""


class ResumeError(RunFolderError):
    """A checkpoint that does not belong to the requested run."""


class RunLockedError(RunFolderError):
    """Another live process holds the run folder's lock (it is writing there now)."""


class DeviceError(GdxError, ValueError):
    """A torch device that is malformed or that this machine does not have."""


class PaintError(GdxError, ValueError):
    """A GANPaint request that cannot be served (unknown concept, bad stroke or sample)."""


class InversionError(GdxError, ValueError):
    """Images that cannot be inverted (wrong shape, size or range) or a saved inversion that does not fit."""


class PhotoError(GdxError, ValueError):
    """A user image that is not a PNG/JPEG, is damaged, or is too large or too thin to decode safely."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global outside the allow-list (it would run code on load).

    Raised inside the restricted unpickler; the loader turns it into :class:`CheckpointError`.
    """

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class SettingsError(GdxError, ValueError):
    """A setting out of its range (samples, batch size, threshold, top-k...); names the value and the range."""


class ControlError(SettingsError):
    """An unknown control (`control=...`), or a generator that cannot be copied to re-initialise it."""


class LayerOutputError(GdxError, ValueError):
    """A layer that did not run, or whose output is not (or stops being) an N x U x h x w feature map."""


class UsageError(GdxError, ValueError):
    """A command-line value that cannot be read (the CLI's own input checks)."""
