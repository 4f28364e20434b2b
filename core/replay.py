"""A bounded store of pass 1's layer outputs and segmentations, so pass 2 replays them.

Why: pass 1 needs only the generator up to the layer, but at a late layer that is most
of the generator (ProGAN-256 ``layer10``: ~19% of the two forward passes), and pass 2
then runs it all again. When pass 1 runs the whole generator and the segmenter and
keeps what pass 2 needs, pass 2 costs only the counting, and a third sweep (the label
statistics at each unit's chosen level, :mod:`gdx.labelstats`) costs no forward pass.

The store is an anonymous temporary file (the OS deletes it when the process ends,
even on SIGKILL), so it does not grow the process's memory with the sample count; a
byte budget bounds the disk it takes, and batches beyond it are simply regenerated.
Tensors are stored bit for bit (layer outputs in their own dtype, labels as int16 or
int32), so replayed batches give exactly the numbers a regenerated batch gives. A failed
write (a full disk) turns the store off and the run goes on regenerating: the cache can
only ever save time, never lose work.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from typing import IO

import numpy as np
import torch

log = logging.getLogger(__name__)

#: Default disk budget of a dissection's activation cache (bytes); 0 turns it off.
DEFAULT_CACHE_BYTES = 4 << 30


@dataclass(frozen=True)
class _Entry:
    offset: int
    parts: tuple[tuple[str, str, tuple[int, ...], int], ...]  # (name, numpy dtype, shape, nbytes)


class ActivationCache:
    """Batches of (layer outputs by name, label maps), keyed by their sample range.

    >>> cache = ActivationCache(1 << 30)
    >>> cache.put(0, 8, {"layer4": acts}, seg)      # True when stored
    >>> acts, seg = cache.get(0, 8)                 # None when not stored
    """

    def __init__(self, budget_bytes: int, directory: str | None = None) -> None:
        self.budget = max(0, int(budget_bytes))
        self.directory = directory
        self.used = 0
        self.enabled = self.budget > 0
        self._file: IO[bytes] | None = None
        self._entries: dict[tuple[int, int], _Entry] = {}

    def has_room(self, nbytes: int) -> bool:
        """Would a batch of ``nbytes`` fit the budget (and half the free disk)?"""
        if not self.enabled:
            return False
        if self.used + nbytes > self.budget:
            return False
        if self._file is None:
            try:
                free = shutil.disk_usage(self.directory or tempfile.gettempdir()).free
            except OSError:
                return False
            self.budget = min(self.budget, free // 2)
        return self.used + nbytes <= self.budget

    def put(self, start: int, stop: int, acts: dict[str, torch.Tensor], seg: torch.Tensor) -> bool:
        """Store a batch; False (and the store turned off) when it does not fit or cannot be written."""
        top = int(seg.max()) if seg.numel() else 0
        label_dtype = np.int16 if top < (1 << 15) else np.int32
        arrays = [(name, a.detach().cpu().contiguous().numpy()) for name, a in acts.items()]
        arrays.append(("\0seg", seg.detach().cpu().numpy().astype(label_dtype)))
        nbytes = sum(a.nbytes for _, a in arrays)
        if not self.has_room(nbytes):
            self.enabled = False
            return False
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="gdx-activations-", dir=self.directory)
            f = self._file
            f.seek(self.used)
            for _, a in arrays:
                f.write(np.ascontiguousarray(a).tobytes())
        except OSError as exc:
            log.warning("activation cache turned off (%s); later batches are regenerated", exc)
            self.enabled = False
            return False
        self._entries[(start, stop)] = _Entry(
            self.used, tuple((name, a.dtype.str, a.shape, a.nbytes) for name, a in arrays))
        self.used += nbytes
        return True

    def covers(self, start: int, stop: int) -> bool:
        return (start, stop) in self._entries

    def get(self, start: int, stop: int) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """The stored batch ``[start, stop)`` (fresh tensors), or None."""
        entry = self._entries.get((start, stop))
        if entry is None or self._file is None:
            return None
        f = self._file
        f.seek(entry.offset)
        acts: dict[str, torch.Tensor] = {}
        seg = torch.empty(0)
        for name, dtype, shape, nbytes in entry.parts:
            arr = np.fromfile(f, dtype=np.dtype(dtype), count=nbytes // np.dtype(dtype).itemsize).reshape(shape)
            if name == "\0seg":
                seg = torch.from_numpy(arr.astype(np.int64))
            else:
                acts[name] = torch.from_numpy(arr)
        return acts, seg

    def close(self) -> None:
        """Free the store (the file is deleted); later gets return None."""
        if self._file is not None:
            self._file.close()
        self._file = None
        self._entries.clear()
        self.used = 0
        self.enabled = False
