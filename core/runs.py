"""A run folder on disk: its manifest, its results, checkpoints, resume, sharding across ranks.

Folder layout (``gdx run --out DIR``)::

    DIR/run.json                      written last: its presence marks a finished run
    DIR/<layer>/dissection.json|.safetensors
    DIR/checkpoint/rank<R>.json|.safetensors   while the run is unfinished

This module is the one reader and writer of ``run.json``: :class:`RunManifest` is its
content (the adapters as names plus parsed options, so anything can rebuild them
through the plugin registry), :class:`RunFolder` the folder's states and results, and
:class:`CheckpointedRun` the resumable execution. Checkpoints are written atomically
(temp file + rename) every ``checkpoint_every`` batches and hold the exact streaming
statistics, so a resumed run gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from gdx.dissection import CountPass, DissectionRun, LevelPass
from gdx.distributed import World, barrier, gather_states
from gdx.errors import ResultFormatError, ResumeError, RunFolderError, SettingsError
from gdx.interfaces import Generator
from gdx.manager import PluginRegistry, default_registry, parse_options
from gdx.results import Dissection, atomic_save_tensors, atomic_write_json, load_tensors

RUN_MANIFEST = "run.json"
CHECKPOINT_DIR = "checkpoint"
MANIFEST_FORMAT = "gdx.run"
#: Version 2 stores adapter options as parsed values; version 1 stored ``key=value`` strings.
MANIFEST_VERSION = 2

RunState = Literal["finished", "unfinished", "empty"]


def choose_layers(generator: Generator, layers: Sequence[str] | None = None) -> list[str]:
    """``layers`` if given, else the generator's default layer: the one fallback every command uses."""
    if layers:
        return list(layers)
    if not generator.default_layer:
        raise SettingsError(
            f"generator {generator.name!r} has no default layer: choose one with `layer=NAME` "
            f"(its layers: {', '.join(generator.layer_names()[:30])})"
        )
    return [generator.default_layer]


