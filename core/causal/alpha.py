"""Learn the soft unit mask alpha that best removes and inserts a concept (docs/method.md, "Intervention").

:func:`optimize_units` runs Adam on alpha in [0, 1]^U through the generator and the
segmenter's soft class probabilities (:func:`segment_probs`). Its steps: fix the
samples and, in cell mode, the cells each term edits (:func:`_prepare`); per batch,
the concept's probability under the soft edit (:func:`_concept_prob`); per epoch,
shuffled groups of samples, one Adam step each (:func:`_epoch`, :func:`_step`).

The reference code (gandissect ``aceoptimize.ace_loss``) reads the insertion term at
``ploc``, the *ablation* sample's cell, instead of ``cloc`` where it inserted; here
each term is read where its edit was made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from gdx.causal.effects import EffectRunner
from gdx.causal.ranking import IouTable, _iou_column
from gdx.causal.results import UnitRanking
from gdx.errors import InterventionError, NotDifferentiableError
from gdx.interfaces import Generator, Segmenter
from gdx.intervention import intervene, per_step_rows
from gdx.sampling import concept_mask, resize_for, segment_images
from gdx.tracing import LayerAddress, Trace

ProbFn = Callable[[torch.Tensor], torch.Tensor]


def segment_probs(segmenter: Segmenter, images: torch.Tensor) -> torch.Tensor:
    """Differentiable class probabilities N x L x H' x W' for ``images`` in [-1, 1].

    Uses the segmenter's optional ``segment_probs(images)`` (probabilities) or
    ``segment_logits(images)`` (softmaxed over labels) method, after resizing to its
    ``input_size``. A segmenter that only returns labels cannot be optimised
    through: :class:`NotDifferentiableError` says how to add the method.
    """
    x = resize_for(segmenter, images)
    for target in (segmenter, getattr(segmenter, "fn", None)):
        if target is None:
            continue
        probs_of = getattr(target, "segment_probs", None)
        if callable(probs_of):
            return probs_of(x)
        logits_of = getattr(target, "segment_logits", None)
        if callable(logits_of):
            return torch.softmax(logits_of(x), dim=1)
    raise NotDifferentiableError(
        f"segmenter {getattr(segmenter, 'name', type(segmenter).__name__)!r} only returns labels; optimizing "
        "units needs soft class probabilities. Give it a method segment_logits(images) -> N x L x H x W "
        "logits (or segment_probs(images) -> probabilities), or pass probs=<callable> to optimize_units."
    )


# -- data preparation ------------------------------------------------------------------


def _normalised_init(
    init: IouTable | UnitRanking | None, concept: str | int, labels: Sequence[str], n_units: int
) -> torch.Tensor:
    """The starting alpha: the init's scores (or IoU column) clamped at 0 and scaled to max 1; else zeros."""
    if init is None:
        return torch.zeros(n_units)
    if isinstance(init, UnitRanking):
        col = init.scores.float()
    else:
        table = getattr(init, "iou", init)
        table = torch.as_tensor(table, dtype=torch.float32)
        col = table if table.dim() == 1 else _iou_column(init, concept, getattr(init, "labels", labels))[0]
    if col.numel() != n_units:
        raise InterventionError(f"init has {col.numel()} entries; the layer has {n_units} units")
    col = torch.nan_to_num(col.clamp(min=0), nan=0.0, posinf=0.0)
    return col / col.max() if float(col.max()) > 0 else col


@torch.no_grad()
def _coverage(
    generator: Generator, segmenter: Segmenter, index: int, z_all: torch.Tensor, grid: tuple[int, int], bs: int
) -> torch.Tensor:
    """Fraction of each feature cell the concept covers, N x h x w."""
    out = []
    for start in range(0, z_all.shape[0], bs):
        images = generator.generate(z_all[start : start + bs].to(generator.device))
        mask = concept_mask(segment_images(segmenter, images), index).float()
        out.append(F.adaptive_avg_pool2d(mask[:, None], grid)[:, 0].cpu())
    return torch.cat(out)


@torch.no_grad()
def _pixel_masks(generator: Generator, segmenter: Segmenter, index: int, z_all: torch.Tensor, bs: int) -> torch.Tensor:
    """Where the concept is in each unedited sample, N x H' x W' bool (segmentation size)."""
    out = []
    for start in range(0, z_all.shape[0], bs):
        images = generator.generate(z_all[start : start + bs].to(generator.device))
        out.append(concept_mask(segment_images(segmenter, images), index).cpu())
    return torch.cat(out)


