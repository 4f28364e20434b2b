"""Train the bundled scene segmenter (U-Net, MobileNetV3-small encoder) on rendered scenes.

Why these choices: labels are exact and scenes unlimited, so plain cross-entropy (with
weights that lift the small parts: door, window, sun) on a pool of rendered scenes
suffices; mild noise and blur augmentation keeps it robust on generated images, which are
never as crisp as the renders. The segmenter is what dissection measures GAN units with, so
its held-out mIoU is reported (and tested).

    python -m tools.scenes.train_segmenter --out runs/seg --seed 0
    python -m tools.scenes.train_segmenter --out runs/seg --seed 0 --resume
    python -m tools.scenes.train_segmenter --out runs/seg --export plugins/segmenters/weights

The export writes ``scene_segmenter.safetensors`` + ``.json`` (config), the ONNX model
``scene_segmenter.onnx`` (RGB N x 3 x H x W in [-1, 1] -> logits N x C x H x W) and
``scene_labels.json`` (labels and categories).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tools.scenes.evaluate import segmenter_miou
from gdx.plugins.scene_arch import SEGMENTER_CONFIG, SceneSegmenterNet
from tools.scenes.pool import ScenePool
from gdx.scenes.render import CATEGORIES, LABELS, label_frequencies


def _augment(images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Gaussian noise of a random strength, and a light blur on a random half of the batch."""
    n = images.shape[0]
    sigma = torch.rand(n, 1, 1, 1, generator=rng) * 0.08
    images = images + sigma * torch.randn(images.shape, generator=rng)
    blur = torch.rand(n, generator=rng) < 0.5
    if blur.any():
        k = torch.tensor([0.25, 0.5, 0.25])
        kernel = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
        soft = F.conv2d(F.pad(images[blur], (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
        images = images.clone()
        images[blur] = soft
    return images.clamp(-1, 1)


def _lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def export(checkpoint: Path, dest: Path) -> None:
    """Write safetensors + JSON config, the ONNX model and the labels file into ``dest``."""
    from safetensors.torch import save_file

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    dest.mkdir(parents=True, exist_ok=True)
    net = SceneSegmenterNet(len(LABELS), state["config"]).eval()
    net.load_state_dict(state["model"])
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(sd, str(dest / "scene_segmenter.safetensors"), metadata={"format": "pt"})
    config = dict(state["config"])
    config.update(
        labels=list(LABELS),
        categories=CATEGORIES,
        steps=int(state["step"]),
        seed=int(state["seed"]),
        train_seconds=float(state["elapsed"]),
        held_out_miou=state.get("miou"),
    )
    (dest / "scene_segmenter.json").write_text(json.dumps(config, indent=2) + "\n")
    (dest / "scene_labels.json").write_text(
        json.dumps({"labels": list(LABELS), "categories": CATEGORIES}, indent=2) + "\n"
    )
    example = torch.zeros(2, 3, 64, 64)
    torch.onnx.export(
        net,
        (example,),
        str(dest / "scene_segmenter.onnx"),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}},
        opset_version=17,
        dynamo=False,
    )


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    config = dict(SEGMENTER_CONFIG)
    net = SceneSegmenterNet(len(LABELS), config)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    step, elapsed = 0, 0.0
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        print(f"resumed at step {step}", flush=True)
    pool = ScenePool(args.pool, seed=args.seed + 1)
    freq = label_frequencies(pool.labels.long()).float()
    weights = (freq.clamp_min(1e-4) ** -0.5)
    weights = weights / (weights * freq).sum()
    print(f"params {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M pool {len(pool)}", flush=True)

    def save(miou: float | None = None) -> None:
        state = {
            "model": net.state_dict(),
            "opt": opt.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "seed": args.seed,
            "config": config,
        }
        if miou is not None:
            state["miou"] = miou
        torch.save(state, ckpt_path.with_suffix(".tmp"))
        ckpt_path.with_suffix(".tmp").replace(ckpt_path)

    t0 = time.time() - elapsed
    t_ckpt = time.time()
    net.train()
    while step < args.steps:
        rng = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        images, labels = pool.sample(args.batch, rng, with_labels=True)
        images = _augment(images, rng)
        for group in opt.param_groups:
            group["lr"] = _lr(step, args.steps, args.lr)
        loss = F.cross_entropy(net(images), labels, weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        elapsed = time.time() - t0
        if step % args.log_every == 0:
            print(f"step {step} min {elapsed / 60:.1f} loss {loss.item():.4f}", flush=True)
        if time.time() - t_ckpt > args.checkpoint_minutes * 60:
            save()
            t_ckpt = time.time()
    net.eval()
    result = segmenter_miou(lambda x: net(x).argmax(1), n=512)
    print(f"held-out mIoU {result.mean:.4f}; per label " + json.dumps({k: round(v, 3) for k, v in result.per_label.items()}), flush=True)
    save(result.mean)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--pool", type=int, default=12000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--checkpoint-minutes", type=float, default=3.0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--export", default=None, help="write the trained model into this folder and exit")
    args = p.parse_args(argv)
    if args.export:
        export(Path(args.out) / "checkpoint.pt", Path(args.export))
        return
    train(args)


if __name__ == "__main__":
    main()