@dataclass(frozen=True)
class AdapterSpec:
    """A registered adapter by name, with the options to build it again.

    ``options`` are parsed values (str, int, float, bool), as ``gdx.load_generator``
    takes them. ``pairs`` holds the raw ``key=value`` strings of a version-1 manifest,
    parsed against the adapter's signature when it is built.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    pairs: tuple[str, ...] = ()

    def build(self, kind: Literal["generator", "segmenter"], registry: PluginRegistry | None = None) -> Any:
        reg = registry or default_registry()
        options = dict(self.options)
        if self.pairs:
            options.update(parse_options(reg.info(kind, self.name), self.pairs))
        return reg.build(kind, self.name, **options)

    def to_json(self) -> dict[str, Any]:
        return dict(self.options) if not self.pairs else {"pairs": list(self.pairs)}


def _options_from_json(value: Any, where: Path) -> tuple[dict[str, Any], tuple[str, ...]]:
    if value is None:
        return {}, ()
    if isinstance(value, list):  # version 1: ["key=value", ...]
        return {}, tuple(str(v) for v in value)
    if isinstance(value, dict):
        if set(value) == {"pairs"} and isinstance(value["pairs"], list):
            return {}, tuple(str(v) for v in value["pairs"])
        return dict(value), ()
    raise ResultFormatError(f"{where}: adapter options must be a mapping, got {type(value).__name__}")


@dataclass(frozen=True)
class RunManifest:
    """What ``run.json`` says: how a finished run was made (enough to rebuild its generator)."""

    generator: AdapterSpec
    segmenter: AdapterSpec
    layers: list[str]
    samples: int
    seed: int
    threshold: float | str
    batch_size: int | None = None
    sketch_size: int | None = None
    processes: int = 1
    seconds: float | None = None
    synthetic: bool = False

    def settings(self) -> dict[str, Any]:
        """The settings a checkpoint must match to be resumed (not the timing or process count)."""
        return {
            "generator": self.generator.name, "segmenter": self.segmenter.name,
            "generator_options": self.generator.to_json(), "segmenter_options": self.segmenter.to_json(),
            "layers": list(self.layers), "samples": self.samples, "seed": self.seed,
            "threshold": self.threshold, "batch_size": self.batch_size, "sketch_size": self.sketch_size,
        }

    def to_json(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **self.settings(),
                "processes": self.processes, "seconds": self.seconds, "synthetic": self.synthetic}

    @classmethod
    def from_json(cls, data: Any, *, where: Path) -> "RunManifest":
        if not isinstance(data, dict) or data.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
            raise ResultFormatError(f"{where} is not a gdx run manifest")
        if int(data.get("version", 1)) > MANIFEST_VERSION:
            raise ResultFormatError(f"{where} was written by a newer gdx (version {data.get('version')}); upgrade gdx")
        try:
            gen_opts, gen_pairs = _options_from_json(data.get("generator_options"), where)
            seg_opts, seg_pairs = _options_from_json(data.get("segmenter_options"), where)
            layers = [str(x) for x in data["layers"]]
            if not layers:
                raise ResultFormatError(f"{where} lists no layers; run 'gdx run' again")
            return cls(
                generator=AdapterSpec(str(data["generator"]), gen_opts, gen_pairs),
                segmenter=AdapterSpec(str(data["segmenter"]), seg_opts, seg_pairs),
                layers=layers, samples=int(data["samples"]), seed=int(data["seed"]),
                threshold=data.get("threshold", 0.99), batch_size=data.get("batch_size"),
                sketch_size=data.get("sketch_size"), processes=int(data.get("processes", 1)),
                seconds=data.get("seconds"), synthetic=bool(data.get("synthetic", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ResultFormatError):
                raise
            raise ResultFormatError(f"{where} is damaged ({type(exc).__name__}: {exc}); run 'gdx run' again") from None


@dataclass(frozen=True)
class RunFolder:
    """A ``gdx run`` output folder: its state, its manifest and its per-layer results."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def manifest_path(self) -> Path:
        return self.path / RUN_MANIFEST

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def state(self) -> RunState:
        """"finished" (run.json is there), "unfinished" (a checkpoint is there) or "empty"."""
        if self.manifest_path.exists():
            return "finished"
        if self.checkpoint_dir.exists():
            return "unfinished"
        return "empty"

    def prepare(self, *, resume: bool, overwrite: bool, is_main: bool = True) -> None:
        """Check that a new run may write here, clearing the old one for ``overwrite``."""
        state = self.state()
        if state != "empty" and overwrite:
            if is_main:
                shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
                self.manifest_path.unlink(missing_ok=True)
        elif state == "finished":
            raise RunFolderError(
                f"{self.path} already holds a finished run; pass `overwrite=True` to replace it, "
                "or choose another `out` folder."
            )

    def manifest(self) -> RunManifest:
        """The finished run's manifest (a clear error for an unfinished, foreign or damaged folder)."""
        if not self.manifest_path.is_file():
            if self.checkpoint_dir.exists():
                raise RunFolderError(
                    f"{self.path} is an unfinished run: continue it with the same settings and `resume=True`."
                )
            raise RunFolderError(
                f"{self.path} has no {RUN_MANIFEST}: not a finished gdx run folder "
                "(pass the folder 'gdx run --out DIR' wrote; the run may not have finished)."
            )
        try:
            data = json.loads(self.manifest_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ResultFormatError(f"{self.manifest_path} is not valid JSON ({exc}); run 'gdx run' again") from None
        return RunManifest.from_json(data, where=self.manifest_path)

    def write_manifest(self, manifest: RunManifest) -> None:
        """Write run.json (the finished marker), then drop the checkpoints."""
        atomic_write_json(self.manifest_path, manifest.to_json())
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

    def layer(self, layer: str | None = None) -> str:
        """``layer`` if the run dissected it, else (None) the run's first layer."""
        layers = self.manifest().layers
        if layer is None:
            return layers[0]
        if layer not in layers:
            raise RunFolderError(f"layer {layer!r} is not in {self.path} (it has: {', '.join(layers)}); choose one of them")
        return layer

    def dissection(self, layer: str | None = None) -> Dissection:
        """One layer's dissection. A folder of saved dissections without run.json
        (``Dissection.save(folder / layer)``) serves a named layer too."""
        if layer is not None and not self.manifest_path.is_file() and (self.path / layer / "dissection.json").is_file():
            return Dissection.load(self.path / layer)
        return Dissection.load(self.path / self.layer(layer))

    def dissections(self) -> list[Dissection]:
        return [Dissection.load(self.path / layer) for layer in self.manifest().layers]

    def save(self, manifest: RunManifest, dissections: Iterable[Dissection]) -> None:
        """Write results and then the manifest (for runs made in one go, e.g. GANPaint's quick dissection)."""
        for d in dissections:
            d.save(self.path / d.layer)
        self.write_manifest(manifest)


@dataclass
class CheckpointedRun:
    """Runs a :class:`DissectionRun` into ``folder`` with resumable checkpoints (one per rank)."""

    folder: Path
    run: DissectionRun
    settings: dict[str, Any]
    world: World = field(default_factory=World)
    checkpoint_every: int = 50

    @property
    def fingerprint(self) -> str:
        text = json.dumps({**self.settings, "world_size": self.world.size}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _ckpt(self, suffix: str) -> Path:
        return self.folder / CHECKPOINT_DIR / f"rank{self.world.rank}.{suffix}"

    def save_checkpoint(self, phase: int, next_index: int, state: LevelPass | CountPass,
                        levels: LevelPass | None = None) -> None:
        tensors = {f"state/{k}": v for k, v in state.state_dict().items()}
        if levels is not None:
            tensors.update({f"levels/{k}": v for k, v in levels.state_dict().items()})
        # tensors first, then the JSON that points at them: a kill between the two leaves
        # the previous JSON, whose tensors are overwritten only with newer consistent ones.
        digest = hashlib.sha256()
        for k in sorted(tensors):
            digest.update(k.encode())
            digest.update(tensors[k].detach().cpu().contiguous().numpy().tobytes())
        atomic_save_tensors(self._ckpt("safetensors"), tensors)
        atomic_write_json(self._ckpt("json"), {
            "fingerprint": self.fingerprint, "phase": phase, "next": next_index,
            "digest": digest.hexdigest(), "saved": time.time(),
        })

    def load_checkpoint(self) -> tuple[int, int, dict[str, torch.Tensor]] | None:
        meta_path = self._ckpt("json")
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        if meta["fingerprint"] != self.fingerprint:
            raise ResumeError(
                f"the checkpoint in {self.folder} was made with other settings (models, options, layers, "
                "samples, seed, threshold, batch size or process count). Resume with the same settings, "
                "or start afresh in another `out` folder (or with `overwrite=True`)."
            )
        tensors = load_tensors(self._ckpt("safetensors"))
        digest = hashlib.sha256()
        for k in sorted(tensors):
            digest.update(k.encode())
            digest.update(tensors[k].contiguous().numpy().tobytes())
        if digest.hexdigest() != meta["digest"]:
            raise ResumeError(
                f"checkpoint {self._ckpt('safetensors')} does not match its JSON (interrupted between the two "
                "writes); delete the checkpoint folder and run again without `resume=True`."
            )
        return int(meta["phase"]), int(meta["next"]), tensors

    def execute(self, *, resume: bool) -> list[Dissection] | None:
        """Run (or resume) both passes on this rank's shard; rank 0 returns the results."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.rglob(".*.tmp"):
            stale.unlink(missing_ok=True)
        start, stop = self.world.shard(self.run.samples)
        phase, next_index, tensors = 1, start, None
        if resume:
            loaded = self.load_checkpoint()
            if loaded is not None:
                phase, next_index, tensors = loaded
        elif (self.folder / CHECKPOINT_DIR).exists():
            raise ResumeError(
                f"{self.folder} holds an unfinished run; pass `resume=True` to continue it, "
                "or `overwrite=True` to start again."
            )

        levels = self.run.new_level_pass()
        if phase == 1:
            if tensors is not None:
                levels.load_state_dict(_strip(tensors, "state/"))

            def on_level_batch(batch: int, nxt: int, state: LevelPass) -> None:
                if (batch + 1) % self.checkpoint_every == 0:
                    self.save_checkpoint(1, nxt, state)

            self.run.level_pass(next_index, stop, state=levels, on_batch=on_level_batch)
            self.save_checkpoint(1, stop, levels)
            next_index, tensors = start, None
        else:
            levels.load_state_dict(_strip(tensors or {}, "levels/"))
        local_levels = levels
        merged_levels = self._merge_levels(local_levels)
        counts = self.run.new_count_pass(merged_levels)
        if phase == 2 and tensors is not None:
            counts.load_state_dict(_strip(tensors, "state/"))

        def on_count_batch(batch: int, nxt: int, state: CountPass) -> None:
            if (batch + 1) % self.checkpoint_every == 0:
                self.save_checkpoint(2, nxt, state, levels=local_levels)

        self.run.count_pass(merged_levels, next_index, stop, state=counts, on_batch=on_count_batch)
        self.save_checkpoint(2, stop, counts, levels=local_levels)
        merged_counts = self._merge_counts(counts, merged_levels)
        results = None
        if self.world.is_main and merged_counts is not None:
            results = self.run.results(merged_levels, merged_counts)
            for r in results:
                r.save(self.folder / r.layer)
        barrier(self.world)
        return results

    def finish(self, manifest: RunManifest) -> None:
        """Write run.json (the finished marker) and drop the checkpoints (rank 0 only)."""
        if self.world.is_main:
            RunFolder(self.folder).write_manifest(manifest)

    def _merge_levels(self, local: LevelPass) -> LevelPass:
        if self.world.size == 1:
            return local
        merged = self.run.new_level_pass()
        for state in gather_states(self.world, local.state_dict(), to_all=True):
            part = self.run.new_level_pass()
            part.load_state_dict(state)
            merged.merge(part)
        return merged

    def _merge_counts(self, local: CountPass, levels: LevelPass) -> CountPass | None:
        if self.world.size == 1:
            return local
        states = gather_states(self.world, local.state_dict(), to_all=False)
        if not self.world.is_main:
            return None
        merged: CountPass | None = None
        for state in states:
            part = self.run.new_count_pass(levels)
            part.load_state_dict(state)
            if merged is None:
                merged = part
            else:
                merged.merge(part)
        return merged


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
