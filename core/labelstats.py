"""Trust in a unit's label: a spatial-prior null, confidence intervals and significance.

All of it comes from the pass-2 counts, kept per sample for one batch and folded into
exact int64 sums (so shards merge and resumed runs finish bit for bit):

* **Uncertainty.** For a unit at level ``t`` and a label ``c``, sample ``i`` contributes
  ``x_i`` (pixels above ``t`` with label ``c``), ``a_i`` (pixels above ``t``) and ``y_i``
  (pixels with label ``c``); IoU is ``X / (A + Y - X)`` over the sums. Under a Poisson
  bootstrap (every sample weighted by an independent Poisson(1) count) the weighted sums
  have covariance ``sum_i v_i v_i^T`` exactly, with ``v_i = (x_i, a_i, y_i)``; the
  bootstrap variance of IoU (to first order, the delta method) is
  ``sum_i (x_i - IoU * u_i)^2 / U^2`` with ``u_i = a_i + y_i - x_i`` and ``U = sum u_i``.
  :class:`IoUMoments` keeps the second moments that formula needs, at every level, so
  the interval is the infinite-replicate Poisson bootstrap: no replicate noise, no seed.
* **Spatial-prior null.** Sample ``i``'s unit map is paired with the segmentation of
  another sample ``partner(i)`` (a seeded cyclic shift inside fixed blocks of the global
  sample index, see :func:`null_partners`) and counted the same way: the IoU a unit gets
  from *where* it fires rather than *what* it draws.
* **Significance.** A one-sided z-test of "IoU exceeds its null", with the two
  variances added (the shared unit map correlates them positively, so the test errs on
  the conservative side), and a Benjamini-Hochberg cut across units x labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gdx import kernels
from gdx.errors import ControlError
from gdx.interfaces import Generator
from gdx.stats import hash_keys

#: Salt mixed into the run seed for the null's block shifts (independent of other hashes).
NULL_SALT = 0x5EED_0F_4E55


def null_partners(index: torch.Tensor, samples: int, block: int, seed: int) -> torch.Tensor:
    """The sample each global ``index`` is paired with in the spatial-prior null (-1: none).

    Blocks are ``[k * block, (k + 1) * block)`` cut at ``samples``; inside a block of ``s``
    samples, ``partner(i) = b0 + (i - b0 + r_k) mod s`` with a seeded shift
    ``r_k`` in ``1..s-1``: a derangement that depends only on the index, the block size
    and the seed, never on batching order or sharding. A block of one sample has no
    partner (it is left out of the null).
    """
    index = index.to(torch.int64).cpu()
    k = index // block
    b0 = k * block
    size = (samples - b0).clamp(max=block)
    shift = 1 + hash_keys(k, seed ^ NULL_SALT) % (size - 1).clamp(min=1)
    partner = b0 + (index - b0 + shift) % size.clamp(min=1)
    return torch.where(size >= 2, partner, torch.full_like(partner, -1))


class IoUMoments:
    """Exact per-sample second moments of the IoU counts at per-unit levels.

    Shapes: ``cooc``, ``sxx``, ``sxa``, ``sxy``: (U, C, L) (unit, label, level);
    ``say``: (C, U, L); ``above``, ``saa``: (U, L); ``area``, ``syy``: (C,). All int64.
    """

    names = ("cooc", "sxx", "sxa", "sxy", "say", "above", "saa", "area", "syy", "pixels", "samples")
    cooc: torch.Tensor
    sxx: torch.Tensor
    sxa: torch.Tensor
    sxy: torch.Tensor
    say: torch.Tensor
    above: torch.Tensor
    saa: torch.Tensor
    area: torch.Tensor
    syy: torch.Tensor
    pixels: torch.Tensor
    samples: torch.Tensor

    def __init__(self, units: int, levels: int, labels: int) -> None:
        self.units, self.num_levels, self.num_labels = units, levels, labels

    def __getattr__(self, name: str) -> torch.Tensor:
        """The sums are allocated when first used: at every level of a wide layer they take
        gigabytes (5 x U x C x L int64), and a run that takes its statistics in a replay
        sweep at one level never uses the all-level ones it was set up with."""
        if name not in IoUMoments.names or "num_labels" not in self.__dict__:
            raise AttributeError(name)
        self._allocate()
        value: torch.Tensor = self.__dict__[name]
        return value

    def _allocate(self) -> None:
        U, L, C = self.units, self.num_levels, self.num_labels
        z = torch.zeros
        self.cooc, self.sxx, self.sxa, self.sxy = (z(U, C, L, dtype=torch.int64) for _ in range(4))
        self.say = z(C, U, L, dtype=torch.int64)
        self.above, self.saa = z(U, L, dtype=torch.int64), z(U, L, dtype=torch.int64)
        self.area, self.syy = z(C, dtype=torch.int64), z(C, dtype=torch.int64)
        self.pixels = z((), dtype=torch.int64)
        self.samples = z((), dtype=torch.int64)

    def add(self, sample: torch.Tensor, unit: torch.Tensor, bucket: torch.Tensor, label: torch.Tensor,
            area: torch.Tensor, include: torch.Tensor, units: tuple[int, int]) -> None:
        """Fold in the pixels of units ``units[0]..units[1]-1`` above their lowest level, for one batch.

        ``sample`` (P,) local sample 0..n-1, ``unit`` (P,) local to the range, ``bucket`` (P,)
        = #levels below the pixel's value (1..L), ``label`` (P, K) its labels (-1 none);
        ``area`` (n, C) the per-sample label areas; ``include`` (n,) bool, the samples that
        count. Call :meth:`add_areas` once per batch as well.
        """
        n = int(area.shape[0])
        start, stop = units
        U, L, C = stop - start, self.num_levels, self.num_labels
        L1 = L + 1
        if not bool(include.all()):
            keep = include.index_select(0, sample).nonzero().squeeze(1)
            sample, unit, bucket, label = (t.index_select(0, keep) for t in (sample, unit, bucket, label))
            area = area * include[:, None]
        if L == 1:
            self._add_one_level(sample * U + unit, label, area, n, units)
            return
        # per-sample pixels above each level: (n, U, L)
        su = sample * U + unit
        hist = torch.bincount(su * L1 + bucket, minlength=n * U * L1).view(n, U, L1)
        a = hist.sum(2, keepdim=True) - hist.cumsum(2)[..., :L]  # pixels in buckets > j
        # per-sample label co-occurrence, one row per (sample, unit, label) present
        K = label.shape[1]
        lab = label.reshape(-1)
        rsu, rb = su.repeat_interleave(K), bucket.repeat_interleave(K)
        ok = lab >= 0
        rowkey = rsu[ok] * C + lab[ok]
        rb = rb[ok]
        counts = torch.bincount(rowkey, minlength=n * U * C)
        rows = counts.nonzero().squeeze(1)
        compact = torch.full((n * U * C,), -1, dtype=torch.int64, device=rowkey.device)
        compact[rows] = torch.arange(len(rows), device=rowkey.device)
        rh = torch.bincount(compact[rowkey] * L1 + rb, minlength=len(rows) * L1).view(len(rows), L1)
        x = rh.sum(1, keepdim=True) - rh.cumsum(1)[:, :L]  # R, L
        r_sample, r_unit, r_label = rows // (U * C), (rows // C) % U, rows % C
        a_r = a[r_sample, r_unit]  # R, L
        y_r = area[r_sample, r_label][:, None]  # R, 1
        target = (r_unit * C + r_label).cpu()
        for acc, val in ((self.cooc, x), (self.sxx, x * x), (self.sxa, x * a_r), (self.sxy, x * y_r)):
            acc[start:stop].view(U * C, L).index_add_(0, target, val.cpu())
        # float64 is exact here: each product and its batch sum stay far below 2**53
        say = torch.mm(area.double().t(), a.reshape(n, U * L).double()).round().to(torch.int64)
        self.say[:, start:stop] += say.view(C, U, L).cpu()
        self.above[start:stop] += a.sum(0).cpu()
        self.saa[start:stop] += (a * a).sum(0).cpu()

    def _add_one_level(self, su: torch.Tensor, label: torch.Tensor, area: torch.Tensor, n: int,
                       units: tuple[int, int]) -> None:
        """:meth:`add` at one level per unit (every pixel given is above it): dense per-sample counts.

        The same integer sums as the general path, from (sample, unit, label) counts of
        size n x U x C instead of compacted per-level rows.
        """
        start, stop = units
        U, C = stop - start, self.num_labels
        a = torch.bincount(su, minlength=n * U).view(n, U, 1)  # pixels above, per sample and unit
        K = label.shape[1]
        keys = su[:, None] * C + label
        ok = label >= 0
        x = torch.bincount(keys[ok] if K > 1 or not bool(ok.all()) else keys.view(-1),
                           minlength=n * U * C).view(n, U, C)
        self.add_one_level_counts(a, x, area, units)

    def add_one_level_counts(self, a: torch.Tensor, x: torch.Tensor, area: torch.Tensor,
                             units: tuple[int, int]) -> None:
        """Fold in per-sample counts at one level per unit: ``a`` (n, U, 1) pixels above, ``x`` (n, U, C)
        those with each label, ``area`` (n, C) the label areas (zero rows: samples left out)."""
        start, stop = units
        n, U = a.shape[:2]
        y = area[:, None, :]  # n, 1, C
        self.cooc[start:stop, :, 0] += x.sum(0)
        self.sxx[start:stop, :, 0] += (x * x).sum(0)
        self.sxa[start:stop, :, 0] += (x * a).sum(0)
        self.sxy[start:stop, :, 0] += (x * y).sum(0)
        say = torch.mm(area.double().t(), a.reshape(n, U).double()).round().to(torch.int64)
        self.say[:, start:stop, 0] += say
        self.above[start:stop, 0] += a.sum(0)[:, 0]
        self.saa[start:stop, 0] += (a * a).sum(0)[:, 0]

    def add_areas(self, area: torch.Tensor, include: torch.Tensor, pixels_per_sample: int) -> None:
        """Per-sample label areas (n, C) of one batch; ``include`` (n,) the samples that count."""
        area = (area * include[:, None]).cpu()
        self.area += area.sum(0)
        self.syy += (area * area).sum(0)
        self.pixels += int(include.sum()) * pixels_per_sample
        self.samples += int(include.sum())

    def merge(self, other: "IoUMoments") -> None:
        for name in self.names:
            getattr(self, name).add_(getattr(other, name))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.names}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.names:
            setattr(self, name, state[name].clone())
        self.num_levels = int(self.cooc.shape[2])

    def at(self, level_index: torch.Tensor) -> "IoUEstimate":
        """IoU and its Poisson-bootstrap standard error at each unit's level: (U, C) each."""
        units = torch.arange(self.units)
        j = level_index.long().cpu()
        X = self.cooc[units, :, j].double()
        A = self.above[units, j].double()[:, None]
        Y = self.area.double()[None, :]
        union = A + Y - X
        iou = X / union.clamp(min=1)
        sxx, sxa, sxy = (t[units, :, j].double() for t in (self.sxx, self.sxa, self.sxy))
        say = self.say[:, units, j].double().t()
        saa = self.saa[units, j].double()[:, None]
        syy = self.syy.double()[None, :]
        sxu = sxa + sxy - sxx
        suu = saa + syy + sxx + 2 * say - 2 * sxa - 2 * sxy
        var = (sxx - 2 * iou * sxu + iou * iou * suu).clamp(min=0) / union.clamp(min=1) ** 2
        return IoUEstimate(iou=iou, se=var.sqrt(), present=(self.area > 0)[None, :].expand_as(iou))


