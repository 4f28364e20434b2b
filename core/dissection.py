"""Dissection (docs/method.md, "Dissection"): which units of a layer correlate with which concepts.

Two passes over the same latents. Pass 1 runs the generator only up to the layer
(``stop=True``) and keeps a fixed-size, hash-chosen sample of upsampled unit values
plus each unit's top samples; from it come per-unit candidate levels. Pass 2 runs the
generator and the segmenter and counts, exactly, the pixels above every level and
their overlap with every label. IoU and IQR at every level follow from the counts.

Every statistic is bounded in size and mergeable, so a run can be split into shards
(processes, machines, or resumable chunks) whose merged statistics equal one run's:
:class:`DissectionRun` exposes the steps; :func:`dissect` runs them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import torch

from gdx.checks import check_finite, check_images, check_labels, check_stable_segmentation
from gdx.errors import ControlError, LayerAddressError, LayerOutputError, SettingsError
from gdx.interfaces import Generator, LatentRows, Segmenter
from gdx.labelstats import CONTROLS, LabelTracker, confidence_interval, null_pvalues, random_weights
from gdx.manager import PluginRegistry, default_registry
from gdx.passes import CountPass, LevelPass, NullBlocks, upsampler
from gdx.replay import DEFAULT_CACHE_BYTES, ActivationCache
from gdx.results import Dissection, DissectionSettings, UnitLabel
from gdx.scores import DissectionContext, DissectionMetric, LevelBatch
from gdx.stats import LevelCounts, PointSample, TopSamples
from gdx.sampling import segment_images
from gdx.tracing import LayerAddress, Trace, resolve_layers

DEFAULT_BATCH_SIZE = 8


@dataclass
class Probe:
    """Shapes learned from one sample: unit count per layer, layer grid, segmentation size."""

    units: dict[str, int]
    grid: dict[str, tuple[int, int]]
    seg_size: tuple[int, int]
    seg_heads: int


@dataclass
class DissectionRun:
    """A dissection split into its steps, for sharded, distributed or resumable runs.

    >>> run = DissectionRun(gen, seg, ["layer4"], samples=1000)
    >>> p1 = run.level_pass(0, 500); p1.merge(run.level_pass(500, 1000))
    >>> p2 = run.count_pass(p1, 0, 500); p2.merge(run.count_pass(p1, 500, 1000))
    >>> [result] = run.results(p1, p2)
    """

    generator: Generator
    segmenter: Segmenter
    layers: list[str]
    samples: int = 1000
    seed: int = 0
    threshold: float | str = 0.99
    batch_size: int | None = None
    device: torch.device | str | None = None
    registry: PluginRegistry | None = None
    sketch_size: int = 16384
    top_k: int = 20
    iou_min: float = 0.05
    iqr_min: float = 0.01
    metric: str | None = None
    progress: bool = False
    control: str | None = None
    label_stats: bool = True  # the null, intervals and p-values (False: only the paper's counts)
    #: Disk budget (bytes) for keeping pass 1's layer outputs and labels so pass 2 replays them
    #: instead of running the models again (see :mod:`gdx.replay`); 0 regenerates everything.
    cache_bytes: int = DEFAULT_CACHE_BYTES
    _cache: ActivationCache | None = field(default=None, init=False, repr=False)
    _probe: Probe | None = field(default=None, init=False, repr=False)
    _first_batch: tuple[dict[str, torch.Tensor], torch.Tensor] | None = field(default=None, init=False, repr=False)
    _latents: LatentRows | None = field(default=None, init=False, repr=False)
    _seg_shape: tuple[int, ...] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        validate_settings(self.samples, self.threshold, self.batch_size)
        if isinstance(self.layers, str):
            self.layers = [self.layers]
        if not self.layers:
            raise SettingsError("no layer given: pass a layer name (see generator.layer_names()).")
        resolve_layers(self.generator, self.layers)  # clear error for a wrong name
        for name in self.layers:
            window = LayerAddress.parse(name)
            if window.is_window:  # one unit at several steps is several distributions: dissect each step
                steps = window.calls()
                raise LayerAddressError(
                    f"layer {name!r} is a window of {len(steps)} steps: dissection reads one step at a time "
                    f"(a unit's activations differ by step). Dissect a step ({window.at(steps[len(steps) // 2]).name}), "
                    f"or several in one run ({', '.join(window.at(k).name for k in steps[:3])}"
                    f"{', ...' if len(steps) > 3 else ''}); windows are for edits.", name
                )
        check_labels(self.segmenter.labels, name=self.segmenter.name)
        self.batch_size = int(self.batch_size or DEFAULT_BATCH_SIZE)
        if isinstance(self.cache_bytes, bool) or not isinstance(self.cache_bytes, int) or self.cache_bytes < 0:
            raise SettingsError(
                f"cache_bytes must be a whole number of bytes >= 0 (0 turns the activation cache off), "
                f"got {self.cache_bytes!r}"
            )
        self.registry = self.registry or default_registry()
        if self.metric is None:
            self.metric = "iqr" if self.threshold == "iqr" else "iou"
        self.registry.info("metric", self.metric)  # unknown metric -> error listing the known
        if self.control is not None:
            if self.control not in CONTROLS:
                raise ControlError(f"unknown control {self.control!r}; known: {', '.join(CONTROLS)} (or None)")
            self.generator = random_weights(self.generator, self.seed)
        if self.device is not None:
            self.generator.to(self.device)
            self.segmenter.to(self.device)
        self.generator.module.eval()

    # -- sampling --------------------------------------------------------------
    @property
    def latents(self) -> torch.Tensor:
        """All ``samples`` latents at once (memory grows with ``samples``; the passes use :meth:`latent_rows`)."""
        return self.latent_rows.rows(0, self.samples)

    @property
    def latent_rows(self) -> LatentRows:
        """The generator's latents, handed out batch by batch (same numbers as ``sample_latents``)."""
        if self._latents is None:
            self._latents = self.generator.latent_rows(self.samples, seed=self.seed)
        return self._latents

    def batches(self, start: int, stop: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(batch number, global sample indices) over ``[start, stop)``."""
        assert self.batch_size is not None
        for b0 in range(start, stop, self.batch_size):
            yield b0 // self.batch_size, torch.arange(b0, min(b0 + self.batch_size, stop))

    def _z(self, index: torch.Tensor) -> torch.Tensor:
        """The latents of a batch of consecutive sample indices (drawn per batch, not all up front)."""
        start, stop = int(index[0]), int(index[-1]) + 1
        if stop - start != len(index):
            raise SettingsError("dissection batches must be runs of consecutive samples")
        return self.latent_rows.rows(start, stop).to(self.generator.device)

    # -- forward passes -------------------------------------------------------------
    def _layer_outputs(
        self, z: torch.Tensor, *, stop: bool, batch: int, index: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        with Trace(self.generator, self.layers, stop=stop) as tr:
            images = self.generator.generate(z)
        acts: dict[str, torch.Tensor] = {}
        for name in self.layers:
            if name not in tr.outputs:
                raise LayerOutputError(
                    f"layer {name!r} did not run during generate(); pick a layer on the path from "
                    "latent to image (see generator.layer_names())."
                )
            a = tr.outputs[name]
            if not isinstance(a, torch.Tensor) or a.ndim != 4:
                shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
                raise LayerOutputError(
                    f"layer {name!r} outputs {shape}; dissection needs a feature map N x U x h x w. "
                    "Pick a convolutional layer (or a sub-module whose output is one)."
                )
            check_finite(f"layer {name!r} activations", a, batch=batch, sample_index=index)
            if self._probe is not None:
                want = (self._probe.units[name], *self._probe.grid[name])
                if tuple(a.shape[1:]) != want:
                    raise LayerOutputError(
                        f"layer {name!r} changed shape at batch {batch} (samples {index[0]}..{index[-1]}): "
                        f"{tuple(a.shape[1:])}, earlier {want}. Dissection needs a fixed layer shape."
                    )
            acts[name] = a
        return acts, (None if stop else images)

    def _segment(self, images: torch.Tensor | None, *, batch: int, index: torch.Tensor) -> torch.Tensor:
        images = check_images(images, n=len(index), batch=batch, sample_index=index)
        seg = segment_images(self.segmenter, images, batch=batch)
        self._seg_shape = check_stable_segmentation(seg, self._seg_shape, batch=batch, name=self.segmenter.name)
        return seg

    def probe(self) -> Probe:
        """Learn layer and segmentation shapes from the first batch (and validate both models).

        The batch is kept, and pass 1 uses it instead of running it again: at a few dozen
        samples a separate probe sample would cost a few percent of the whole run.
        """
        if self._probe is None:
            assert self.batch_size is not None
            index = torch.arange(min(self.batch_size, self.samples))
            with torch.no_grad():
                acts, images = self._layer_outputs(self._z(index), stop=False, batch=0, index=index)
                seg = self._segment(images, batch=0, index=index)
            self._first_batch = (acts, seg)
            self._probe = Probe(
                units={k: int(v.shape[1]) for k, v in acts.items()},
                grid={k: (int(v.shape[2]), int(v.shape[3])) for k, v in acts.items()},
                seg_size=(int(seg.shape[2]), int(seg.shape[3])),
                seg_heads=int(seg.shape[1]),
            )
        return self._probe

    # -- pass 1 ---------------------------------------------------------------------
    def new_level_pass(self) -> LevelPass:
        p = self.probe()
        return LevelPass(
            samples={n: PointSample(p.units[n], p.seg_size, size=self.sketch_size, seed=self.seed,
                                    total_samples=self.samples) for n in self.layers},
            tops={n: TopSamples(p.units[n], self.top_k) for n in self.layers},
        )

    def level_pass(self, start: int = 0, stop: int | None = None, *, state: LevelPass | None = None,
                   on_batch: Callable[[int, int, LevelPass], object] | None = None) -> LevelPass:
        """Pass 1 over samples ``[start, stop)``: generator up to the layers only.

        ``on_batch(batch, samples_done, state)`` is called after each batch (e.g. to checkpoint).
        """
        stop = self.samples if stop is None else stop
        state = state or self.new_level_pass()
        cache = self._activation_cache()
        with torch.no_grad():
            for batch, index in self._progress(self.batches(start, stop), start, stop, "pass 1/2 levels"):
                # While the cache has room, run the whole generator and the segmenter now and
                # keep what pass 2 needs; the layer outputs are the same either way.
                keep = cache.has_room(self._batch_bytes(len(index)))
                first, self._first_batch = self._first_batch, None
                seg: torch.Tensor | None
                if first is not None and int(index[0]) == 0 and len(index) == len(first[1]):
                    acts, seg = first  # the probe ran this very batch
                else:
                    acts, images = self._layer_outputs(self._z(index), stop=not keep, batch=batch, index=index)
                    seg = self._segment(images, batch=batch, index=index) if keep else None
                if keep and seg is not None:
                    cache.put(int(index[0]), int(index[-1]) + 1, acts, seg)
                for name, a in acts.items():
                    state.samples[name].update(a, index)
                    state.tops[name].update(a, index)
                state.seen += len(index)
                if on_batch is not None:
                    on_batch(batch, int(index[-1]) + 1, state)
        return state

    # -- pass 2 ---------------------------------------------------------------------
    def _context(self, name: str) -> DissectionContext:
        return DissectionContext(
            layer=name, units=self.probe().units[name], labels=list(self.segmenter.labels),
            categories=dict(self.segmenter.categories), threshold=self.threshold,
        )

    def new_count_pass(self, levels: LevelPass) -> CountPass:
        assert self.registry is not None and self.metric is not None
        info = self.registry.info("metric", self.metric)
        metrics: dict[str, DissectionMetric] = {}
        for name in self.layers:
            metric = info.factory(self._context(name))
            if not isinstance(metric, DissectionMetric):
                raise SettingsError(f"metric {self.metric!r} is not a dissection metric (kind {getattr(metric, 'kind', '?')!r})")
            fractions = metric.fractions()
            if fractions is not None:
                metric.set_levels(levels.samples[name].quantile_levels(fractions))
                if not self.label_stats:
                    metric.tracker = None
            metrics[name] = metric
        assert self.batch_size is not None
        return CountPass(metrics, null=NullBlocks(self.samples, self.batch_size, self.seed))

    def count_batches(self, start: int, stop: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Pass 2's (batch number, global indices): cut at multiples of ``batch_size``, the null's blocks."""
        assert self.batch_size is not None
        b0 = start
        while b0 < stop:
            b1 = min(stop, (b0 // self.batch_size + 1) * self.batch_size)
            yield b0 // self.batch_size, torch.arange(b0, b1)
            b0 = b1

    def count_pass(self, levels: LevelPass, start: int = 0, stop: int | None = None, *,
                   state: CountPass | None = None,
                   on_batch: Callable[[int, int, CountPass], object] | None = None) -> CountPass:
        """Pass 2 over samples ``[start, stop)``: generator + segmenter, exact counts.

        ``on_batch(batch, samples_done, state)`` is called after each batch (e.g. to checkpoint).
        """
        stop = self.samples if stop is None else stop
        state = state or self.new_count_pass(levels)
        cache = self._activation_cache()
        replay = (self.label_stats and start == 0 and stop == self.samples and state.seen == 0
                  and not state.pending and all(cache.covers(int(i[0]), int(i[-1]) + 1)
                                                for _, i in self.count_batches(start, stop)))
        # Replaying every sample in one process: count first, then take the label statistics
        # at each unit's chosen level only (a second sweep over the cache, no forward pass),
        # instead of at every level while counting. Same integer sums, far less work.
        trackers = {name: m.tracker for name, m in state.metrics.items()} if replay else {}
        for name in trackers:
            state.metrics[name].tracker = None
        with torch.no_grad():
            for batch, index in self._progress(self.count_batches(start, stop), start, stop, "pass 2/2 counts"):
                acts, seg = self._count_inputs(cache, batch, index)
                size = (int(seg.shape[-2]), int(seg.shape[-1]))
                partner = self._local_partners(state, index)
                for name, a in acts.items():
                    state.metrics[name].update(LevelBatch(
                        acts=a, seg=seg, sample_index=index, upsampled=upsampler(a, size), partner=partner,
                    ))
                if state.null is not None and bool((partner < 0).all()) and len(index) < state.null.size(batch):
                    state.add_pending(index, acts, seg)  # a block cut by the shard: its null waits for a merge
                state.seen += len(index)
                if on_batch is not None and not replay:  # a replay is cheap to redo; never checkpoint half of one
                    on_batch(batch, int(index[-1]) + 1, state)
            if replay:
                self._replay_trust(cache, state, [name for name, t in trackers.items() if t is not None])
        if replay:
            cache.close()
        return state

    def _count_inputs(self, cache: ActivationCache, batch: int, index: torch.Tensor
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """A pass-2 batch's layer outputs and labels: from the cache, else from the models."""
        kept = self._replayed(cache, index)
        if kept is not None:
            return kept
        acts, images = self._layer_outputs(self._z(index), stop=False, batch=batch, index=index)
        return acts, self._segment(images, batch=batch, index=index)

    def _replay_trust(self, cache: ActivationCache, state: CountPass, names: list[str]) -> None:
        """Set the label statistics of layers ``names`` at each unit's chosen level, in one sweep of the cache."""
        labels = len(self.segmenter.labels)
        # per layer: the tracker, a counter at the chosen levels, and the counting pass's lowest
        # levels (they pick the upsampling path, so each pixel keeps the value it was counted with)
        work: dict[str, tuple[LabelTracker, LevelCounts, torch.Tensor]] = {}
        for name in names:
            metric = state.metrics[name]
            scores = state.scores[name] = metric.result()
            if scores.level_index is None or metric.levels is None:
                continue
            level_index = scores.level_index.long()
            chosen = metric.levels[torch.arange(metric.levels.shape[0]), level_index][:, None]  # U x 1
            work[name] = (LabelTracker(chosen.shape[0], 1, labels, at_level=level_index), LevelCounts(chosen, labels),
                          metric.levels[:, 0].float())
        if not work:
            return
        for _, index in self.count_batches(0, self.samples):
            kept = self._replayed(cache, index)
            assert kept is not None
            acts, seg = kept
            partner = self._local_partners(state, index)
            for name, (tracker, counter, lowest) in work.items():
                tracker.begin(seg, partner)
                counter.update(acts[name], seg, sink=tracker, count=False, path_levels=lowest)
        for name, (tracker, _, _) in work.items():
            state.metrics[name].tracker = tracker

    def _replayed(self, cache: ActivationCache, index: torch.Tensor
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """A cached batch, on the device the models run on (counting runs where it ran before)."""
        kept = cache.get(int(index[0]), int(index[-1]) + 1)
        if kept is None:
            return None
        device = self.generator.device
        return {k: v.to(device) for k, v in kept[0].items()}, kept[1].to(device)

    def _activation_cache(self) -> ActivationCache:
        if self._cache is None:
            self._cache = ActivationCache(self.cache_bytes)
        return self._cache

    def _batch_bytes(self, n: int) -> int:
        """What ``n`` samples take in the activation cache (float32 layer outputs, int16 labels)."""
        p = self.probe()
        per_sample = sum(p.units[k] * p.grid[k][0] * p.grid[k][1] * 4 for k in self.layers)
        return n * (per_sample + p.seg_heads * p.seg_size[0] * p.seg_size[1] * 2)

    @staticmethod
    def _local_partners(state: CountPass, index: torch.Tensor) -> torch.Tensor:
        """Each sample's null partner as a position in this batch; all -1 for a cut block."""
        if state.null is None:
            return torch.full((len(index),), -1, dtype=torch.int64)
        if len(index) < state.null.size(int(index[0]) // state.null.block):
            return torch.full((len(index),), -1, dtype=torch.int64)
        partner = state.null.partners(index)
        return torch.where(partner >= 0, partner - int(index[0]), partner)

    # -- results --------------------------------------------------------------------
    def results(self, levels: LevelPass, counts: CountPass) -> list[Dissection]:
        from gdx._version import __version__

        out = []
        labels = list(self.segmenter.labels)
        categories = dict(self.segmenter.categories)
        for name in self.layers:
            metric = counts.metrics[name]
            scores = counts.scores.get(name) or metric.result()
            trust = _trust(metric, scores.level_index)
            unit_labels = []
            for u in range(len(scores.best_label)):
                c = int(scores.best_label[u])
                unit_labels.append(UnitLabel(
                    unit=u, label=labels[c], iou=float(scores.iou[u, c]),
                    iqr=None if scores.iqr is None else float(scores.iqr[u, c]),
                    category=categories.get(labels[c]),
                    iou_ci=None if trust is None else (float(trust[0][u, c, 0]), float(trust[0][u, c, 1])),
                    null_iou=None if trust is None else float(trust[1][u, c]),
                    pvalue=None if trust is None else float(trust[2][u, c]),
                ))
            lc = metric.counts
            settings = DissectionSettings(
                generator=self.generator.name, segmenter=self.segmenter.name, layer=name,
                samples=self.samples, seed=self.seed, threshold=self.threshold,
                batch_size=int(self.batch_size or 0), iou_min=self.iou_min, iqr_min=self.iqr_min,
                sketch_size=self.sketch_size, top_k=self.top_k, metric=str(self.metric), gdx_version=__version__,
                control=self.control,
            )
            fr = metric.fractions()
            out.append(Dissection(
                layer=name, labels=labels, categories=categories, iou=scores.iou, thresholds=scores.thresholds,
                unit_labels=unit_labels, top_indices=levels.tops[name].indices, top_values=levels.tops[name].values,
                settings=settings, iqr=scores.iqr, levels=metric.levels,
                fractions=None if fr is None else fr.float(),
                label_fraction=None if lc is None else (lc.area.double() / max(int(lc.pixels), 1)).float(),
                extra=dict(scores.extra),
                iou_ci=None if trust is None else trust[0],
                null_iou=None if trust is None else trust[1],
                pvalue=None if trust is None else trust[2],
            ))
        return out

    def _progress(
        self, it: Iterator[tuple[int, torch.Tensor]], start: int, stop: int, desc: str
    ) -> Iterable[tuple[int, torch.Tensor]]:
        if not self.progress:
            return it
        from tqdm.auto import tqdm

        assert self.batch_size is not None
        total = (stop - start + self.batch_size - 1) // self.batch_size
        return tqdm(it, total=total, desc=desc, unit="batch", leave=False)


def _trust(metric: DissectionMetric, level_index: torch.Tensor | None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(iou_ci U x C x 2, null_iou U x C, pvalue U x C) at each unit's level, or None."""
    tracker = metric.tracker
    if tracker is None or level_index is None or int(tracker.null.samples) == 0:
        return None
    if tracker.at_level is not None:  # kept at the chosen levels only (a replayed run)
        if not torch.equal(tracker.at_level, level_index.long()):
            raise RuntimeError("label statistics were kept at other levels than the metric chose")
        level_index = torch.zeros_like(level_index)
    observed, null = tracker.observed.at(level_index), tracker.null.at(level_index)
    return confidence_interval(observed), null.iou.float(), null_pvalues(observed, null)


def validate_settings(samples: Any, threshold: Any, batch_size: Any) -> None:
    """Raise :class:`GdxError` for a bad ``samples``, ``threshold`` or ``batch_size``."""
    if not isinstance(samples, int) or samples < 1:
        raise SettingsError(f"samples must be a positive integer, got {samples!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise SettingsError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    if threshold == "iqr":
        return
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < float(threshold) < 1:
        raise SettingsError(
            f"threshold must be a quantile strictly between 0 and 1 (e.g. 0.99 = top 1%) or 'iqr', "
            f"got {threshold!r}"
        )


# A str is also a Sequence[str]: the str overload comes first and wins, as dissect checks
# isinstance(layer, str) at run time. mypy flags that intended overlap, hence the ignore.
@overload
def dissect(  # type: ignore[overload-overlap]
    generator: Generator,
    segmenter: Segmenter,
    layer: str,
    *,
    samples: int = 1000,
    batch_size: int | None = None,
    seed: int = 0,
    threshold: float | str = 0.99,
    device: torch.device | str | None = None,
    progress: bool = True,
    registry: PluginRegistry | None = None,
    sketch_size: int = 16384,
    top_k: int = 20,
    metric: str | None = None,
    control: str | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> Dissection: ...


@overload
def dissect(
    generator: Generator,
    segmenter: Segmenter,
    layer: Sequence[str],
    *,
    samples: int = 1000,
    batch_size: int | None = None,
    seed: int = 0,
    threshold: float | str = 0.99,
    device: torch.device | str | None = None,
    progress: bool = True,
    registry: PluginRegistry | None = None,
    sketch_size: int = 16384,
    top_k: int = 20,
    metric: str | None = None,
    control: str | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> list[Dissection]: ...


def dissect(
    generator: Generator,
    segmenter: Segmenter,
    layer: str | Sequence[str],
    *,
    samples: int = 1000,
    batch_size: int | None = None,
    seed: int = 0,
    threshold: float | str = 0.99,
    device: torch.device | str | None = None,
    progress: bool = True,
    registry: PluginRegistry | None = None,
    sketch_size: int = 16384,
    top_k: int = 20,
    metric: str | None = None,
    control: str | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> Dissection | list[Dissection]:
    """Dissect ``layer`` (or a list of layers) of ``generator`` against ``segmenter``.

    ``threshold`` is a quantile ``q`` in (0, 1) (each unit's region is where its upsampled
    map exceeds its q-quantile over all pixels of all samples) or ``"iqr"`` (the paper's
    information-quality-ratio rule). Several layers share the same forward passes.
    Returns one :class:`Dissection` per layer (a single one when ``layer`` is a string).
    Every unit label carries a 95% interval, the IoU of the spatial-prior null and a
    p-value (``Dissection.significant(fdr)``); ``control="random-weights"`` dissects a
    seeded re-initialisation of the generator instead (see :func:`random_weights`).
    ``cache_bytes`` is the disk pass 1 may use to keep layer outputs and labels so pass 2
    replays them (:mod:`gdx.replay`; 0: pass 2 runs the models again); results are the same.

    >>> gen, seg = gdx.load_generator("toy"), gdx.load_segmenter("toy")
    >>> d = gdx.dissect(gen, seg, "features", samples=200, seed=0)
    >>> d.unit_labels[0]
    UnitLabel(unit=0, label='sun', iou=0.8..., iqr=None, category='object')
    """
    run = DissectionRun(
        generator, segmenter, [layer] if isinstance(layer, str) else list(layer), samples=samples, seed=seed,
        threshold=threshold, batch_size=batch_size, device=device, registry=registry,
        sketch_size=sketch_size, top_k=top_k, metric=metric, progress=progress, control=control,
        cache_bytes=cache_bytes,
    )
    levels = run.level_pass()
    counts = run.count_pass(levels)
    results = run.results(levels, counts)
    return results[0] if isinstance(layer, str) else results
