"""Buckets: for a value of unit u, how many of the unit's levels lie strictly below it.

Pass 2 of a dissection needs this for every upsampled pixel above a unit's lowest level
(and in IQR mode for every pixel): it is the inner loop of the exact counts.
:class:`LevelTable` answers from a per-unit lookup table and searches only the few
values that share a table cell with a level; :func:`affine_buckets` is that search, for
pixels of mixed units. Both equal ``searchsorted(levels[u], v, right=False)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def affine_buckets(v: torch.Tensor, u: torch.Tensor, lv: torch.Tensor) -> torch.Tensor:
    """#levels of unit ``u`` strictly below ``v``, for mixed units, with one 1-D search.

    Each unit's values and levels are mapped by the same increasing affine map into
    its own disjoint interval ``[4u - 0.5, 4u + 1.5]`` (float64, so float32 order is
    kept), which puts all units' levels into one sorted sequence.
    """
    lo = lv[:, 0].double()
    span = (lv[:, -1].double() - lo).clamp(min=1e-30)
    units = torch.arange(lv.shape[0], device=lv.device, dtype=torch.float64)[:, None]
    flat = ((lv.double() - lo[:, None]) / span[:, None] + 4 * units).flatten()  # sorted
    key = ((v.double() - lo[u]) / span[u]).clamp(-0.5, 1.5) + 4 * u.double()
    idx = torch.searchsorted(flat, key, right=False)
    L = lv.shape[1]
    return (idx - u * L).clamp(0, L)


class LevelTable:
    """Per-unit lookup table that turns a value into its bucket (#levels strictly below it).

    A binary search per value (``searchsorted``) costs ~45 ns on this CPU. Instead each
    unit's range [first level, last level] is cut into equal cells (one more cell holds
    everything above the last level) and the table holds how many levels lie in the cells
    before each one. A value's cell comes from the same monotone float32 formula as the
    levels' cells, so every level in an earlier cell is below it and every level in a
    later cell above it: the table is exact for a value whose cell holds no level, and
    only the others (a few percent) are searched. Same result as ``searchsorted(levels[u],
    v, right=False)``, bit for bit (tested on ties, equal levels and float neighbours).
    """

    def __init__(self, levels: torch.Tensor) -> None:
        self.levels = levels  # (U, L) ascending per unit
        U, L = levels.shape
        self.cells = G = int(min(16384, max(1024, 64 * L)))
        self.stride = G + 2
        lo, hi = levels[:, 0], levels[:, -1]
        self.lo = lo
        self.scale = torch.where(hi > lo, (G - 1) / (hi - lo), torch.zeros_like(hi))  # equal levels: one cell
        level_cell = self._cell(levels, lo[:, None], self.scale[:, None]).long()
        per_cell = torch.zeros(U, self.stride, dtype=torch.int64, device=levels.device)
        per_cell[:, 1:].scatter_add_(1, level_cell, torch.ones_like(level_cell))
        self.before = per_cell.cumsum(1).to(torch.int32).view(-1)  # [u * stride + g]: #levels in cells < g

    def _cell(self, x: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return ((x - lo) * scale).clamp_(0, self.cells).to(torch.int32)

    def dense(self, values: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Buckets of ``values`` (n, span, P) of units ``start..start+span-1``: int32, same shape."""
        n, span, P = values.shape
        if self.levels.shape[1] == 1:  # one level: above it or not
            return (values > self.levels[None, start : start + span, :1]).to(torch.int32)
        key = self._cell(values, self.lo[None, start : start + span, None], self.scale[None, start : start + span, None])
        key += (torch.arange(start, start + span, device=values.device, dtype=torch.int32) * self.stride)[None, :, None]
        out = self._lookup(key.view(-1), values.reshape(-1),
                           lambda need: torch.div(need, P, rounding_mode="floor") % span + start)
        return out.view(n, span, P)

    def ragged(self, values: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        """Buckets of ``values`` (P,) of units ``unit`` (P,): int64."""
        if self.levels.shape[1] == 1:
            return (values > self.levels[unit, 0]).long()
        key = self._cell(values, self.lo.index_select(0, unit), self.scale.index_select(0, unit))
        key += unit.to(torch.int32) * self.stride
        return self._lookup(key, values, lambda need: unit.index_select(0, need)).long()

    def _lookup(self, key: torch.Tensor, values: torch.Tensor, unit_of: Callable[[torch.Tensor], torch.Tensor]
                ) -> torch.Tensor:
        out = self.before.index_select(0, key)
        key += 1
        in_cell = self.before.index_select(0, key)
        in_cell -= out  # levels sharing the value's cell: those values need a search
        need = in_cell.nonzero().squeeze(1)
        if need.numel():
            found = affine_buckets(values.index_select(0, need), unit_of(need), self.levels)
            out[need] = found.to(torch.int32)
        return out


def bucketize(values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """#levels strictly below each value, per unit (see :class:`LevelTable`): int32 (n, U, P)."""
    return LevelTable(levels).dense(values)