@dataclass
class IoUEstimate:
    """IoU (U, C), its bootstrap standard error, and which labels occur at all."""

    iou: torch.Tensor
    se: torch.Tensor
    present: torch.Tensor


def confidence_interval(est: IoUEstimate, level: float = 0.95) -> torch.Tensor:
    """Normal interval ``iou +- z * se`` clipped to [0, 1]: (U, C, 2) float32."""
    z = math.sqrt(2.0) * float(torch.special.erfinv(torch.tensor(level, dtype=torch.float64)))
    low = (est.iou - z * est.se).clamp(0, 1)
    high = (est.iou + z * est.se).clamp(0, 1)
    return torch.stack([low, high], -1).float()


def null_pvalues(observed: IoUEstimate, null: IoUEstimate) -> torch.Tensor:
    """One-sided p-value of "IoU exceeds its spatial-prior null": (U, C); NaN for absent labels."""
    diff = observed.iou - null.iou
    sd = (observed.se ** 2 + null.se ** 2).sqrt()
    z = diff / sd.clamp(min=1e-300)
    p = 0.5 * torch.special.erfc(z / math.sqrt(2.0))
    p = torch.where(sd > 0, p, (diff <= 0).double())  # no variation: decided by the sign alone
    return torch.where(observed.present, p, torch.full_like(p, float("nan"))).float()


