"""Find and switch off the units that cause visual artifacts (docs/method.md, "Repair").

The paper found artifact units in a bedroom ProGAN by hand; here they are found
automatically, in three stages that keep the search honest:

1. **Rank** (search split): every candidate unit is ablated on its own on ``samples``
   samples of ``seed`` and the image-quality score is measured.
2. **Choose** (same split): ``method="greedy"`` grows a set from the ``top`` best-ranked
   units, each step adding the unit that improves the score most, and stops when the
   best step's gain is within ``min_z`` bootstrap standard deviations of no change
   (a gain that size is noise, and accepting it is how a search overfits);
   ``method="prefix"`` takes the best prefix of the ranking under the same rule.
3. **Confirm** (held-out split): the set is measured on ``held_out`` samples of another
   seed (against ``held_out_real`` when given, a disjoint real set), with a paired
   bootstrap interval over samples of the relative improvement; the repair is
   *confirmed* only when that interval excludes zero. Random sets of the same size
   (``control_draws``) and an independent second score (``check``) are measured on the
   same held-out samples, and with a ``segmenter`` the label distribution too (a repair
   that deletes whole concepts can win a score; the total-variation distance to the real
   labels shows it).

The metric must give per-image values (``sample_values(images) -> N x D`` and
``score_values(values) -> float``), as :class:`FrechetDistance` and
:class:`RealismScore` do: the bootstrap resamples those rows.

>>> fd = FrechetDistance(segmenter_features(seg))
>>> rep = gdx.find_artifact_units(gen, "layer5", metric=fd, real=real_images, top=20)
>>> rep.held_out_before, rep.held_out_after, rep.interval, rep.confirmed
>>> fixed = rep.apply(gen)                       # a copy of gen with the units zeroed
>>> gdx.load_generator("scene", ablate=rep.ablate)   # the same repair, by option
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from gdx.ablation import UnitAblation
from gdx.errors import RepairError
from gdx.interfaces import Generator, Segmenter
from gdx.repair.measure import (
    Split,
    bootstrap_interval,
    bootstrap_sd,
    check_per_sample,
    gain,
    paired_sd,
    real_label_distribution,
    total_variation,
    with_reference,
)
from gdx.results import JsonResult
from gdx.sampling import layer_output
from gdx.tracing import LayerAddress, LayerHooks, resolve_layers


@dataclasses.dataclass
class ArtifactRepair(JsonResult):
    """Units whose ablation improves image quality, with the evidence.

    ``scores[i]``: gain of the metric when ``candidates[i]`` alone is ablated on the
    search samples (positive = better, in the metric's units). ``units``: the chosen set,
    in the order it was grown; ``path[k]``: the search score with ``units[:k + 1]`` off.
    ``before``/``after``: the metric on the search samples without/with ``units``;
    ``noise``: the bootstrap standard deviation of ``before`` (its run-to-run spread at
    this sample size). ``held_out_before``/``held_out_after``: the same on held-out
    samples of ``held_out_seed``; ``interval``: the ``level`` bootstrap interval of the
    held-out relative improvement ``gain / |held_out_before|``; ``confirmed``: its lower
    end is above zero. ``control``: held-out relative improvements of random unit sets
    of the same size, one per draw. ``check``: the second score on the held-out samples
    (``name``, ``before``, ``after``, ``low``, ``high``: the interval of its relative
    improvement, positive = better). ``label_tv``: total-variation distance of the
    segmented held-out samples' label distribution to the real images', before and after.
    """

    layer: str
    metric: str
    higher_is_better: bool
    candidates: list[int]
    scores: list[float]
    units: list[int]
    before: float
    after: float
    held_out_before: float
    held_out_after: float
    confirmed: bool
    samples: int
    seed: int
    held_out: int
    held_out_seed: int
    method: str = "greedy"
    path: list[float] = dataclasses.field(default_factory=list)
    noise: float = 0.0
    interval: list[float] = dataclasses.field(default_factory=list)
    level: float = 0.95
    control: list[float] = dataclasses.field(default_factory=list)
    check: dict[str, Any] = dataclasses.field(default_factory=dict)
    label_tv: list[float] = dataclasses.field(default_factory=list)

    _kind = "artifact_repair"

    @property
    def ablate(self) -> str:
        """The generator option that applies this repair: ``ablate=<this>`` ("" when no unit was chosen)."""
        return str(UnitAblation({self.layer: tuple(self.units)})) if self.units else ""

    @property
    def improvement(self) -> float:
        """Held-out relative improvement (positive = better), e.g. 0.12 for 12%."""
        return gain(self.held_out_before, self.held_out_after, self.higher_is_better) / abs(self.held_out_before)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["ablate"] = self.ablate  # read by the generator option `ablate=repair.json`
        return out

    def ranking(self) -> list[tuple[int, float]]:
        """(unit, improvement) pairs, best first."""
        return sorted(zip(self.candidates, self.scores), key=lambda t: (-t[1], t[0]))

    def apply(self, generator: Generator, *, inplace: bool = False, mode: str = "hook") -> Generator:
        """A generator with ``units`` of ``layer`` switched off for good.

        ``mode="hook"`` (any layer): a forward hook on the layer zeroes the units; it
        lives as long as the module (the weights are unchanged, so re-apply the saved
        result after reloading weights, or load the generator with ``ablate=``). Remove
        it with ``generator.gdx_repair_handle.remove()``. ``mode="weights"``: when the
        layer is an ``nn.Conv2d``, ``nn.ConvTranspose2d`` or ``nn.Linear``, zero the units'
        output weights and biases, so the edit survives ``state_dict()``. The original
        generator is left alone unless ``inplace``.
        """
        target = generator if inplace else copy.deepcopy(generator)
        module = resolve_layers(target, self.layer)[self.layer]
        units = torch.tensor(self.units, dtype=torch.long)
        if mode == "weights":
            if LayerAddress.parse(self.layer).first is not None and int(target.steps_per_image) > 1:
                raise RepairError(
                    f"layer {self.layer!r} is a block at some steps, but zeroed weights act at every step "
                    f"of the {target.steps_per_image}: use mode='hook' (or the generator option ablate=)"
                )
            _zero_output_weights(module, units, self.layer)
            return target
        if mode != "hook":
            raise RepairError(f"unknown mode {mode!r}: use 'hook' or 'weights'")

        def zero_units(_layer: str, out: torch.Tensor, _call: int) -> torch.Tensor:
            out = out.clone()
            out[:, units.to(out.device)] = 0
            return out

        # LayerHooks counts calls for a step address (blk@0-4); its remove() undoes the edit
        target.gdx_repair_handle = LayerHooks(target, {self.layer: zero_units}).install()  # type: ignore[attr-defined]
        return target


def _zero_output_weights(module: nn.Module, units: torch.Tensor, layer: str) -> None:
    with torch.no_grad():
        if isinstance(module, nn.ConvTranspose2d):
            module.weight[:, units] = 0
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            module.weight[units] = 0
        else:
            raise RepairError(
                f"layer {layer!r} is a {type(module).__name__}; mode='weights' needs a Conv2d, ConvTranspose2d "
                "or Linear layer whose output is the edited tensor. Use mode='hook', or name the conv inside it."
            )
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias[units] = 0


def find_artifact_units(
    generator: Generator,
    layer: str,
    *,
    metric: Any,
    real: torch.Tensor | Iterable[torch.Tensor] | None = None,
    held_out_real: torch.Tensor | Iterable[torch.Tensor] | None = None,
    samples: int = 1000,
    seed: int = 0,
    held_out: int = 1000,
    held_out_seed: int | None = None,
    top: int = 20,
    method: str = "greedy",
    min_z: float = 1.0,
    candidates: Sequence[int] | None = None,
    check: Any = None,
    segmenter: Segmenter | None = None,
    control_draws: int = 0,
    bootstrap: int = 1000,
    level: float = 0.95,
    batch_size: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ArtifactRepair:
    """Search units whose ablation improves ``metric`` on one split; confirm on a disjoint one.

    ``metric``: a quality metric with per-image values — :class:`FrechetDistance` (needs
    ``real`` images, or a reference already set) or :class:`RealismScore` (a
    discriminator; no real data). ``held_out_real``: real images for the held-out
    reference (default: the same as ``real``; a disjoint set keeps the confirmation
    honest). Lower-is-better metrics are negated so that a positive score always means
    "ablating helps". ``candidates`` restricts the units tried (default: all);
    ``top`` caps the set. A step of the search is taken only when its gain exceeds
    ``min_z`` bootstrap standard deviations of the paired change (``min_z=0``: any gain).
    ``check``: a second per-image metric measured on the held-out samples (e.g. a
    realism critic). ``segmenter``: measure the label distribution (needs ``real`` as
    a tensor or batches). ``control_draws``: random unit sets of the same size measured
    on the held-out samples. See the module docstring for the stages.
    """
    if method not in ("greedy", "prefix"):
        raise RepairError(f"unknown method {method!r}: use 'greedy' or 'prefix'")
    if samples < 2 or held_out < 2:
        raise RepairError(f"samples and held_out must be at least 2 (a Fréchet distance needs a covariance); "
                          f"got samples={samples}, held_out={held_out}")
    check_per_sample(metric, "metric")
    if check is not None:
        check_per_sample(check, "check")
    real_list = None if real is None else ([real] if isinstance(real, torch.Tensor) else list(real))
    held_list = None if held_out_real is None else (
        [held_out_real] if isinstance(held_out_real, torch.Tensor) else list(held_out_real))
    if real_list is not None:
        search_metric = with_reference(metric, real_list)
    elif getattr(metric, "reference", "n/a") is None:
        raise RepairError(
            "FrechetDistance needs real images: pass real=<N x 3 x H x W tensor or batches>, "
            "or use RealismScore(discriminator) when there is no real data"
        )
    else:
        search_metric = metric
    held_metric = with_reference(search_metric, held_list) if held_list is not None else search_metric
    higher = bool(getattr(search_metric, "higher_is_better", False))
    held_out_seed = seed + 1 if held_out_seed is None else held_out_seed
    if held_out_seed == seed:
        raise RepairError(f"held_out_seed equals seed ({seed}): the held-out samples must be other samples")
    z0 = generator.sample_latents(1, seed=seed).to(generator.device)
    with torch.no_grad():
        n_units = layer_output(generator, layer, z0).shape[1]
    cand = list(range(n_units)) if candidates is None else [int(u) for u in candidates]
    if not cand or any(not 0 <= u < n_units for u in cand):
        raise RepairError(f"candidates must be units of {layer!r} (0..{n_units - 1}); got {cand[:10]}")
    score = search_metric.score_values
    search = Split(generator, layer, [search_metric], samples, seed, batch_size)

    def say(text: str) -> None:
        if progress:
            progress(text)

    base = search.values([])[0]
    before = score(base)
    noise = bootstrap_sd(score, base, 200, seed)
    scores = []
    for i, u in enumerate(cand):
        if i % 16 == 0:
            say(f"ablating unit {u} alone ({i + 1}/{len(cand)})")
        scores.append(gain(before, score(search.values([u])[0]), higher))
    order = sorted(range(len(cand)), key=lambda i: (-scores[i], cand[i]))
    shortlist = [cand[i] for i in order[:top] if scores[i] > 0]

    def significant(current: torch.Tensor, new: torch.Tensor) -> bool:
        step = gain(score(current), score(new), higher)
        if step <= 0:
            return False
        if min_z <= 0:
            return True
        sd = paired_sd(score, current, new, higher, seed)
        return step > min_z * sd

    units: list[int] = []
    path: list[float] = []
    current = base
    if method == "prefix":
        for k in range(1, len(shortlist) + 1):
            say(f"prefix of {k} units")
            new = search.values(shortlist[:k])[0]
            if significant(current, new):
                units, current = shortlist[:k], new
                path.append(score(new))
    else:
        while len(units) < len(shortlist):
            say(f"greedy step {len(units) + 1}: trying {len(shortlist) - len(units)} units")
            tried = [(u, search.values(units + [u])[0]) for u in shortlist if u not in units]
            u_best, v_best = max(tried, key=lambda t: gain(before, score(t[1]), higher))
            if not significant(current, v_best):
                break
            units, current = units + [u_best], v_best
            path.append(score(v_best))
    after = score(current)

    say(f"held-out confirmation on {held_out} samples of seed {held_out_seed}")
    metrics = [held_metric] + ([check] if check is not None else [])
    held = Split(generator, layer, metrics, held_out, held_out_seed, batch_size, segmenter)
    hb = held.values([])
    ha = held.values(units) if units else hb
    held_score = held_metric.score_values
    interval: list[float] = []
    if units:
        _sd, lo, hi = bootstrap_interval(held_score, hb[0], ha[0], higher=higher, draws=bootstrap, level=level,
                                         seed=held_out_seed)
        interval = [lo, hi]
    check_out: dict[str, Any] = {}
    if check is not None:
        c_higher = bool(getattr(check, "higher_is_better", False))
        check_out = {"name": getattr(check, "name", type(check).__name__), "higher_is_better": c_higher,
                     "before": check.score_values(hb[1]), "after": check.score_values(ha[1])}
        if units:
            _sd, lo, hi = bootstrap_interval(check.score_values, hb[1], ha[1], higher=c_higher, draws=bootstrap,
                                             level=level, seed=held_out_seed + 1)
            check_out.update(low=lo, high=hi)
    control = []
    if units and control_draws:
        rng = torch.Generator().manual_seed(seed * 1_000_003 + held_out_seed)
        hb_score = held_score(hb[0])
        for d in range(control_draws):
            say(f"random control {d + 1}/{control_draws}")
            pick = [cand[int(i)] for i in torch.randperm(len(cand), generator=rng)[: len(units)]]
            control.append(gain(hb_score, held_score(held.values(sorted(pick), labels=False)[0]), higher) / abs(hb_score))
    label_tv: list[float] = []
    if segmenter is not None:
        ref = real_label_distribution(segmenter, held_list or real_list)
        label_tv = [total_variation(held.labels[()], ref), total_variation(held.labels[tuple(units)], ref)]
    held_before, held_after = held_score(hb[0]), held_score(ha[0])
    return ArtifactRepair(
        layer=layer,
        metric=getattr(search_metric, "name", type(search_metric).__name__),
        higher_is_better=higher,
        candidates=cand,
        scores=scores,
        units=units,
        before=before,
        after=after,
        held_out_before=held_before,
        held_out_after=held_after,
        confirmed=bool(units) and bool(interval) and interval[0] > 0,
        samples=samples,
        seed=seed,
        held_out=held_out,
        held_out_seed=held_out_seed,
        method=method,
        path=path,
        noise=noise,
        interval=interval,
        level=level,
        control=control,
        check=check_out,
        label_tv=label_tv,
    )
