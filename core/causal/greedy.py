"""Choose a concept's unit set by greedy forward selection under hard ablation.

α (:func:`gdx.optimize_units`) relaxes "which n units, switched off, remove the most of a
concept?" to a soft mask and reads the answer off its top n scores. Where a concept is
spread over many units and the network routes around a few of them (a diffusion U-Net's
skip connections carry a concept past its middle block), the top of the soft mask is not
the best hard set: on the bundled scene-diffusion model, the top-20 α units of ``mid``
switched off over every step removed 0.44 of the trees on held-out samples, the 20 units
picked here from α's top 40 removed 0.55 (docs/diffusion.md, "Findings").

Each round switches off the units chosen so far plus one candidate, on the samples that
show the most of the concept, and keeps the candidate that leaves the fewest of its
pixels (the segmenter's hard labels: the quantity the removal table measures). All of a
round's candidates run as one batch, each row with its own unit mask, so a round costs
``len(candidates) x focus`` samples. ``shortlist`` trades exactness for speed: after the
first round only the candidates that scored best in the round before are tried again (a
heuristic: a unit that helped little in one round is assumed not to become the best
addition in the next). On the scene-diffusion model a search on 64 focus samples with a
shortlist of 10 took about as long as the full search on 32 (an hour on one core) and
found a tree set that removes as much on held-out samples as the full search on 16.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from gdx.causal.results import UnitRanking
from gdx.errors import InterventionError
from gdx.interfaces import Generator, Segmenter
from gdx.sampling import concept_index, concept_mask, segment_images
from gdx.tracing import Trace


@torch.no_grad()
def _concept_pixels(generator: Generator, segmenter: Segmenter, layer: str, index: int, z: torch.Tensor,
                    keep: torch.Tensor | None) -> torch.Tensor:
    """Concept pixels per sample of ``z``, with each row's units multiplied by ``keep`` (rows x U) at ``layer``."""
    if keep is None:
        images = generator.generate(z)
    else:
        mask = keep.to(generator.device)[:, :, None, None]
        trace = Trace(generator, layer, record=False)
        trace.edit = lambda _name, r: r * mask.to(r.dtype)
        with trace:
            images = generator.generate(z)
    return concept_mask(segment_images(segmenter, images), index).flatten(1).sum(1).cpu().float()


def select_units(
    generator: Generator,
    segmenter: Segmenter,
    layer: str,
    concept: str | int,
    candidates: UnitRanking | Sequence[int],
    *,
    n: int = 20,
    pool: int = 96,
    focus: int = 16,
    seed: int = 0,
    rows: int = 640,
    shortlist: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> UnitRanking:
    """Pick ``n`` of ``candidates`` greedily: each round adds the unit whose ablation removes the most.

    ``candidates``: unit indices, or a :class:`UnitRanking` whose top ``2 n`` are used (e.g.
    α's). The search reads the ``focus`` samples, of ``pool`` samples of latent ``seed``,
    that show the most of ``concept``; ties go to the earlier candidate. ``layer`` may be a
    step window (``BLOCK@A-B``): the units are off at every step of it. ``rows`` bounds the
    images of one forward pass. ``shortlist``: after round 1, try only this many candidates
    each round, those that left the fewest pixels in the round before (``None``: all).
    Returns a ranking (``method="greedy"``) whose order is the
    selection, then the other candidates in their given order; ``history`` is the share of
    the focus samples' concept pixels removed after each round.

    >>> alpha = gdx.optimize_units(gen, seg, "mid@0-9", "tree", init=dissection)
    >>> gdx.select_units(gen, seg, "mid@0-9", "tree", alpha).top(20)
    """
    index = concept_index(segmenter, concept)
    name = list(segmenter.labels)[index]
    order = candidates.top(2 * n) if isinstance(candidates, UnitRanking) else [int(u) for u in candidates]
    if len(set(order)) != len(order) or len(order) < n:
        raise InterventionError(f"select_units needs at least n={n} distinct candidate units, got {len(order)}")
    if shortlist is not None and shortlist < 1:
        raise InterventionError(f"select_units needs shortlist >= 1 (or None for every candidate), got {shortlist}")
    if focus < 1 or pool < focus:
        raise InterventionError(f"select_units needs 1 <= focus <= pool, got focus={focus}, pool={pool}")
    z_pool = generator.sample_latents(pool, seed=seed)
    present = torch.cat([_concept_pixels(generator, segmenter, layer, index, z_pool[s : s + rows], None)
                         for s in range(0, pool, rows)])
    if float(present.sum()) == 0:
        raise InterventionError(f"concept {name!r} is absent from all {pool} samples of seed {seed}; "
                                "use more samples (pool=) or another seed")
    most = torch.argsort(present, descending=True, stable=True)[:focus]
    z, base = z_pool[most], float(present[most].sum())
    n_units = _layer_units(generator, layer, z[:1])
    if max(order) >= n_units or min(order) < 0:
        raise InterventionError(f"candidate units must be in 0..{n_units - 1} for {layer}")
    chosen: list[int] = []
    history: list[float] = []
    per_forward = max(1, rows // focus)
    previous: dict[int, float] = {}  # candidate -> pixels left when it was last tried
    for round_ in range(n):
        rest = [u for u in order if u not in chosen]
        if shortlist is not None and previous:
            kept = sorted(rest, key=lambda u: (previous.get(u, float("inf")), order.index(u)))[:shortlist]
            rest = [u for u in rest if u in kept]  # keep the given order: ties still go to the earlier unit
        left = []
        for start in range(0, len(rest), per_forward):
            part = rest[start : start + per_forward]
            keep = torch.ones(len(part), n_units)
            keep[:, chosen] = 0
            keep[torch.arange(len(part)), part] = 0
            pixels = _concept_pixels(generator, segmenter, layer, index, z.repeat(len(part), *([1] * (z.dim() - 1))),
                                     keep.repeat_interleave(focus, 0))
            left.append(pixels.view(len(part), focus).sum(1))
        totals = torch.cat(left)
        previous = {u: float(t) for u, t in zip(rest, totals)}
        best = int(torch.argmin(totals))  # first of equals: the earlier candidate
        chosen.append(rest[best])
        history.append(1.0 - float(totals[best]) / base)
        if progress:
            progress(f"{name}: round {round_ + 1}/{n}: unit {rest[best]}, {history[-1]:.3f} of the focus samples' "
                     f"{name} removed")
    ranked = chosen + [u for u in order if u not in chosen]
    scores = torch.full((n_units,), -1.0)
    scores[ranked] = torch.arange(len(ranked), 0, -1, dtype=torch.float32)
    return UnitRanking(layer=layer, concept=name, method="greedy", scores=scores, history=history)


@torch.no_grad()
def _layer_units(generator: Generator, layer: str, z: torch.Tensor) -> int:
    """Units of ``layer`` (its first call, for a step window), read from one sample."""
    with Trace(generator, layer, stop=True) as trace:
        generator.generate(z)
    return int(next(iter(trace.outputs.values())).shape[1])
