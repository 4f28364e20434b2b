"""Quality numbers for the scene models: mean IoU, label frequencies, total variation.

Why here: the training scripts, the tests and docs/scenes.md report the same numbers, so
they are computed in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from gdx.scenes.render import LABELS, label_frequencies, render_scenes

#: Render seeds of the held-out evaluation scenes (training pools never use seeds this small).
HELD_OUT_SEED = 777


@dataclasses.dataclass
class IoUResult:
    """Per-label IoU (NaN where a label is absent from both maps) and their mean."""

    per_label: dict[str, float]
    mean: float

    def worst(self) -> tuple[str, float]:
        name = min((k for k, v in self.per_label.items() if v == v), key=lambda k: self.per_label[k])
        return name, self.per_label[name]


def confusion(pred: torch.Tensor, true: torch.Tensor, num_labels: int = len(LABELS)) -> torch.Tensor:
    """num_labels x num_labels counts: rows = true label, columns = predicted label."""
    keep = (true >= 0) & (pred >= 0)
    idx = true[keep].long() * num_labels + pred[keep].long()
    return torch.bincount(idx, minlength=num_labels * num_labels).view(num_labels, num_labels)


def iou_from_confusion(conf: torch.Tensor, labels=LABELS) -> IoUResult:
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    iou = inter / union
    per = {name: float(v) for name, v in zip(labels, iou)}
    valid = iou[union > 0]
    return IoUResult(per_label=per, mean=float(valid.mean()))


@torch.no_grad()
def segmenter_miou(
    segment: Callable[[torch.Tensor], torch.Tensor], n: int = 512, *, seed: int = HELD_OUT_SEED, batch: int = 128
) -> IoUResult:
    """Mean IoU of ``segment`` (images in [-1, 1] -> N x H x W labels) on held-out scenes."""
    conf = torch.zeros(len(LABELS), len(LABELS), dtype=torch.long)
    for i, start in enumerate(range(0, n, batch)):
        scenes = render_scenes(min(batch, n - start), seed=seed * 1000 + i)
        conf += confusion(segment(scenes.images), scenes.labels)
    return iou_from_confusion(conf)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    """Total-variation distance between two label distributions: half the L1 distance."""
    return float(0.5 * (p.double() - q.double()).abs().sum())


@torch.no_grad()
def generated_label_frequencies(
    generate: Callable[[torch.Tensor], torch.Tensor],
    segment: Callable[[torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    *,
    batch: int = 200,
) -> torch.Tensor:
    """Label frequencies of ``segment(generate(z))`` over ``latents`` (batched)."""
    counts = torch.zeros(len(LABELS), dtype=torch.float64)
    for start in range(0, latents.shape[0], batch):
        labels = segment(generate(latents[start : start + batch]).clamp(-1, 1))
        counts += label_frequencies(labels) * labels.numel()
    return counts / counts.sum()


@torch.no_grad()
def rendered_label_frequencies(
    n: int = 2000, *, seed: int = HELD_OUT_SEED, segment: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """Label frequencies of rendered scenes: exact labels, or ``segment``'s when given."""
    counts = torch.zeros(len(LABELS), dtype=torch.float64)
    for i, start in enumerate(range(0, n, 200)):
        scenes = render_scenes(min(200, n - start), seed=seed * 1000 + 500 + i)
        labels = scenes.labels if segment is None else segment(scenes.images)
        counts += label_frequencies(labels) * labels.numel()
    return counts / counts.sum()


def main(argv: list[str] | None = None) -> None:
    """Print the numbers docs/scenes.md reports, measured on the shipped weights.

    python -m tools.scenes.evaluate [--samples 2000] [--dissect 400]
    """
    import argparse
    import json
    import time

    import gdx

    p = argparse.ArgumentParser(description="Measure the bundled scene models.")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--dissect", type=int, default=400, help="samples per dissection (0: skip)")
    p.add_argument("--layer", default="layer4")
    p.add_argument("--generators", default="scene,scene-vae")
    args = p.parse_args(argv)
    seg = gdx.load_segmenter("scene")
    t = time.time()
    miou = segmenter_miou(seg.segment, n=512)
    print(f"segmenter held-out mIoU {miou.mean:.4f} ({time.time() - t:.0f}s); worst {miou.worst()}")
    print("  per label " + json.dumps({k: round(v, 3) for k, v in miou.per_label.items()}))
    real = rendered_label_frequencies(args.samples, segment=seg.segment)
    exact = rendered_label_frequencies(args.samples)
    print(f"rendered data: TV(segmenter vs exact labels) {total_variation(real, exact):.4f}")
    for name in args.generators.split(","):
        gen = gdx.load_generator(name)
        z = gen.sample_latents(args.samples, seed=0)
        t = time.time()
        fake = generated_label_frequencies(gen.generate, seg.segment, z)
        present = [lab for lab, f in zip(LABELS, fake) if f >= 0.005]
        print(
            f"{name}: TV {total_variation(fake, real):.4f} over {args.samples} samples ({time.time() - t:.0f}s); "
            f"{len(present)} concepts >= 0.5%: {present}"
        )
        print("  freq " + json.dumps({lab: round(float(f), 4) for lab, f in zip(LABELS, fake)}))
        if args.dissect:
            t = time.time()
            d = gdx.dissect(gen, seg, args.layer, samples=args.dissect, seed=0, batch_size=100, progress=False)
            s = d.summary(iou_min=0.05)
            print(
                f"  dissection {args.layer} ({args.dissect} samples, {time.time() - t:.0f}s): "
                f"{s.interpretable}/{s.units} interpretable units, {len(s.per_concept)} concepts {s.per_concept}"
            )


if __name__ == "__main__":
    main()
