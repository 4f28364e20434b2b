"""Find and switch off the units that cause visual artifacts (docs/method.md, "Repair").

The paper found artifact units in a bedroom ProGAN by hand; here they are found
automatically: every candidate unit is ablated on its own, the image-quality
metric is measured, units are ranked by how much their removal improves it, the
best prefix of the ranking is chosen on the search samples and then confirmed on
held-out samples of another seed. The result reports quality before/after and can
be applied to the generator as a permanent edit.

>>> fd = FrechetDistance(segmenter_features(seg))
>>> rep = gdx.find_artifact_units(gen, "layer4", metric=fd, real=real_images, top=20)
>>> rep.held_out_before, rep.held_out_after
>>> fixed = rep.apply(gen)          # a copy of gen with the units zeroed
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from gdx.errors import GdxError, RepairError
from gdx.interfaces import Generator, Metric
from gdx.intervention import intervene
from gdx.results import JsonResult
from gdx.sampling import latent_batches, layer_output
from gdx.tracing import resolve_layers


@dataclasses.dataclass
class ArtifactRepair(JsonResult):
    """Units whose ablation improves image quality, with the evidence.

    ``scores[i]``: improvement of the metric when ``candidates[i]`` alone is ablated
    on the search samples (positive = better, in the metric's units). ``units``:
    the chosen set (best prefix of the ranking on the search samples).
    ``before``/``after``: the metric on the search samples without/with ``units``
    ablated; ``held_out_before``/``held_out_after`` the same on held-out samples of
    ``held_out_seed``; ``confirmed`` is True when the held-out figure improved.
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

    _kind = "artifact_repair"

    def ranking(self) -> list[tuple[int, float]]:
        """(unit, improvement) pairs, best first."""
        return sorted(zip(self.candidates, self.scores), key=lambda t: (-t[1], t[0]))

    def apply(self, generator: Generator, *, inplace: bool = False, mode: str = "hook") -> Generator:
        """A generator with ``units`` of ``layer`` switched off for good.

        ``mode="hook"`` (any layer): a forward hook on the layer zeroes the units; it
        lives as long as the module (the weights are unchanged, so re-apply the saved
        result after reloading weights). Remove it with ``generator.gdx_repair_handle.remove()``.
        ``mode="weights"``: when the layer is an ``nn.Conv2d``, ``nn.ConvTranspose2d`` or
        ``nn.Linear``, zero the units' output weights and biases, so the edit survives
        ``state_dict()``. The original generator is left alone unless ``inplace``.
        """
        target = generator if inplace else copy.deepcopy(generator)
        module = resolve_layers(target.module, self.layer)[self.layer]
        units = torch.tensor(self.units, dtype=torch.long)
        if mode == "weights":
            _zero_output_weights(module, units, self.layer)
            return target
        if mode != "hook":
            raise RepairError(f"unknown mode {mode!r}: use 'hook' or 'weights'")

        def zero_units(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            out[:, units.to(out.device)] = 0
            return out

        target.gdx_repair_handle = module.register_forward_hook(zero_units)  # type: ignore[attr-defined]
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


def _new_metric(metric: Any) -> Metric:
    if hasattr(metric, "fresh"):
        return metric.fresh()
    if callable(metric) and not isinstance(metric, Metric):
        return metric()
    raise RepairError(
        f"metric {type(metric).__name__} has no fresh() method; pass an instance with fresh() "
        "(FrechetDistance, RealismScore) or a zero-argument factory returning a new Metric"
    )


def find_artifact_units(
    generator: Generator,
    layer: str,
    *,
    metric: Any,
    real: torch.Tensor | Iterable[torch.Tensor] | None = None,
    samples: int = 200,
    seed: int = 0,
    held_out: int = 200,
    held_out_seed: int | None = None,
    top: int = 20,
    candidates: Sequence[int] | None = None,
    batch_size: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ArtifactRepair:
    """Rank units by how much ablating each improves ``metric``; confirm on held-out samples.

    ``metric``: a quality metric with ``fresh()`` — :class:`FrechetDistance` (needs
    ``real`` images, or a reference already set) or :class:`RealismScore` (a
    discriminator; no real data) — or a factory returning one. Lower-is-better
    metrics are negated so that a positive score always means "ablating helps".
    ``candidates`` restricts the units tried (default: all). Of the ranking, the
    prefix of at most ``top`` positive-scoring units that gives the best metric on
    the search samples is chosen, then measured on ``held_out`` samples of
    ``held_out_seed`` (default ``seed + 1``).
    """
    if real is not None:
        if not hasattr(metric, "set_reference"):
            raise RepairError(f"{type(metric).__name__} takes no real images; drop real= or use FrechetDistance")
        metric.set_reference(real)
    elif getattr(metric, "reference", "n/a") is None:
        raise RepairError(
            "FrechetDistance needs real images: pass real=<N x 3 x H x W tensor or batches>, "
            "or use RealismScore(discriminator) when there is no real data"
        )
    probe = _new_metric(metric)
    higher = bool(getattr(probe, "higher_is_better", False))
    held_out_seed = seed + 1 if held_out_seed is None else held_out_seed
    z0 = generator.sample_latents(1, seed=seed).to(generator.device)
    with torch.no_grad():
        n_units = layer_output(generator, layer, z0).shape[1]
    cand = list(range(n_units)) if candidates is None else [int(u) for u in candidates]

    @torch.no_grad()
    def measure(units: Sequence[int], n: int, s: int) -> float:
        m = _new_metric(metric)
        for z in latent_batches(generator, n, seed=s, batch_size=batch_size):
            if units:
                with intervene(generator, layer, list(units), value=0.0):
                    images = generator.generate(z)
            else:
                images = generator.generate(z)
            m.update(images)
        return float(m.result())

    def gain(before: float, after: float) -> float:
        return after - before if higher else before - after

    before = measure([], samples, seed)
    scores = []
    for i, u in enumerate(cand):
        if progress and i % 16 == 0:
            progress(f"ablating unit {u} ({i + 1}/{len(cand)})")
        scores.append(gain(before, measure([u], samples, seed)))
    order = sorted(range(len(cand)), key=lambda i: (-scores[i], cand[i]))
    positive = [cand[i] for i in order[:top] if scores[i] > 0]
    best_units: list[int] = []
    best_value = before
    for n in range(1, len(positive) + 1):
        value = measure(positive[:n], samples, seed)
        if gain(best_value, value) > 0:
            best_units, best_value = positive[:n], value
    held_before = measure([], held_out, held_out_seed)
    held_after = measure(best_units, held_out, held_out_seed) if best_units else held_before
    return ArtifactRepair(
        layer=layer,
        metric=getattr(probe, "name", type(probe).__name__),
        higher_is_better=higher,
        candidates=cand,
        scores=scores,
        units=best_units,
        before=before,
        after=best_value,
        held_out_before=held_before,
        held_out_after=held_after,
        confirmed=bool(best_units) and gain(held_before, held_after) > 0,
        samples=samples,
        seed=seed,
        held_out=held_out,
        held_out_seed=held_out_seed,
    )
