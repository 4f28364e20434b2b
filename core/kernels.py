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

from gdx.buckets import LevelTable


def available(t: torch.Tensor) -> bool:
    """Whether the compiled loops can count ``t`` (a CPU tensor, numba installed, not turned off)."""
    return t.device.type == "cpu" and os.environ.get("GDX_KERNELS", "") != "torch" and _compiled() is not None


#: Filled by :func:`_compiled` (numba objects the loops below call).
_fma32: Any = None
_row: Any = None
_source_rows: Any = None


@functools.cache
def _compiled() -> SimpleNamespace | None:
    """The loops below compiled by numba (imported on first use: ~0.4 s, not at ``import gdx``), or None.

    ``cache=True`` keeps the machine code next to this file (or in numba's user cache
    where that is read-only), so only the first run on a machine compiles (~1 s).
    """
    global _fma32, _row, _source_rows
    try:
        import numba
        from llvmlite import ir
        from numba.extending import intrinsic
    except ImportError:  # pragma: no cover - exercised where numba is absent
        return None

    @intrinsic
    def fma32(typingctx: Any, a: Any, b: Any, c: Any) -> Any:  # pragma: no cover - compiled
        """``a * b + c`` rounded once (LLVM's fma), as torch's own bilinear kernel computes it."""
        sig = numba.types.float32(numba.types.float32, numba.types.float32, numba.types.float32)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            ty = ir.FloatType()
            fn = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty, ty, ty]))
            return builder.call(fn, args)

        return sig, codegen

    def jit(fn: Any) -> Any:
        try:
            return numba.njit(cache=True, nogil=True, boundscheck=False)(fn)
        except RuntimeError:  # no writable cache location (read-only install, no home): compile each run
            return numba.njit(cache=False, nogil=True, boundscheck=False)(fn)

    _fma32 = fma32
    _row = jit(_row_values)
    _source_rows = jit(_blend_source_rows)
    return SimpleNamespace(count_all_levels=jit(_count_all_levels),
                           count_one_level=jit(_count_one_level), upsample=jit(_upsample))


def _blend_source_rows(src: Any, i: int, u: int, axes: Any, hbuf: Any) -> None:  # pragma: no cover - compiled
    """``hbuf`` (h, W): each source row of unit ``u`` of sample ``i`` blended across, as torch does
    it (``fma(x0, w0, x1 * w1)``); every output row is then one blend of two of these."""
    xi0, xi1, xl0, xl1 = axes[4], axes[5], axes[6], axes[7]
    for r in range(hbuf.shape[0]):
        row = src[i, u, r]
        for x in range(hbuf.shape[1]):
            hbuf[r, x] = _fma32(row[xi0[x]], xl0[x], row[xi1[x]] * xl1[x])


def _row_values(src: Any, i: int, u: int, y: int, axes: Any, hbuf: Any, buf: Any) -> Any:  # pragma: no cover
    """Output row ``y`` of unit ``u`` of sample ``i``: read from ``src`` (already upsampled, ``axes``
    None) or blended down from the source rows in ``hbuf`` (:func:`_blend_source_rows`) into ``buf``."""
    if axes is None:
        return src[i, u, y]
    r0 = hbuf[axes[0][y]]
    r1 = hbuf[axes[1][y]]
    a = axes[2][y]
    b = axes[3][y]
    for x in range(buf.shape[0]):
        buf[x] = _fma32(r0[x], a, r1[x] * b)
    return buf


def _upsample(src: Any, axes: Any, out: Any) -> None:  # pragma: no cover - compiled
    """``out`` (n, U, H, W) = the bilinear upsampling of ``src`` (n, U, h, w) (the check against torch)."""
    n, span, H, W = out.shape
    hbuf = np.empty((src.shape[2], W), np.float32)
    for i in range(n):
        for u in range(span):
            _source_rows(src, i, u, axes, hbuf)
            for y in range(H):
                out[i, u, y, :] = _row(src, i, u, y, axes, hbuf, out[i, u, y])


