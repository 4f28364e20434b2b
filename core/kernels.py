"""Compiled inner loops of the exact counts (optional: numba), with the same results as torch.

Pass 2 of a dissection buckets every upsampled pixel of every unit and histograms it by
(unit, bucket, label). In eager torch that is five or six full passes over the pixels
(cell index, table lookup, the search for values that share a cell with a level, index
arithmetic, ``bincount``): ~15 ns a pixel-unit, which in IQR mode (every pixel of every
unit, 84 M pixel-units a batch at ProGAN-256 ``layer4``) costs more than the generator.
Here each pixel is read once: its bucket is found from the unit's lookup table and fixed
by a local search (so the table need not match torch's rounding to be exact), and the
histogram cells are incremented in place, unit by unit so a unit's histogram stays in
cache. Same integers as the torch path, bit for bit (tests/test_kernels.py compares
them); used on CPU tensors when numba is installed (``pip install 'gdx[fast]'``),
otherwise the torch path runs. ``GDX_KERNELS=torch`` turns the compiled path off.

The upsampling itself stays ``F.interpolate``: its float rounding (and any FMA contraction
in torch's build) is what the brute-force reference computes, and copying it in another
compiler would risk off-by-one-ulp pixels at the levels.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch


def available(t: torch.Tensor) -> bool:
    """Whether the compiled loops can count ``t`` (a CPU tensor, numba installed, not turned off)."""
    return t.device.type == "cpu" and os.environ.get("GDX_KERNELS", "") != "torch" and _compiled() is not None


@functools.cache
def _compiled() -> SimpleNamespace | None:
    """The loops below compiled by numba (imported on first use: ~0.4 s, not at ``import gdx``), or None.

    ``cache=True`` keeps the machine code next to this file (or in numba's user cache
    where that is read-only), so only the first run on a machine compiles (~1 s).
    """
    try:
        import numba
    except ImportError:  # pragma: no cover - exercised where numba is absent
        return None
    jit = numba.njit(cache=True, nogil=True, boundscheck=False)
    return SimpleNamespace(bucket_table=jit(_bucket_table), count_all_levels=jit(_count_all_levels),
                           count_one_level=jit(_count_one_level))


def _bucket_table(levels: Any, cells: int) -> tuple[Any, Any, Any]:  # pragma: no cover - compiled
    """Per unit: lo, scale and ``before[u, g]`` = #levels in cells < g (cells 0..cells, one past)."""
    U, L = levels.shape
    lo = np.empty(U, np.float32)
    scale = np.empty(U, np.float32)
    before = np.zeros((U, cells + 2), np.int32)
    for u in range(U):
        lo[u] = levels[u, 0]
        hi = levels[u, L - 1]
        scale[u] = np.float32(cells - 1) / (hi - lo[u]) if hi > lo[u] else np.float32(0.0)
        for j in range(L):
            c = (levels[u, j] - lo[u]) * scale[u]
            g = 0 if not c > 0 else (cells if c >= cells else int(c))
            before[u, g + 1] += 1
        for g in range(1, cells + 2):
            before[u, g] += before[u, g - 1]
    return lo, scale, before


def _count_all_levels(up: Any, slots: Any, start: int, levels: Any, lo: Any, scale: Any, before: Any, cells: int,
                      hist: Any) -> None:  # pragma: no cover - compiled
    """hist[start + u, slot, bucket] += 1 for every pixel of every unit (bucket = #levels below it).

    ``up`` (n, span, P) float32 upsampled values; ``slots`` (n, P) int32 histogram slots
    (label + 1, 0 = none); ``hist`` (U, C + 1, L + 1) int64. Label-major, so consecutive
    pixels (mostly one label) hit nearby cells. A pixel's bucket is the table's guess,
    fixed by a local search: exact even where the guess is off.
    """
    n, span, P = up.shape
    L = levels.shape[1]
    fcells = np.float32(cells)
    zero = np.float32(0.0)
    for u in range(span):
        gu = start + u
        lv = levels[gu]
        bf = before[gu]
        h = hist[gu]
        lo_u = lo[gu]
        sc = scale[gu]
        for i in range(n):
            row = up[i, u]
            lab = slots[i]
            for p in range(P):
                v = row[p]
                c = min(max((v - lo_u) * sc, zero), fcells)
                b = bf[np.int32(c)]
                while b > 0 and lv[b - 1] >= v:
                    b -= 1
                while b < L and lv[b] < v:
                    b += 1
                h[lab[p], b] += 1