def benjamini_hochberg(pvalues: torch.Tensor, fdr: float = 0.05) -> torch.Tensor:
    """Rejections (bool, same shape) of the Benjamini-Hochberg step-up at ``fdr``; NaN = untested."""
    flat = pvalues.flatten().double()
    tested = ~torch.isnan(flat)
    p = flat[tested]
    m = len(p)
    out = torch.zeros_like(flat, dtype=torch.bool)
    if m == 0:
        return out.view(pvalues.shape)
    order = torch.argsort(p, stable=True)
    ranks = torch.arange(1, m + 1, dtype=torch.float64)
    passed = (p[order] <= fdr * ranks / m).nonzero()
    if len(passed):
        k = int(passed.max()) + 1
        rejected = torch.zeros(m, dtype=torch.bool)
        rejected[order[:k]] = True
        out[tested] = rejected
    return out.view(pvalues.shape)


class LabelTracker:
    """Per-sample IoU moments of a metric's levels: observed, and against the spatial-prior null.

    A :class:`gdx.stats.PixelSink`: call :meth:`begin` with a batch's labels and null
    partners, then feed it to ``LevelCounts.update(..., sink=tracker)``.
    """

    def __init__(self, units: int, levels: int, labels: int, *, at_level: torch.Tensor | None = None) -> None:
        self.num_labels = labels
        #: (U,) when the moments are kept at one level per unit, the metric's chosen one (its
        #: index among the metric's levels); None when kept at every level.
        self.at_level = at_level
        self.observed = IoUMoments(units, levels, labels)
        self.null = IoUMoments(units, levels, labels)
        self._lab = torch.empty(0, 0, 0, dtype=torch.int64)
        self._area = torch.empty(0, labels, dtype=torch.int64)
        self._partner = torch.empty(0, dtype=torch.int64)
        self._observe = True

    def begin(self, seg: torch.Tensor, partner: torch.Tensor, *, observe: bool = True) -> None:
        """A batch's labels ``seg`` (n, K, H, W) and each sample's partner in it (n,; -1 = none).

        ``observe=False`` adds only the null (a block completed after its samples were counted).
        """
        n = seg.shape[0]
        C = self.num_labels
        lab = seg.long().flatten(2)  # n, K, HW
        valid = lab >= 0
        sample = torch.arange(n, device=lab.device)[:, None, None].expand_as(lab)
        area = torch.bincount((sample * C + lab.clamp(min=0))[valid], minlength=n * C).view(n, C)
        self._lab, self._area, self._observe = lab, area, observe
        self._partner = partner.to(lab.device).long()
        hw = int(lab.shape[2])
        if observe:
            self.observed.add_areas(area, torch.ones(n, dtype=torch.bool, device=lab.device), hw)
        self.null.add_areas(area[self._partner.clamp(min=0)], self._partner >= 0, hw)

    def __call__(self, sample: torch.Tensor, unit: torch.Tensor, bucket: torch.Tensor, pos: torch.Tensor,
                 units: tuple[int, int]) -> None:
        n, K, hw = self._lab.shape
        rows = self._lab.transpose(1, 2).reshape(n * hw, K)  # one row of labels per (sample, pixel)
        if self._observe:
            self.observed.add(sample, unit, bucket, rows.index_select(0, sample * hw + pos), self._area,
                              torch.ones(n, dtype=torch.bool, device=sample.device), units)
        include = self._partner >= 0
        if bool(include.any()):
            other = self._partner.clamp(min=0)
            self.null.add(sample, unit, bucket, rows.index_select(0, other.index_select(0, sample) * hw + pos),
                          self._area[other], include, units)

    def count_one_level(self, src: torch.Tensor, axes: kernels.Axes | None, size: tuple[int, int],
                        level: torch.Tensor, units: tuple[int, int]) -> None:
        """A dense chunk against one level per unit (``level`` (U,)), compiled (see :func:`gdx.kernels.count_one_level`).

        The same sums as feeding every pixel above ``level`` to :meth:`__call__`, counted by
        :func:`gdx.kernels.count_one_level` without listing the pixels.
        """
        start = units[0]
        above, x, x_null = kernels.count_one_level(src, axes, size, self._lab, self._partner, level, start,
                                                   self.num_labels)
        a = above[..., None]
        if self._observe:
            self.observed.add_one_level_counts(a, x, self._area, units)
        include = self._partner >= 0
        if bool(include.any()):
            keep = include[:, None].to(torch.int64)
            self.null.add_one_level_counts(a * keep[..., None], x_null, self._area[self._partner.clamp(min=0)] * keep,
                                           units)

    def merge(self, other: "LabelTracker") -> None:
        if self.at_level is not None or other.at_level is not None:
            raise ValueError(
                "label statistics kept at the chosen levels of a finished run cannot be merged; "
                "merge the shards' counts before choosing levels"
            )
        self.observed.merge(other.observed)
        self.null.merge(other.null)

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"observed.{k}": v for k, v in self.observed.state_dict().items()}
        out.update({f"null.{k}": v for k, v in self.null.state_dict().items()})
        if self.at_level is not None:
            out["at_level"] = self.at_level
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.at_level = state["at_level"].clone() if "at_level" in state else None
        self.observed.load_state_dict({k[len("observed."):]: v for k, v in state.items() if k.startswith("observed.")})
        self.null.load_state_dict({k[len("null."):]: v for k, v in state.items() if k.startswith("null.")})


