"""Streaming, mergeable statistics for dissection.

Everything here has bounded memory (independent of the number of samples), a
``merge`` that gives the same answer as one pass over all the data, and a
``state_dict`` / ``load_state_dict`` pair (plain tensors) for checkpoints and for
moving partial results between processes.

* :class:`PointSample` keeps a fixed-size uniform sample of upsampled pixel positions,
  chosen by a hash of (sample index, pixel), so the kept set does not depend on batch
  order or sharding: merged shards hold *exactly* the points a single run holds.
  Quantile levels are read off it (pass 1).
* :class:`TopSamples` keeps each unit's k most activating samples.
* :class:`LevelCounts` counts, at given per-unit levels, the pixels above each level and
  their co-occurrence with each label (pass 2); IoU and IQR at every level follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from gdx import kernels
from gdx.buckets import LevelTable


def hash_keys(index: torch.Tensor, seed: int) -> torch.Tensor:
    """splitmix64 of ``index`` (int64) mixed with ``seed``, as non-negative int64 keys.

    Computed in numpy's wrapping uint64 arithmetic (torch has no uint64 multiply and is
    far slower for these small integer ops).
    """
    offset = np.uint64((seed * 0x632BE59BD9B4E019 + 0x2545F4914F6CDD1D) % (1 << 64))
    with np.errstate(over="ignore"):
        x = index.cpu().numpy().astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + offset
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return torch.from_numpy((x >> np.uint64(2)).astype(np.int64))


@dataclass(frozen=True)
class UpsampleAxis:
    """PyTorch's bilinear ``align_corners=False`` source taps for one axis."""

    i0: torch.Tensor  # (out,) lower source index
    i1: torch.Tensor  # (out,) upper source index
    w1: torch.Tensor  # (out,) weight of i1

    @staticmethod
    def make(size_in: int, size_out: int, device: torch.device) -> "UpsampleAxis":
        scale = size_in / size_out
        src = ((torch.arange(size_out, dtype=torch.float64, device=device) + 0.5) * scale - 0.5).clamp(min=0)
        i0 = src.floor().long().clamp(max=size_in - 1)
        i1 = (i0 + 1).clamp(max=size_in - 1)
        return UpsampleAxis(i0, i1, (src - i0).float())