def _count_all_levels(src: Any, axes: Any, H: int, W: int, slots: Any, start: int, levels: Any, lo: Any, scale: Any,
                      before: Any, cells: int, hist: Any) -> None:  # pragma: no cover - compiled
    """hist[start + u, slot, bucket] += 1 for every pixel of every unit (bucket = #levels below it).

    ``src`` (n, span, H, W) float32 upsampled values, or with ``axes`` the layer output
    (n, span, h, w) upsampled here row by row; ``slots`` (n, H*W) int32 histogram slots
    (label + 1, 0 = none); ``hist`` (U, C + 1, L + 1) int64. Label-major, so consecutive
    pixels (mostly one label) hit nearby cells. A pixel's bucket is the table's guess,
    fixed by a local search: exact even where the guess is off.
    """
    n, span = src.shape[0], src.shape[1]
    L = levels.shape[1]
    fcells = np.float32(cells)
    zero = np.float32(0.0)
    buf = np.empty(W, np.float32)
    hbuf = np.empty((src.shape[2], W), np.float32)
    for u in range(span):
        gu = start + u
        lv = levels[gu]
        bf = before[gu]
        h = hist[gu]
        lo_u = lo[gu]
        sc = scale[gu]
        for i in range(n):
            lab = slots[i]
            if axes is not None:
                _source_rows(src, i, u, axes, hbuf)
            for y in range(H):
                row = _row(src, i, u, y, axes, hbuf, buf)
                base = y * W
                for x in range(W):
                    v = row[x]
                    c = min(max((v - lo_u) * sc, zero), fcells)
                    b = bf[np.int32(c)]
                    while b > 0 and lv[b - 1] >= v:
                        b -= 1
                    while b < L and lv[b] < v:
                        b += 1
                    h[lab[base + x], b] += 1


def _count_one_level(src: Any, axes: Any, H: int, W: int, lab: Any, partner: Any, level: Any, start: int,
                     above: Any, x: Any, x_null: Any) -> None:  # pragma: no cover - compiled
    """Per-sample counts of pixels above one level per unit, with their labels and the null's.

    ``above[i, u]`` = #pixels of sample i above unit u's level; ``x[i, u, c]`` those with
    label c (every head); ``x_null[i, u, c]`` those whose pixel has label c in sample
    ``partner[i]`` (skipped where ``partner[i] < 0``). ``lab`` (n, K, H*W) int32, -1 = none;
    ``src``/``axes`` as in :func:`_count_all_levels`.
    """
    n, span = src.shape[0], src.shape[1]
    K = lab.shape[1]
    buf = np.empty(W, np.float32)
    hbuf = np.empty((src.shape[2], W), np.float32)
    for u in range(span):
        t = level[start + u]
        for i in range(n):
            j = partner[i]
            if axes is not None:
                _source_rows(src, i, u, axes, hbuf)
            for y in range(H):
                row = _row(src, i, u, y, axes, hbuf, buf)
                for xx in range(W):
                    if row[xx] > t:
                        p = y * W + xx
                        above[i, u] += 1
                        for k in range(K):
                            c = lab[i, k, p]
                            if c >= 0:
                                x[i, u, c] += 1
                            if j >= 0:
                                c = lab[j, k, p]
                                if c >= 0:
                                    x_null[i, u, c] += 1


Axes = tuple[Any, Any, Any, Any, Any, Any, Any, Any]