#: The controls a dissection can run instead of the trained generator.
CONTROLS = ("random-weights",)


def random_weights(generator: Generator, seed: int) -> Generator:
    """A copy of ``generator`` with its parameters re-initialised, seeded (the random-weights control).

    An adapter that defines ``reinitialized(seed) -> Generator`` decides itself. Otherwise
    a deep copy is re-initialised: every sub-module with ``reset_parameters()`` (conv,
    linear, norm layers: PyTorch's own init) calls it under ``torch.manual_seed(seed)``;
    any other parameter (a custom layer's weight) gets a seeded random permutation of its
    own entries, which keeps its scale and destroys what training put in it. Buffers are
    left alone except where ``reset_parameters`` resets them (batch-norm statistics).
    """
    own = getattr(generator, "reinitialized", None)
    if callable(own):
        return own(seed)
    import copy

    try:
        clone = copy.deepcopy(generator)
    except Exception as exc:  # noqa: BLE001 - any failure to copy means the same thing here
        raise ControlError(
            f"`control='random-weights'` needs a copy of generator {generator.name!r}, which failed "
            f"({type(exc).__name__}: {exc}); give the adapter a `reinitialized(seed)` method."
        ) from None
    module = clone.module
    if not any(p.numel() for p in module.parameters()):
        raise ControlError(
            f"generator {generator.name!r} has no parameters (a hand-built model?): `control='random-weights'` "
            "would dissect the same model. Use the control with a trained generator."
        )
    covered: set[int] = set()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
                covered.update(id(p) for p in m.parameters(recurse=False))
    shuffle = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in module.parameters():
            if id(p) not in covered and p.numel() > 1:
                flat = p.detach().flatten()
                p.copy_(flat[torch.randperm(flat.numel(), generator=shuffle).to(flat.device)].view_as(p))
    return clone
