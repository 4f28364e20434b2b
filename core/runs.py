"""A run folder on disk: its manifest, its results, checkpoints, resume, sharding across ranks.

Folder layout (``gdx run --out DIR``)::

    DIR/run.json                      written last: its presence marks a finished run
    DIR/<layer>/dissection.json|.safetensors   (both carry the run id that run.json names)
    DIR/checkpoint/rank<R>.safetensors   while the run is unfinished (statistics + their JSON header)
    DIR/.gdx.lock                     the OS lock the writing process holds (see gdx.runlock)
    DIR/.gdx-next/                    an overwrite in progress: the new run, until it is finished

This module is the one reader and writer of ``run.json``: :class:`RunManifest` is its
content (the adapters as names plus parsed options, so anything can rebuild them
through the plugin registry), :class:`RunFolder` the folder's states and results, and
:class:`CheckpointedRun` the resumable execution. A checkpoint is one file, written atomically
(temp file + rename) every ``checkpoint_every`` batches; it holds the exact streaming
statistics and, in its header, where the run stands and a digest of the statistics, so a
kill at any instruction leaves the previous or the new checkpoint, never a mix, and a
resumed run gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
import uuid
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
from gdx.results import Dissection, atomic_save_tensors, atomic_write_json, load_tensors_and_metadata
from gdx.runlock import NEXT_DIR, RunLock, remove_stale_temps, settle, settle_for_reading

RUN_MANIFEST = "run.json"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_META = "gdx.checkpoint"
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
    #: The id its per-layer results carry (empty in manifests of older gdx versions).
    run_id: str = ""

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
                "processes": self.processes, "seconds": self.seconds, "synthetic": self.synthetic,
                "run_id": self.run_id}

    @classmethod
    def from_json(cls, data: Any, *, where: Path) -> "RunManifest":
        if not isinstance(data, dict) or data.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
            raise ResultFormatError(f"{where} is not a gdx run manifest")
        if not isinstance(data.get("version", 1), int) or data.get("version", 1) > MANIFEST_VERSION:
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
                run_id=str(data.get("run_id") or ""),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
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

    @property
    def staging_dir(self) -> Path:
        """Where an overwrite makes the new run while the old one stays in place."""
        return self.path / NEXT_DIR

    def lock(self) -> RunLock:
        """Take the folder's OS lock (one writer at a time); release it with ``.release()``."""
        lock = RunLock(self.path)
        lock.acquire()
        return lock

    def prepare(self, *, resume: bool, overwrite: bool, is_main: bool = True) -> Path:
        """Check that a run may write here and return the folder it writes into.

        Call it holding :meth:`lock` (the main process). An ``overwrite`` of a finished run
        returns the staging folder: the old run stays readable until :meth:`commit` swaps
        the new one in. ``resume`` continues an unfinished run, or an overwrite whose new
        run was interrupted.
        """
        if is_main:
            settle(self.path)
        state = self.state()
        staged = self.staging_dir.exists()
        if resume and staged and state == "finished":
            return self.staging_dir
        if overwrite:
            if state == "finished":
                if is_main:
                    shutil.rmtree(self.staging_dir, ignore_errors=True)
                return self.staging_dir
            if is_main:
                shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
                shutil.rmtree(self.staging_dir, ignore_errors=True)
            return self.path
        if state == "finished":
            raise RunFolderError(
                f"{self.path} already holds a finished run; pass `overwrite=True` to replace it, "
                "or choose another `out` folder."
                + (" (An interrupted overwrite is staged beside it: continue it with `resume=True`.)" if staged else "")
            )
        return self.path

    def commit(self, work: Path) -> None:
        """Make the finished run in ``work`` the folder's run (a no-op when it was made in place)."""
        if Path(work) != self.path:
            settle(self.path)

    def manifest(self) -> RunManifest:
        """The finished run's manifest (a clear error for an unfinished, foreign or damaged folder)."""
        settle_for_reading(self.path)
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
            data = json.loads(self.manifest_path.read_bytes())
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ResultFormatError(f"{self.manifest_path} is not valid JSON ({exc}); run 'gdx run' again") from None
        return RunManifest.from_json(data, where=self.manifest_path)

    def write_manifest(self, manifest: RunManifest) -> None:
        """Write run.json (the finished marker), then drop the checkpoints."""
        atomic_write_json(self.manifest_path, manifest.to_json())
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

    def layer(self, layer: str | None = None) -> str:
        """``layer`` if the run dissected it, else (None) the run's first layer."""
        return self._layer_of(self.manifest(), layer)

    def _layer_of(self, manifest: RunManifest, layer: str | None) -> str:
        layers = manifest.layers
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
        manifest = self.manifest()
        return self._checked(manifest, self._layer_of(manifest, layer))

    def dissections(self) -> list[Dissection]:
        manifest = self.manifest()
        return [self._checked(manifest, layer) for layer in manifest.layers]

    def _checked(self, manifest: RunManifest, layer: str) -> Dissection:
        """A layer's result, refused when it comes from another run than run.json."""
        d = Dissection.load(self.path / layer)
        if manifest.run_id and d.run_id != manifest.run_id:
            raise ResultFormatError(
                f"{self.path / layer} holds a result of another run ({d.run_id or 'unknown'}) than "
                f"{self.manifest_path} ({manifest.run_id}); the folder was changed by hand or half-written. "
                "Run 'gdx run' again with `overwrite=True`."
            )
        return d

    def save(self, manifest: RunManifest, dissections: Iterable[Dissection]) -> None:
        """Write results and then the manifest (for runs made in one go, e.g. GANPaint's quick dissection)."""
        run_id = manifest.run_id or uuid.uuid4().hex
        for d in dissections:
            d.run_id = run_id
            d.save(self.path / d.layer)
        self.write_manifest(dataclasses.replace(manifest, run_id=run_id))