@torch.no_grad()
def _candidate_cells(
    generator: Generator, segmenter: Segmenter, layer: str, index: int, z_all: torch.Tensor, cover: torch.Tensor,
    k: torch.Tensor, probes: int, seed: int, bs: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sample, the best of ``probes`` random concept-free cells for inserting the concept.

    As the reference: every unit is set to its insertion value in one cell and the
    concept's gain in that cell is measured; samples where no probe gains are dropped.
    """
    g = torch.Generator().manual_seed(seed + 7919)
    n, h, w = cover.shape
    best_gain = torch.zeros(n)
    best_cell = torch.zeros(n, dtype=torch.long)
    for _ in range(probes):
        free = (cover.flatten(1) == 0).float() + 1e-12
        cells = torch.multinomial(free, 1, generator=g)[:, 0]
        for start in range(0, n, bs):
            idx = torch.arange(start, min(n, start + bs))
            region = F.one_hot(cells[idx], h * w).float().view(-1, h, w)
            with intervene(generator, layer, None, value=k, region=region):
                images = generator.generate(z_all[idx].to(generator.device))
            mask = concept_mask(segment_images(segmenter, images), index).float()
            pooled = F.adaptive_avg_pool2d(mask[:, None], (h, w)).flatten(1).cpu()
            gain = pooled.gather(1, cells[idx, None])[:, 0] - cover.flatten(1)[idx].gather(1, cells[idx, None])[:, 0]
            better = gain > best_gain[idx]
            best_gain[idx] = torch.where(better, gain, best_gain[idx])
            best_cell[idx] = torch.where(better, cells[idx], best_cell[idx])
    keep = torch.nonzero(best_gain > 0).flatten()
    return keep, best_cell[keep]


@dataclasses.dataclass
class _Problem:
    """What one optimisation reads, fixed before its first step.

    ``present``: the samples of the ablation term (those that contain the concept);
    ``insert_ids``: the samples of the insertion term. Cell mode only: ``p_cells`` /
    ``c_cells`` (one per sample, -1 = unused) are the cells where each sample is
    ablated / inserted and read. ``masks`` (``ablation_read="concept"``): the
    concept's pixels in each unedited sample. ``kk``: the insertion values, shaped
    to broadcast over the layer (1 x U x 1 x 1, or a scalar).
    """

    generator: Generator
    layer: str
    concept: str
    index: int
    n_units: int
    grid: tuple[int, int]
    bs: int
    z_all: torch.Tensor
    present: torch.Tensor
    insert_ids: torch.Tensor
    p_cells: torch.Tensor | None
    c_cells: torch.Tensor | None
    masks: torch.Tensor | None
    kk: torch.Tensor
    prob_fn: ProbFn


def _cell_targets(
    runner: EffectRunner, z_all: torch.Tensor, k: torch.Tensor, present: torch.Tensor, grid: tuple[int, int],
    *, samples: int, probes: int, seed: int, bs: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cell mode: (ablation cell per sample, samples of the insertion term, insertion cell per sample).

    Ablation is at the cell the concept covers most (``ploc``); insertion at the best
    of ``probes`` random concept-free cells (``cloc``) where inserting works.
    """
    generator, segmenter, c = runner.generator, runner.segmenter, runner.index
    cover = _coverage(generator, segmenter, c, z_all, grid, bs)
    p_cells = torch.full((samples,), -1, dtype=torch.long)
    p_cells[present] = cover[present].flatten(1).argmax(1)
    c_all, found = _candidate_cells(generator, segmenter, runner.layer, c, z_all, cover, k, probes, seed, bs)
    c_cells = torch.full((samples,), -1, dtype=torch.long)
    c_cells[c_all] = found
    if c_all.numel() == 0:
        raise InterventionError(
            f"inserting {runner.concept!r} in {probes} random cells of {samples} samples never added it; "
            "use mode='image', more samples or more probes"
        )
    return p_cells, c_all, c_cells


def _prepare(
    generator: Generator, segmenter: Segmenter, layer: str, concept: str | int, *, samples: int, seed: int,
    value: torch.Tensor | None, batch_size: int | None, group: int, mode: str, probes: int, ablation_read: str,
    probs: ProbFn | None,
) -> _Problem:
    """Measure the unedited samples and fix the samples (and cells) each term will edit."""
    runner = EffectRunner(
        generator, segmenter, layer, concept, samples=samples, seed=seed, batch_size=batch_size, value=value
    )
    before = runner.baseline()
    k = runner.value
    c = runner.index
    grid = runner.grid or (1, 1)
    z_all = generator.sample_latents(samples, seed=seed)
    present = torch.nonzero(before[:, c] > 0).flatten()
    if present.numel() == 0:
        raise InterventionError(f"concept {runner.concept!r} is absent from all {samples} samples; cannot optimise")
    bs = max(1, min(batch_size or 10, group))
    p_cells: torch.Tensor | None = None
    c_cells: torch.Tensor | None = None
    c_all = torch.arange(samples)
    if mode == "cell":
        p_cells, c_all, c_cells = _cell_targets(
            runner, z_all, k, present, grid, samples=samples, probes=probes, seed=seed, bs=bs
        )
    masks: torch.Tensor | None = None
    if mode == "image" and ablation_read == "concept":
        masks = _pixel_masks(generator, segmenter, c, z_all, bs)
    kk = k.to(generator.device)
    if per_step_rows(layer, kk):  # insertion values at a step window: one row per step, S x 1 x U x 1 x 1
        kk = kk[:, None, :, None, None]
    else:
        kk = kk.view(1, -1, 1, 1) if kk.dim() == 1 else kk
    return _Problem(
        generator=generator, layer=layer, concept=runner.concept, index=c, n_units=int(runner.n_units or 0),
        grid=grid, bs=bs, z_all=z_all, present=present, insert_ids=c_all, p_cells=p_cells, c_cells=c_cells,
        masks=masks, kk=kk, prob_fn=probs or (lambda x: segment_probs(segmenter, x)),
    )


# -- optimisation ----------------------------------------------------------------------


def _concept_prob(
    pb: _Problem, alpha: torch.Tensor, ids: torch.Tensor, insert: bool, cells: torch.Tensor | None
) -> torch.Tensor:
    """Per-sample probability of the concept for samples ``ids`` under the soft edit by ``alpha``.

    Ablation multiplies each unit by ``1 - alpha``; insertion sets ``r (1 - alpha) + k alpha``;
    with ``cells``, only in each sample's cell, and the probability is read there.
    """
    grid = pb.grid
    z = pb.z_all[ids].to(pb.generator.device)
    a = alpha.view(1, -1, 1, 1)
    if cells is not None:
        where = F.one_hot(cells[ids], grid[0] * grid[1]).to(a).view(-1, 1, grid[0], grid[1])
        a = a * where

    trace = Trace(pb.generator, pb.layer, record=False)
    first = LayerAddress.parse(pb.layer).first or 0

    def edit(name: str, r: torch.Tensor) -> torch.Tensor:
        kk = pb.kk[trace.call_index(name) - first] if pb.kk.dim() == 5 else pb.kk  # this step's row
        return r * (1 - a) + kk * a if insert else r * (1 - a)

    trace.edit = edit
    with trace:
        images = pb.generator.generate(z)
    p = pb.prob_fn(images)[:, pb.index]
    if cells is None:
        if insert or pb.masks is None:
            return p.mean(dim=(-2, -1))  # per-sample mean probability over the image
        m = pb.masks[ids].to(p)
        if m.shape[-2:] != p.shape[-2:]:
            m = F.interpolate(m[:, None], size=p.shape[-2:], mode="nearest")[:, 0]
        # the share of the concept's own pixels that survives the ablation
        return (p * m).sum(dim=(-2, -1)) / m.sum(dim=(-2, -1)).clamp(min=1)
    pooled = F.adaptive_avg_pool2d(p[:, None], grid).flatten(1)
    return pooled.gather(1, cells[ids].to(pooled.device)[:, None])[:, 0]  # read where the edit was made


def _step(
    pb: _Problem, alpha: torch.Tensor, opt: torch.optim.Optimizer, pull: torch.Tensor,
    pz: torch.Tensor, cz: torch.Tensor, *, insert_weight: float, lam: float,
) -> float:
    """One Adam step on ablation samples ``pz`` and insertion samples ``cz``; returns the step's loss.

    Gradients are accumulated batch by batch; ``pull`` collects minus the data term's gradient.
    """
    grad = torch.zeros_like(alpha)
    step_loss = 0.0
    terms = [(pz, 1.0, False, pb.p_cells)]
    if insert_weight:
        terms.append((cz, -float(insert_weight), True, pb.c_cells))
    for part, sign, insert, cells in terms:
        for s in range(0, part.numel(), pb.bs):
            term = sign * _concept_prob(pb, alpha, part[s : s + pb.bs], insert, cells).sum()
            (g,) = torch.autograd.grad(term, [alpha])
            grad += g
            step_loss += float(term.detach())
    pull -= grad.detach().cpu()
    reg = lam * alpha.pow(2).sum()
    (g,) = torch.autograd.grad(reg, [alpha])
    grad += g
    step_loss += float(reg.detach())
    opt.zero_grad()
    alpha.grad = grad
    opt.step()
    with torch.no_grad():
        alpha.clamp_(0.0, 1.0)
    return step_loss


def _epoch(
    pb: _Problem, alpha: torch.Tensor, opt: torch.optim.Optimizer, pull: torch.Tensor, rng: torch.Generator,
    *, group: int, insert_weight: float, lam: float,
) -> float:
    """One pass over the shuffled samples in groups of ``group``; returns the mean step loss.

    ``pull`` is reset and holds this epoch's data-term pull on each unit afterwards.
    """
    pull.zero_()
    p_order = pb.present[torch.randperm(pb.present.numel(), generator=rng)]
    c_order = pb.insert_ids[torch.randperm(pb.insert_ids.numel(), generator=rng)]
    steps = max(1, -(-p_order.numel() // group))
    total = 0.0
    for step in range(steps):
        pz = p_order[step * group : (step + 1) * group]
        if pz.numel() == 0:
            pz = p_order[:group]
        cz = c_order[(step * group) % max(1, c_order.numel()) :][:group]
        if cz.numel() == 0:
            cz = c_order[:group]
        total += _step(pb, alpha, opt, pull, pz, cz, insert_weight=insert_weight, lam=lam)
    return total / steps


def optimize_units(
    generator: Generator,
    segmenter: Segmenter,
    layer: str,
    concept: str | int,
    *,
    samples: int = 200,
    seed: int = 0,
    epochs: int = 10,
    lr: float = 0.01,
    lam: float = 0.005,
    group: int = 20,
    init: IouTable | UnitRanking | None = None,
    value: torch.Tensor | None = None,
    batch_size: int | None = None,
    probs: Callable[[torch.Tensor], torch.Tensor] | None = None,
    mode: str = "image",
    probes: int = 5,
    insert_weight: float = 1.0,
    ablation_read: str = "image",
) -> UnitRanking:
    """Learn the soft unit mask alpha in [0, 1]^U that best removes and inserts ``concept``.

    Minimises ``sum p_c(ablate alpha) - sum p_c(insert alpha * k) + lam * ||alpha||^2``
    (docs/method.md, "Intervention"). Ablation multiplies each unit by ``1 - alpha_u`` on samples that
    contain the concept; insertion sets ``r (1 - alpha) + k alpha`` with ``k`` the
    insertion values. ``p_c`` is the segmenter's soft probability of the concept
    (:func:`segment_probs`, or ``probs(images) -> N x L x H x W``). Each term is summed
    over groups of ``group`` samples per Adam step (the reference's 2 x 10), so ``lam``
    has the reference's scale. Adam(lr), alpha clamped to [0, 1] after each step,
    initialised from the normalised IoU column when ``init`` (a Dissection, a
    units x labels tensor, or a U-vector) is given, else zeros.

    ``mode="image"`` (default) edits the whole image: ablation on every sample that
    contains the concept, read as the mean of ``p_c`` over the image
    (``ablation_read="image"``) or over the concept's own pixels in the unedited
    sample (``"concept"``: the share of the concept that survives, which keeps the
    two terms of equal scale for small concepts); insertion on every sample, read as
    the mean of ``p_c`` over the image.
    ``mode="cell"`` is the reference's recipe: ablate in the cell where the concept
    covers most (``ploc``) and read ``p_c`` there; insert in the best of ``probes``
    random concept-free cells (``cloc``) of samples where insertion works there.
    ``insert_weight`` scales the insertion term (0 learns from ablation alone).

    >>> rank = gdx.optimize_units(gen, seg, "layer4", "tree", init=dissection, epochs=3)
    >>> rank.top(20)
    """
    if mode not in ("image", "cell"):
        raise InterventionError(f"unknown mode {mode!r}: use 'image' or 'cell'")
    if ablation_read not in ("concept", "image"):
        raise InterventionError(f"unknown ablation_read {ablation_read!r}: use 'concept' or 'image'")
    pb = _prepare(
        generator, segmenter, layer, concept, samples=samples, seed=seed, value=value, batch_size=batch_size,
        group=group, mode=mode, probes=probes, ablation_read=ablation_read, probs=probs,
    )
    alpha = _normalised_init(init, concept, segmenter.labels, pb.n_units).to(generator.device).requires_grad_(True)
    opt = torch.optim.Adam([alpha], lr=lr)
    pull = torch.zeros(pb.n_units)
    rng = torch.Generator().manual_seed(seed)
    history = [_epoch(pb, alpha, opt, pull, rng, group=group, insert_weight=insert_weight, lam=lam)
               for _ in range(epochs)]
    return UnitRanking(
        layer=layer, concept=pb.concept, method="alpha", scores=alpha.detach().cpu().float(), history=history,
        tiebreak=pull.float(),
    )