def bilinear_at(acts: torch.Tensor, n_idx: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                out_size: tuple[int, int]) -> torch.Tensor:
    """Values of ``F.interpolate(acts, out_size, 'bilinear')`` at pixels (n, y, x): (P, U).

    Only the requested pixels are computed, so sampling stays cheap for big layers.
    """
    _, _, h, w = acts.shape
    ay = UpsampleAxis.make(h, out_size[0], acts.device)
    ax = UpsampleAxis.make(w, out_size[1], acts.device)
    rows = acts.permute(0, 2, 3, 1).reshape(-1, acts.shape[1])  # (n*h*w, U): one row per cell
    y0, y1, wy = ay.i0[y], ay.i1[y], ay.w1[y][:, None]
    x0, x1, wx = ax.i0[x], ax.i1[x], ax.w1[x][:, None]
    base = n_idx * (h * w)

    def cell(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return rows.index_select(0, base + yy * w + xx)

    top = cell(y0, x0) * (1 - wx) + cell(y0, x1) * wx
    bottom = cell(y1, x0) * (1 - wx) + cell(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


_cutoffs: dict[tuple[int, int, int, int], int] = {}


def winning_key_cutoff(samples: int, pixels: int, size: int, seed: int) -> int:
    """The largest key among the ``size`` smallest of all ``samples x pixels`` pixel keys.

    Keys depend only on (sample, pixel, seed), so a :class:`PointSample` of a run of known
    length knows its winners before it sees an activation: streamed over chunks of keys,
    bounded memory, cached per run shape (about a second per 16M pixels).
    """
    cache_key = (samples, pixels, size, seed)
    if cache_key not in _cutoffs:
        total = samples * pixels
        if total <= size:
            _cutoffs[cache_key] = (1 << 63) - 1
        else:
            best = np.empty(0, dtype=np.int64)
            chunk = max(1 << 17, 2 * size)  # small chunks: peak memory stays flat whatever the run length
            for c0 in range(0, total, chunk):
                keys = hash_keys(torch.arange(c0, min(total, c0 + chunk), dtype=torch.int64), seed).numpy()
                both = np.concatenate([best, keys])
                best = np.partition(both, size - 1)[:size] if len(both) > size else both
            _cutoffs[cache_key] = int(best.max())
    return _cutoffs[cache_key]


class PointSample:
    """A fixed-size, order-independent uniform sample of upsampled unit values.

    Each pixel (sample ``i``, position ``p``) of the upsampled maps gets the key
    ``hash(i * H * W + p)``; the sample is the ``size`` pixels with the smallest keys
    seen, with the values of all units there. The same pixels win whatever the batch
    order or sharding, so ``merge`` is exact. Memory: ``size x units`` floats.
    """

    def __init__(self, units: int, out_size: tuple[int, int], *, size: int = 16384, seed: int = 0,
                 total_samples: int | None = None) -> None:
        self.units, self.size, self.seed = units, int(size), int(seed)
        #: Samples in the whole run, when known: the winning keys are then known before any
        #: activation is (:func:`winning_key_cutoff`), and a batch computes only its winners.
        self.total_samples = total_samples
        self.out_size: tuple[int, int] = (int(out_size[0]), int(out_size[1]))
        self.keys = torch.empty(0, dtype=torch.int64)
        self.values = torch.empty(0, units)

    def update(self, acts: torch.Tensor, sample_index: torch.Tensor) -> None:
        """Fold in a batch: ``acts`` n x U x h x w (raw layer output), global sample indices (n,)."""
        n = acts.shape[0]
        hw = self.out_size[0] * self.out_size[1]
        pixel = torch.arange(hw, dtype=torch.int64)
        flat = sample_index.to(torch.int64).cpu()[:, None] * hw + pixel[None, :]
        keys = hash_keys(flat.reshape(-1), self.seed)
        if self.total_samples is not None:
            cand = (keys <= winning_key_cutoff(self.total_samples, hw, self.size, self.seed)).nonzero().squeeze(1)
            if cand.numel() == 0:
                return
        elif len(self.keys) >= self.size:
            cutoff = self.keys.max()
            keep = keys < cutoff
            if not bool(keep.any()):
                return
            cand = keep.nonzero().squeeze(1)
        else:
            cand = torch.arange(keys.numel())
        if cand.numel() > self.size:
            cand = cand[torch.topk(keys[cand], self.size, largest=False).indices]
        ckeys = keys[cand]
        n_idx, pos = cand // hw, cand % hw
        y, x = pos // self.out_size[1], pos % self.out_size[1]
        dev = acts.device
        vals = bilinear_at(acts.float(), n_idx.to(dev), y.to(dev), x.to(dev), self.out_size).cpu()
        self._absorb(ckeys, vals)
        del n

    def _absorb(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        keys = torch.cat([self.keys, keys])
        values = torch.cat([self.values, values])
        if len(keys) > self.size:
            keep = torch.topk(keys, self.size, largest=False).indices
            keys, values = keys[keep], values[keep]
        order = torch.argsort(keys)  # canonical order: results do not depend on merge order
        self.keys, self.values = keys[order], values[order]

    def merge(self, other: "PointSample") -> None:
        self._absorb(other.keys, other.values)

    def quantile_levels(self, fractions: torch.Tensor) -> torch.Tensor:
        """Per-unit levels with a ``fractions`` share of values above: (U, L), ascending in level.

        ``fractions`` must be sorted descending (largest share first), so levels ascend.
        Uses the same linear interpolation as ``torch.quantile``.
        """
        if len(self.values) == 0:
            raise ValueError("no samples seen yet")
        rows = self.values.t().contiguous()  # U, m
        m = rows.shape[1]
        f = fractions.double().clamp(0, 1)
        depth = f * (m - 1)  # position counted from the top (descending order)
        need = min(m, int(depth.max().ceil()) + 2)
        top = torch.topk(rows, need, dim=1, largest=True, sorted=True).values.double()  # U, need
        lo = depth.floor().long().clamp(max=need - 1)
        hi = (lo + 1).clamp(max=min(m, need) - 1)
        frac = (depth - lo)[None, :]
        levels = top[:, lo] * (1 - frac) + top[:, hi] * frac  # U, L
        return levels.float()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys, "values": self.values}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.keys, self.values = state["keys"].clone(), state["values"].clone()


class TopSamples:
    """Each unit's ``k`` samples with the highest maximum activation."""

    def __init__(self, units: int, k: int = 20) -> None:
        self.units, self.k = units, int(k)
        self.values = torch.empty(units, 0)
        self.indices = torch.empty(units, 0, dtype=torch.int64)

    def update(self, acts: torch.Tensor, sample_index: torch.Tensor) -> None:
        peak = acts.detach().flatten(2).amax(2).float().cpu().t()  # U, n
        idx = sample_index.cpu().to(torch.int64)[None, :].expand(self.units, -1)
        self._absorb(peak, idx)

    def _absorb(self, values: torch.Tensor, indices: torch.Tensor) -> None:
        values = torch.cat([self.values, values], 1)
        indices = torch.cat([self.indices, indices], 1)
        # Sort by (value desc, index asc) so ties resolve the same way in any merge order.
        order = torch.argsort(indices, dim=1, stable=True)
        values, indices = values.gather(1, order), indices.gather(1, order)
        order = torch.argsort(values, dim=1, descending=True, stable=True)[:, : self.k]
        self.values, self.indices = values.gather(1, order), indices.gather(1, order)

    def merge(self, other: "TopSamples") -> None:
        self._absorb(other.values, other.indices)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"values": self.values, "indices": self.indices}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.values, self.indices = state["values"].clone(), state["indices"].clone()


class PixelSink(Protocol):
    """Receives, per unit chunk, the pixels above a unit's lowest level (see :class:`LevelCounts`).

    ``sample`` (P,) local sample index in the batch, ``unit`` (P,) local to ``units``
    (``start, stop``), ``bucket`` (P,) = #levels below the pixel's value (>= 1), ``pos``
    (P,) the pixel's flat position ``y * W + x`` in the segmentation.
    """

    def __call__(self, sample: torch.Tensor, unit: torch.Tensor, bucket: torch.Tensor, pos: torch.Tensor,
                 units: tuple[int, int]) -> None: ...


class LevelCounts:
    """Exact pixel counts at per-unit levels: above-level totals and label co-occurrence.

    For levels ``t`` (U x L, ascending per unit) and labels ``0..C-1``:

    * ``above[u, j]`` = #pixels with upsampled ``r_u > t[u, j]``
    * ``cooc[u, j, c]`` = #pixels with ``r_u > t[u, j]`` and label ``c``
    * ``area[c]`` = #pixels with label ``c``; ``pixels`` = #pixels (per label slot).

    Counts are int64 and add exactly, so merging shards is exact.
    """

    def __init__(self, levels: torch.Tensor, num_labels: int, *, unit_chunk: int = 64) -> None:
        self.levels = levels.float().cpu()
        self.units, self.num_levels = self.levels.shape
        self.num_labels = int(num_labels)
        self.unit_chunk = unit_chunk
        self._above = torch.zeros(self.units, self.num_levels, dtype=torch.int64)
        self._cooc = torch.zeros(self.units, self.num_levels, self.num_labels, dtype=torch.int64)
        # Batches add to per-bucket histograms (unit, bucket, label + 1) and (unit, bucket); the
        # cumulative counts above each level are folded in when read: no per-batch cumsum.
        self._hist: torch.Tensor | None = None
        self._hist_above: torch.Tensor | None = None
        # the compiled loops' histogram, label-major: (unit, label + 1, bucket) (gdx.kernels)
        self._hist_lb: torch.Tensor | None = None
        self.area = torch.zeros(self.num_labels, dtype=torch.int64)
        self.pixels = torch.zeros((), dtype=torch.int64)
        self._dev_levels: dict[torch.device, torch.Tensor] = {}
        self._table: LevelTable | None = None
        self._kernel_table: kernels.CompiledTable | None = None
        self._sink: PixelSink | None = None
        self._count = True

    @property
    def above(self) -> torch.Tensor:
        """(U, L) int64: pixels above each level."""
        self._fold()
        return self._above

    @above.setter
    def above(self, value: torch.Tensor) -> None:
        self._fold()
        self._above = value

    @property
    def cooc(self) -> torch.Tensor:
        """(U, L, C) int64: pixels above each level with each label."""
        self._fold()
        return self._cooc

    @cooc.setter
    def cooc(self, value: torch.Tensor) -> None:
        self._fold()
        self._cooc = value

    def _fold(self) -> None:
        """Add the pending per-bucket histograms to the counts (above level j = buckets > j)."""
        if self._hist is not None and self._hist_above is not None:
            L1, C1 = self.num_levels + 1, self.num_labels + 1
            hist = self._hist.cpu().view(self.units, L1, C1)
            hist_above = self._hist_above.cpu().view(self.units, L1)
            self._hist = self._hist_above = None
            L = self.num_levels
            # buckets above level j = all buckets minus buckets 0..j; a few units at a time (cache-sized)
            for u0 in range(0, self.units, 16):
                h = hist[u0 : u0 + 16]
                self._cooc[u0 : u0 + 16] += (h.sum(1, keepdim=True) - h.cumsum(1))[:, :L, 1:]
            self._above += (hist_above.sum(1, keepdim=True) - hist_above.cumsum(1))[:, :L]
        if self._hist_lb is not None:
            lb, self._hist_lb = self._hist_lb, None
            L = self.num_levels
            for u0 in range(0, self.units, 16):
                h = lb[u0 : u0 + 16]  # units, C + 1, L + 1
                self._cooc[u0 : u0 + 16] += (h.sum(2, keepdim=True) - h.cumsum(2))[:, 1:, :L].transpose(1, 2)
            every = lb.sum(1)  # units, L + 1: one label head, so every pixel once
            self._above += (every.sum(1, keepdim=True) - every.cumsum(1))[:, :L]

    def _pending(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._hist is None or self._hist_above is None:
            L1, C1 = self.num_levels + 1, self.num_labels + 1
            self._hist = torch.zeros(self.units * L1 * C1, dtype=torch.int64, device=device)
            self._hist_above = torch.zeros(self.units * L1, dtype=torch.int64, device=device)
        return self._hist, self._hist_above

    def _table_on(self, device: torch.device) -> LevelTable:
        """The bucket lookup table of all units' levels, built once per device."""
        if self._table is None or self._table.levels.device != device:
            self._table = LevelTable(self._levels_on(device))
        return self._table

    def _levels_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._dev_levels:
            self._dev_levels[device] = self.levels.to(device)
        return self._dev_levels[device]

    def update(self, acts: torch.Tensor, seg: torch.Tensor, *, sink: PixelSink | None = None,
               count: bool = True, path_levels: torch.Tensor | None = None) -> None:
        """Fold in raw layer outputs ``acts`` (n x U x h x w) and labels ``seg`` (n x K x H x W).

        ``sink`` also receives every pixel above a unit's lowest level (per-sample
        statistics); ``count=False`` feeds only the sink and leaves the counts unchanged.
        ``path_levels`` (U,): the lowest levels that choose the path and, on the block path,
        the cells upsampled (default: this counter's own). The paths upsample with different
        float arithmetic, and the block path's matrix product can round a row differently
        when it has other rows beside it; so a second sweep over the same batch (the label
        statistics at the chosen levels) passes the counting pass's lowest levels, and
        every pixel gets the value its counts were made from.
        """
        n, _, h, w = acts.shape
        H, W = seg.shape[-2:]
        labels = seg.long()
        self._sink, self._count = sink, count
        if count:
            valid = labels >= 0
            self.area += torch.bincount(labels[valid].flatten().cpu(), minlength=self.num_labels)[: self.num_labels]
            self.pixels += n * H * W
        s = H // h
        block = s * h == H and s * w == W and s >= 1
        levels = self._levels_on(acts.device)
        acts = acts.float()
        if block:
            padded = F.pad(acts, (1, 1, 1, 1), mode="replicate")  # n, U, h+2, w+2
            hot = padded > levels[None, :, 0, None, None]
            decide = hot if path_levels is None else hot | (padded > path_levels.to(acts.device)[None, :, None, None])
            # The block path wins when few cells can exceed the lowest level.
            if bool(decide[..., 1:-1, 1:-1].float().mean() < 0.25):
                # few cells can pass: one sweep over all units keeps the op count low
                self._count_sparse(padded, decide, labels, levels, 0, s)
                return
        for start in range(0, self.units, self.unit_chunk):
            stop = min(start + self.unit_chunk, self.units)
            self._count_dense(acts[:, start:stop], labels, levels[start:stop], start, (H, W))

    def _accumulate(self, unit_local: torch.Tensor, bucket: torch.Tensor, lab: torch.Tensor, start: int,
                    span: int) -> None:
        """Add pixels given per pixel: unit (0..span-1), bucket (#levels below its value) and labels (P, K).

        One histogram over (unit, bucket, label + 1) per label head; slot 0 is "no label",
        so the k=0 histogram summed over slots gives the pixels above each level.
        """
        L1, C1 = self.num_levels + 1, self.num_labels + 1
        if not self._count:
            return
        hist, hist_above = self._pending(unit_local.device)
        unit_bucket = (unit_local + start) * L1 + bucket
        hist_above.index_add_(0, unit_bucket, torch.ones_like(unit_bucket))
        base = unit_bucket * C1
        for k in range(lab.shape[1]):
            idx = base + (lab[:, k] + 1).clamp(min=0)
            hist.index_add_(0, idx, torch.ones_like(idx))

    def _compiled(self, src: torch.Tensor, axes: kernels.Axes | None, size: tuple[int, int], labels: torch.Tensor,
                  start: int) -> bool:
        """Count a dense chunk with the compiled loops (:mod:`gdx.kernels`); False: not handled here.

        ``src`` is the chunk's layer output with ``axes`` (upsampled in the loops) or its
        upsampled values (n, span, H, W) with ``axes`` None.
        """
        span = src.shape[1]
        if self._sink is None and self._count and labels.shape[1] == 1:
            if self._kernel_table is None:
                self._kernel_table = kernels.CompiledTable(self._table_on(src.device))
            if self._hist_lb is None:
                self._hist_lb = torch.zeros(self.units, self.num_labels + 1, self.num_levels + 1, dtype=torch.int64)
            slots = (labels[:, 0].flatten(1) + 1).clamp_(min=0)  # n, H*W: histogram slot 0 = no label
            self._kernel_table.count(src, axes, size, slots, start, self._hist_lb)
            return True
        one_level = getattr(self._sink, "count_one_level", None)
        if one_level is not None and not self._count and self.num_levels == 1:
            one_level(src, axes, size, self.levels[:, 0], (start, start + span))
            return True
        return False

    def _count_dense(self, chunk: torch.Tensor, labels: torch.Tensor, lv: torch.Tensor, start: int,
                     size: tuple[int, int]) -> None:
        n, span = chunk.shape[:2]
        L1, C1 = self.num_levels + 1, self.num_labels + 1
        if kernels.available(chunk):
            axes = kernels.bilinear_axes(tuple(chunk.shape), size)
            if axes is not None and self._compiled(chunk, axes, size, labels, start):
                return  # upsampled inside the compiled loops
        up = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False).flatten(2)  # n, span, H*W
        if kernels.available(up) and self._compiled(up.view(n, span, *size), None, size, labels, start):
            return
        # #levels below each value, computed in place: idx = bucket * C1 + unit * L1 * C1 + label + 1
        idx = self._table_on(chunk.device).dense(up, start)
        del up
        if self._sink is not None:
            step = max(1, (1 << 22) // max(1, span * idx.shape[2]))  # a few samples at a time: bounded lists
            P = idx.shape[2]
            for i in range(0, n, step):
                part = idx[i : i + step].reshape(-1)
                hit = (part > 0).nonzero().squeeze(1)  # flat (sample, unit, pixel) of the pixels above
                row = torch.div(hit, P, rounding_mode="floor")
                bucket = part.index_select(0, hit).long() if lv.shape[1] > 1 else torch.ones_like(hit)
                self._sink(torch.div(row, span, rounding_mode="floor") + i, row % span, bucket, hit - row * P,
                           (start, start + span))
        if not self._count:
            return
        if span * L1 * C1 >= 1 << 31:
            idx = idx.long()
        idx.mul_(C1)
        unit_term = (torch.arange(span, device=chunk.device, dtype=idx.dtype) * (L1 * C1))[None, :, None]
        for k in range(labels.shape[1]):
            lab_term = (labels[:, k].flatten(1) + 1).clamp(min=0).to(idx.dtype)[:, None, :]  # n, 1, H*W
            full = idx + (unit_term + lab_term) if labels.shape[1] > 1 else idx.add_(unit_term + lab_term)
            hist = torch.bincount(full.flatten(), minlength=span * L1 * C1).view(span, L1, C1)
            pend, pend_above = self._pending(hist.device)
            pend.view(self.units, L1, C1)[start : start + span] += hist
            if k == 0:
                pend_above.view(self.units, L1)[start : start + span] += hist.sum(2)

    def _count_sparse(self, padded: torch.Tensor, hot: torch.Tensor, labels: torch.Tensor, lv: torch.Tensor,
                      start: int, s: int) -> None:
        """Integer scale ``s``: upsample only the dual cells whose corners can pass the lowest level.

        Bilinear values inside a cell never exceed its largest corner, so cells whose
        corners are all below the lowest level hold no pixel that counts. ``padded`` is
        the layer output with a one-cell replicate border, ``hot`` where it exceeds the
        unit's lowest level; only the active cells' corners are gathered.
        """
        n, span, h2, w2 = padded.shape
        h, w = h2 - 2, w2 - 2
        H, W = h * s, w * s
        low = lv[:, 0]
        active = hot[..., :-1, :-1] | hot[..., :-1, 1:] | hot[..., 1:, :-1] | hot[..., 1:, 1:]
        if not bool(active.any()):
            return
        where = active.nonzero()  # A x (i, u, a, b)
        flat = padded.reshape(-1)
        corner00 = ((where[:, 0] * span + where[:, 1]) * h2 + where[:, 2]) * w2 + where[:, 3]
        corners = torch.stack([flat[corner00], flat[corner00 + 1], flat[corner00 + w2], flat[corner00 + w2 + 1]], 1)
        vals = corners @ self._block_weights(s, padded.device)  # A, s*s
        ss = s * s
        off = -((s + 1) // 2)
        # the border cells reach past the image: their outside pixels can never count
        border = (where[:, 2] == 0) | (where[:, 2] == h) | (where[:, 3] == 0) | (where[:, 3] == w)
        if bool(border.any()):
            rows, cols = self._inside(s, h, off, padded.device), self._inside(s, w, off, padded.device)
            b = border.nonzero().squeeze(1)
            ok = (rows[where[b, 2]][:, :, None] & cols[where[b, 3]][:, None, :]).view(len(b), ss)
            vals[b] = vals[b].masked_fill(~ok, float("-inf"))
        u_cell = where[:, 1]
        hit = (vals > low[u_cell][:, None]).view(-1).nonzero().squeeze(1)  # P: cell * s*s + pixel
        cell = torch.div(hit, ss, rounding_mode="floor")
        pix = hit - cell * ss
        v = vals.view(-1).index_select(0, hit)
        u = u_cell.index_select(0, cell)
        # flat (sample, y, x) of each pixel: its cell's top-left pixel plus the pixel's offset
        cell_base = (where[:, 0] * H + where[:, 2] * s + off) * W + where[:, 3] * s + off  # A
        flat_pos = cell_base.index_select(0, cell) + self._pixel_offsets(s, W, padded.device).index_select(0, pix)
        K = labels.shape[1]
        lab = labels.permute(0, 2, 3, 1).reshape(-1, K).index_select(0, flat_pos)  # P, K
        # one level (the label statistics' sweep): every pixel kept is above it
        bucket = self._table_on(padded.device).ragged(v, u) if lv.shape[1] > 1 else torch.ones_like(u)
        if self._sink is not None:
            sample = torch.div(flat_pos, H * W, rounding_mode="floor")
            self._sink(sample, u, bucket, flat_pos - sample * (H * W), (start, start + span))
        self._accumulate(u, bucket, lab, start, span)

    _inside_cache: ClassVar[dict[tuple[int, int, int, str], torch.Tensor]] = {}

    @classmethod
    def _inside(cls, s: int, h: int, off: int, device: torch.device) -> torch.Tensor:
        """(h+1, s) bool: pixel ``r`` of dual-cell row ``a`` lies inside the image (0 <= a*s + r + off < h*s)."""
        key = (s, h, off, str(device))
        if key not in cls._inside_cache:
            y = torch.arange(h + 1, device=device)[:, None] * s + torch.arange(s, device=device)[None, :] + off
            cls._inside_cache[key] = (y >= 0) & (y < h * s)
        return cls._inside_cache[key]

    _offsets_cache: ClassVar[dict[tuple[int, int, str], torch.Tensor]] = {}

    @classmethod
    def _pixel_offsets(cls, s: int, row_stride: int, device: torch.device) -> torch.Tensor:
        key = (s, row_stride, str(device))
        if key not in cls._offsets_cache:
            j = torch.arange(s * s, device=device)
            cls._offsets_cache[key] = (j // s) * row_stride + j % s
        return cls._offsets_cache[key]

    _weights_cache: ClassVar[dict[tuple[int, str], torch.Tensor]] = {}

    @classmethod
    def _block_weights(cls, s: int, device: torch.device) -> torch.Tensor:
        """(4, s*s) bilinear weights of the corners (00, 01, 10, 11) for each pixel of a dual cell."""
        key = (s, str(device))
        if key not in cls._weights_cache:
            off = -((s + 1) // 2)
            f = (off + torch.arange(s, dtype=torch.float32, device=device) + 0.5) / s + 0.5
            fy, fx = f[:, None], f[None, :]
            w = torch.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx])  # 4, s, s
            cls._weights_cache[key] = w.reshape(4, s * s)
        return cls._weights_cache[key]

    def merge(self, other: "LevelCounts") -> None:
        if not torch.equal(self.levels, other.levels):
            raise ValueError("cannot merge counts taken at different levels")
        self.above += other.above
        self.cooc += other.cooc
        self.area += other.area
        self.pixels += other.pixels

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"levels": self.levels, "above": self.above, "cooc": self.cooc, "area": self.area,
                "pixels": self.pixels}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.levels = state["levels"].clone()
        self.above, self.cooc = state["above"].clone(), state["cooc"].clone()
        self.area, self.pixels = state["area"].clone(), state["pixels"].clone()
        self._dev_levels.clear()
        self._table = self._kernel_table = None


def iou_from_counts(above: torch.Tensor, cooc: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
    """IoU at every level: cooc / (above + area - cooc); shapes (U,L), (U,L,C), (C,) -> (U,L,C)."""
    union = above[..., None] + area - cooc
    return (cooc.double() / union.clamp(min=1).double()).float()


def iqr_from_counts(above: torch.Tensor, cooc: torch.Tensor, area: torch.Tensor, pixels: int) -> torch.Tensor:
    """Information quality ratio I(A;B)/H(A,B) of the 2x2 table (r > t) vs (label c), (U,L,C).

    With the joint cells p_ab and marginals, I = H(A) + H(B) - H(A,B).
    """
    if above.shape[0] > 16:  # element-wise: a few units at a time keep the float64 temporaries in cache
        return torch.cat([iqr_from_counts(above[u : u + 16], cooc[u : u + 16], area, pixels)
                          for u in range(0, above.shape[0], 16)])
    n = float(pixels)
    p11 = cooc.double() / n
    pa1 = above.double()[..., None] / n
    pb1 = area.double() / n
    p10 = (pa1 - p11).clamp(min=0)
    p01 = (pb1 - p11).clamp(min=0)
    p00 = (1.0 - pa1 - pb1 + p11).clamp(min=0)

    def h(*ps: torch.Tensor) -> torch.Tensor:
        return -sum(torch.special.xlogy(p, p) for p in ps)

    joint = h(p11, p10, p01, p00)
    mi = h(pa1, 1 - pa1) + h(pb1, 1 - pb1) - joint
    return (mi / joint.clamp(min=1e-300)).clamp(min=0).float()


def log_fractions(count: int = 100, low: float = 1e-3) -> torch.Tensor:
    """``count`` top fractions, log-spaced from 1 down to ``low`` (descending)."""
    return torch.logspace(0.0, math.log10(low), count, dtype=torch.float64)