@dataclass
class CheckpointedRun:
    """Runs a :class:`DissectionRun` into ``folder`` with resumable checkpoints (one per rank)."""

    folder: Path
    run: DissectionRun
    settings: dict[str, Any]
    world: World = field(default_factory=World)
    checkpoint_every: int = 50
    #: The id the results and run.json carry: kept in the checkpoints, so a resumed run keeps it.
    run_id: str = ""

    @property
    def fingerprint(self) -> str:
        text = json.dumps({**self.settings, "world_size": self.world.size}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _ckpt(self, suffix: str = "safetensors") -> Path:
        return self.folder / CHECKPOINT_DIR / f"rank{self.world.rank}.{suffix}"

    def save_checkpoint(self, phase: int, next_index: int, state: LevelPass | CountPass,
                        levels: LevelPass | None = None) -> None:
        """One file per checkpoint: the statistics, with where the run stands in its header.

        It replaces the previous checkpoint by a rename, so a kill at any point leaves one
        complete checkpoint (the previous or this one).
        """
        tensors = {f"state/{k}": v for k, v in state.state_dict().items()}
        if levels is not None:
            tensors.update({f"levels/{k}": v for k, v in levels.state_dict().items()})
        meta = {"fingerprint": self.fingerprint, "phase": phase, "next": next_index,
                "digest": _digest(tensors), "run_id": self.run_id, "saved": time.time()}
        atomic_save_tensors(self._ckpt(), tensors, metadata={CHECKPOINT_META: json.dumps(meta)})

    def load_checkpoint(self) -> tuple[int, int, dict[str, torch.Tensor]] | None:
        path = self._ckpt()
        if not path.exists():
            if self._ckpt("json").exists():
                raise ResumeError(
                    f"the checkpoint in {self.folder} was written by an older gdx and cannot be resumed; "
                    "start again with `overwrite=True`."
                )
            return None
        try:
            tensors, header = load_tensors_and_metadata(path)
            meta = json.loads(header[CHECKPOINT_META])
            phase, nxt, digest = int(meta["phase"]), int(meta["next"]), str(meta["digest"])
        except (ResultFormatError, KeyError, TypeError, ValueError) as exc:
            raise ResumeError(
                f"checkpoint {path} is damaged ({exc}); delete {self.folder / CHECKPOINT_DIR} and run again "
                "without `resume=True` (or with `overwrite=True`)."
            ) from None
        if meta.get("fingerprint") != self.fingerprint:
            raise ResumeError(
                f"the checkpoint in {self.folder} was made with other settings (models, options, layers, "
                "samples, seed, threshold, batch size or process count). Resume with the same settings, "
                "or start afresh in another `out` folder (or with `overwrite=True`)."
            )
        if _digest(tensors) != digest:
            raise ResumeError(
                f"checkpoint {path} does not match its own digest (the file was damaged after it was written); "
                f"delete {self.folder / CHECKPOINT_DIR} and run again without `resume=True`."
            )
        if meta.get("run_id"):
            self.run_id = str(meta["run_id"])
        return phase, nxt, tensors

    def execute(self, *, resume: bool) -> list[Dissection] | None:
        """Run (or resume) both passes on this rank's shard; rank 0 returns the results."""
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.folder)  # only files whose maker has exited
        start, stop = self.world.shard(self.run.samples)
        phase, next_index, tensors = 1, start, None
        if resume:
            loaded = self.load_checkpoint()
            if loaded is not None:
                phase, next_index, tensors = loaded
        if not resume and (self.folder / CHECKPOINT_DIR).exists():
            raise ResumeError(
                f"{self.folder} holds an unfinished run; pass `resume=True` to continue it, "
                "or `overwrite=True` to start again."
            )

        if not self.run_id:
            self.run_id = uuid.uuid4().hex
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
                r.run_id = self.run_id
                r.save(self.folder / r.layer)
        barrier(self.world)
        return results

    def finish(self, manifest: RunManifest) -> None:
        """Write run.json (the finished marker) and drop the checkpoints (rank 0 only)."""
        if self.world.is_main:
            RunFolder(self.folder).write_manifest(dataclasses.replace(manifest, run_id=self.run_id))

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


def checkpoint_header(path: Path) -> dict[str, Any]:
    """Where the run of checkpoint file ``path`` stands (phase, next sample, digest, run id)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = dict(f.metadata() or {})
    data = json.loads(header[CHECKPOINT_META])
    if not isinstance(data, dict):
        raise ResultFormatError(f"{path} has a damaged checkpoint header")
    return data


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for k in sorted(tensors):
        digest.update(k.encode())
        digest.update(tensors[k].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
