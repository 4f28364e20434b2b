"""Train the bundled scene realism critic: rendered scenes (real) against scene-GAN samples.

Why: artifact repair (docs/intervention.md, "Artifact repair on the scene GAN") is chosen
and confirmed with a Fréchet distance on the segmenter's encoder features; a repair that
only games that feature space would fool it. This critic reads pixels with its own small
network (:class:`gdx.plugins.scene_arch.SceneRealismNet`), so a repair that both scores
agree on is more than an artefact of one feature space. It is served as the metric
``scene-realism`` (the mean logit of the generated images, higher = more like rendered
scenes).

The GAN samples come from latent seeds at and above :data:`FAKE_SEED_BASE`, which the
repair search and its held-out confirmation never use (they draw from small seeds); the
rendered scenes come from the training pool (:mod:`tools.scenes.pool`). Snapshots are
written every ``--checkpoint-minutes`` and ``--resume`` continues from the last one.

    python -m tools.scenes.train_realism --out runs/realism --minutes 10
    python -m tools.scenes.train_realism --out runs/realism --export plugins/metrics/weights/scene_realism.safetensors
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import gdx
from gdx.plugins.scene_arch import SceneRealismNet
from gdx.scenes.render import render_scenes
from tools.scenes.pool import ScenePool

#: Latent seeds of the training GAN samples (one seed per chunk of 500 latents).
FAKE_SEED_BASE = 5_000_000
#: Held-out check: rendered scenes of this seed and GAN samples of FAKE_SEED_BASE - 1.
CHECK_SEED = 777


@torch.no_grad()
def gan_samples(n: int, seed_base: int, chunk: int = 500) -> torch.Tensor:
    """``n`` scene-GAN samples (uint8, to keep the pool small) from consecutive latent seeds."""
    gen = gdx.load_generator("scene")
    out = []
    for i, start in enumerate(range(0, n, chunk)):
        z = gen.sample_latents(min(chunk, n - start), seed=seed_base + i)
        out.append(((gen.generate(z).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    return torch.cat(out)


@torch.no_grad()
def accuracy(net: SceneRealismNet, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    """Held-out accuracy and mean logits of real and fake images (float in [-1, 1])."""
    lr, lf = net(real), net(fake)
    return {
        "acc": float(((lr > 0).float().mean() + (lf < 0).float().mean()) / 2),
        "real_logit": float(lr.mean()),
        "fake_logit": float(lf.mean()),
    }


def export(checkpoint: Path, dest: Path) -> None:
    """Write the critic's weights (safetensors) and its config (JSON beside it)."""
    from safetensors.torch import save_file

    state = torch.load(checkpoint, weights_only=True)
    net = SceneRealismNet(tuple(state["widths"]))
    net.load_state_dict(state["model"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in net.state_dict().items()}, str(dest))  # fp16, as the other bundled weights
    config = {"arch": "scene-realism", "widths": net.widths, "steps": int(state["step"]),
              "check": state.get("check", {})}
    dest.with_suffix(".json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"exported step {state['step']} to {dest}")


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    torch.manual_seed(args.seed)
    t0 = time.time()
    real = ScenePool(args.real, seed=args.seed)
    fake = gan_samples(args.fake, FAKE_SEED_BASE + args.seed * 1000)
    check_real = render_scenes(500, seed=CHECK_SEED).images
    check_fake = gan_samples(500, FAKE_SEED_BASE - 1).float() / 127.5 - 1
    print(f"pools: {len(real)} rendered, {fake.shape[0]} GAN samples ({time.time() - t0:.0f}s)", flush=True)
    net = SceneRealismNet()
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.5, 0.99), weight_decay=args.weight_decay)
    step = 0
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
    rng = torch.Generator().manual_seed(args.seed)
    check: dict[str, float] = {}

    def save() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "step": step, "widths": net.widths,
                    "check": check}, tmp)
        tmp.replace(ckpt)

    last_save = time.time()
    start = time.time()
    while step < args.steps and time.time() - start < args.minutes * 60:
        xr = real.sample(args.batch // 2, rng)
        idx = torch.randint(fake.shape[0], (args.batch // 2,), generator=rng)
        xf = fake[idx].float() / 127.5 - 1
        x = torch.cat([xr, xf])
        flip = torch.rand(x.shape[0], generator=rng) < 0.5
        x[flip] = x[flip].flip(-1)  # a mirrored scene is still a scene
        y = torch.cat([torch.ones(xr.shape[0]), torch.zeros(xf.shape[0])])
        loss = F.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % args.log_every == 0:
            net.eval()
            check = accuracy(net, check_real, check_fake)
            net.train()
            print(f"step {step} loss {loss.item():.4f} held-out {check} ({time.time() - t0:.0f}s)", flush=True)
        if time.time() - last_save > args.checkpoint_minutes * 60:
            save()
            last_save = time.time()
    net.eval()
    check = accuracy(net, check_real, check_fake)
    save()
    print(f"done: step {step}, held-out {check} ({time.time() - t0:.0f}s)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real", type=int, default=12000, help="rendered scenes in the training pool")
    p.add_argument("--fake", type=int, default=12000, help="scene-GAN samples in the training pool")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=250)
    p.add_argument("--checkpoint-minutes", type=float, default=2.0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--export", default=None, help="write the last checkpoint to this .safetensors and exit")
    args = p.parse_args(argv)
    if args.export:
        export(Path(args.out) / "checkpoint.pt", Path(args.export))
        return
    train(args)


if __name__ == "__main__":
    main()
