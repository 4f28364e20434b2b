"""A dissection run on disk: checkpoints, resume, atomic outputs, sharding across ranks.

Folder layout (``gdx run --out DIR``)::

    DIR/run.json                      written last: its presence marks a finished run
    DIR/<layer>/dissection.json|.safetensors
    DIR/checkpoint/rank<R>.json|.safetensors   while the run is unfinished

Checkpoints are written atomically (temp file + rename) every ``checkpoint_every``
batches and hold the exact streaming statistics, so a resumed run gives the same
numbers as an uninterrupted one. A run killed at any moment leaves either the
previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gdx.dissection import CountPass, DissectionRun, LevelPass
from gdx.distributed import World, barrier, gather_states
from gdx.errors import GdxError, ResumeError
from gdx.results import Dissection, atomic_save_tensors, atomic_write_json, load_tensors

RUN_MANIFEST = "run.json"
CHECKPOINT_DIR = "checkpoint"


def run_state(folder: Path) -> str:
    """"finished", "unfinished" (a checkpoint is there) or "empty"."""
    if (folder / RUN_MANIFEST).exists():
        return "finished"
    if (folder / CHECKPOINT_DIR).exists():
        return "unfinished"
    return "empty"


@dataclass
class RunFolder:
    """Writes one run's checkpoints and results into ``folder``."""

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
                "or start afresh with another --out (or --overwrite)."
            )
        tensors = load_tensors(self._ckpt("safetensors"))
        digest = hashlib.sha256()
        for k in sorted(tensors):
            digest.update(k.encode())
            digest.update(tensors[k].contiguous().numpy().tobytes())
        if digest.hexdigest() != meta["digest"]:
            raise ResumeError(
                f"checkpoint {self._ckpt('safetensors')} does not match its JSON (interrupted between the two "
                "writes); delete the checkpoint folder and run again without --resume."
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
                f"{self.folder} holds an unfinished run; pass --resume to continue it, "
                "or --overwrite to start again."
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

    def finish(self, manifest: dict[str, Any]) -> None:
        """Write run.json (the finished marker) and drop the checkpoints (rank 0 only)."""
        if self.world.is_main:
            atomic_write_json(self.folder / RUN_MANIFEST, manifest)
            shutil.rmtree(self.folder / CHECKPOINT_DIR, ignore_errors=True)

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