def _count_one_level(up: Any, lab: Any, partner: Any, level: Any, start: int, above: Any, x: Any,
                     x_null: Any) -> None:  # pragma: no cover - compiled
    """Per-sample counts of pixels above one level per unit, with their labels and the null's.

    ``above[i, u]`` = #pixels of sample i above unit u's level; ``x[i, u, c]`` those with
    label c (every head); ``x_null[i, u, c]`` those whose pixel has label c in sample
    ``partner[i]`` (skipped where ``partner[i] < 0``). ``lab`` (n, K, P) int32, -1 = none.
    """
    n, span, P = up.shape
    K = lab.shape[1]
    for u in range(span):
        t = level[start + u]
        for i in range(n):
            j = partner[i]
            for p in range(P):
                if up[i, u, p] > t:
                    above[i, u] += 1
                    for k in range(K):
                        c = lab[i, k, p]
                        if c >= 0:
                            x[i, u, c] += 1
                        if j >= 0:
                            c = lab[j, k, p]
                            if c >= 0:
                                x_null[i, u, c] += 1


class CompiledTable:
    """The per-unit bucket table of ``levels`` (U, L) for the compiled loops (built once)."""

    def __init__(self, levels: torch.Tensor) -> None:
        self.levels = levels.detach().float().contiguous().numpy()
        self.cells = int(min(16384, max(1024, 64 * self.levels.shape[1])))
        jit = _compiled()
        assert jit is not None, "check gdx.kernels.available() first"
        self._jit = jit
        self.lo, self.scale, self.before = jit.bucket_table(self.levels, self.cells)

    def count(self, up: torch.Tensor, slots: torch.Tensor, start: int, hist: torch.Tensor) -> None:
        """Add ``up`` (n, span, P) with histogram slots ``slots`` (n, P) to ``hist`` (U, C+1, L+1) in place."""
        self._jit.count_all_levels(up.contiguous().numpy(), slots.to(torch.int32).contiguous().numpy(), start,
                                   self.levels, self.lo, self.scale, self.before, self.cells, hist.numpy())


def count_one_level(up: torch.Tensor, labels: torch.Tensor, partner: torch.Tensor, level: torch.Tensor,
                    start: int, num_labels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (above (n, span), x (n, span, C), x_null (n, span, C)) at one level per unit.

    ``up`` (n, span, P) float32 values of units ``start..start+span-1``; ``labels`` (n, K, P)
    with -1 for none; ``level`` (U,) float32 over all units; ``partner`` (n,) the null's
    sample in this batch (-1: none). int64 counts, as :class:`gdx.labelstats.IoUMoments` sums.
    """
    n, span, _ = up.shape
    above = torch.zeros(n, span, dtype=torch.int64)
    x = torch.zeros(n, span, num_labels, dtype=torch.int64)
    x_null = torch.zeros(n, span, num_labels, dtype=torch.int64)
    jit = _compiled()
    assert jit is not None, "check gdx.kernels.available() first"
    jit.count_one_level(up.contiguous().numpy(), labels.to(torch.int32).contiguous().numpy(),
                     partner.to(torch.int64).contiguous().numpy(), level.float().contiguous().numpy(), start,
                     above.numpy(), x.numpy(), x_null.numpy())
    return above, x, x_null