@functools.cache
def _axis(size_in: int, size_out: int) -> tuple[Any, Any, Any, Any]:
    """torch's ``align_corners=False`` taps along one axis: source indices i0, i1 and weights w0, w1 (float32)."""
    scale = np.float32(size_in) / np.float32(size_out)
    src = (np.float64(scale) * (np.arange(size_out, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    i1 = i0 + (i0 < size_in - 1)
    return i0, i1, (np.float32(1.0) - w1).astype(np.float32), w1


_checked: dict[tuple[int, ...], bool] = {}


def bilinear_axes(shape: tuple[int, ...], size: tuple[int, int]) -> Axes | None:
    """The taps to upsample a (n, span, h, w) chunk to ``size`` inside the loops, or None.

    Only where the compiled formula gives ``F.interpolate``'s floats bit for bit: checked
    once per shape (and torch thread count, which can change torch's kernel) on random
    values. torch picks its CPU kernel by shape and memory layout (a separable vectorised
    one for small outputs, e.g. 64 x 64, that rounds differently); where the check fails
    the values come from ``F.interpolate`` as before.
    """
    jit = _compiled()
    if jit is None:
        return None
    _, span, h, w = shape
    H, W = size
    axes: Axes = (*_axis(h, H), *_axis(w, W))
    key = (span, h, w, H, W, torch.get_num_threads())
    if key not in _checked:
        probe = torch.randn(2, span, h, w, generator=torch.Generator().manual_seed(0)) * 4
        want = torch.nn.functional.interpolate(probe, size=size, mode="bilinear", align_corners=False)
        got = np.empty((2, span, H, W), np.float32)
        jit.upsample(probe.numpy(), axes, got)
        _checked[key] = bool(torch.equal(torch.from_numpy(got), want))
    return axes if _checked[key] else None


class CompiledTable:
    """A :class:`gdx.buckets.LevelTable`'s arrays as the compiled loops read them.

    The loops use the table only for a first guess and correct it by a local search, so
    torch's table serves as it is (no second table to keep in step).
    """

    def __init__(self, table: LevelTable) -> None:
        self.levels = table.levels.detach().float().cpu().contiguous().numpy()
        self.cells = table.cells
        self.lo = table.lo.float().cpu().contiguous().numpy()
        self.scale = table.scale.float().cpu().contiguous().numpy()
        self.before = table.before.cpu().view(-1, table.stride).contiguous().numpy()
        jit = _compiled()
        assert jit is not None, "check gdx.kernels.available() first"
        self._jit = jit

    def count(self, src: torch.Tensor, axes: Axes | None, size: tuple[int, int], slots: torch.Tensor, start: int,
              hist: torch.Tensor) -> None:
        """Add a chunk's pixels with histogram slots ``slots`` (n, H*W) to ``hist`` (U, C+1, L+1) in place.

        ``src``: the upsampled values (n, span, H, W) with ``axes`` None, or the layer output
        (n, span, h, w) with the taps from :func:`bilinear_axes`.
        """
        self._jit.count_all_levels(_array(src), axes, size[0], size[1], slots.to(torch.int32).contiguous().numpy(),
                                   start, self.levels, self.lo, self.scale, self.before, self.cells, hist.numpy())


def _array(t: torch.Tensor) -> Any:
    return t.detach().float().contiguous().numpy()


def count_one_level(src: torch.Tensor, axes: Axes | None, size: tuple[int, int], labels: torch.Tensor,
                    partner: torch.Tensor, level: torch.Tensor, start: int, num_labels: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (above (n, span), x (n, span, C), x_null (n, span, C)) at one level per unit.

    ``src``/``axes`` as in :meth:`CompiledTable.count` (units ``start..start+span-1``);
    ``labels`` (n, K, H*W) with -1 for none; ``level`` (U,) float32 over all units;
    ``partner`` (n,) the null's sample in this batch (-1: none). int64 counts, as
    :class:`gdx.labelstats.IoUMoments` sums them.
    """
    n, span = src.shape[:2]
    above = torch.zeros(n, span, dtype=torch.int64)
    x = torch.zeros(n, span, num_labels, dtype=torch.int64)
    x_null = torch.zeros(n, span, num_labels, dtype=torch.int64)
    jit = _compiled()
    assert jit is not None, "check gdx.kernels.available() first"
    jit.count_one_level(_array(src), axes, size[0], size[1], labels.to(torch.int32).contiguous().numpy(),
                        partner.to(torch.int64).contiguous().numpy(), level.float().contiguous().numpy(), start,
                        above.numpy(), x.numpy(), x_null.numpy())
    return above, x, x_null
