"""Train the scene GAN's encoder: a rendered scene -> a latent to start ``gdx.invert`` from.

The inversion's warm start is the generator's encoder when it has one (issue: "Paint real
photos"), else the best of 32 random latents. The encoder
(:class:`gdx.plugins.scene_arch.SceneEncoder`) is trained against the frozen, shipped scene
GAN with two terms per step:

* **latent regression on the GAN's own samples**: for z ~ N(0, I), E(G(z)) should be z
  (both at unit RMS: the GAN pixel-normalises its latent, so only the direction counts).
  This keeps E's outputs latents the GAN knows;
* **reconstruction of rendered scenes** (``--recon-weight``): G(E(x)) should be x, pixel MSE,
  through the frozen GAN, on a pool of training-pool scenes (render seeds from 10,000,000
  up; the held-out scenes the tests and benchmarks invert use small seeds).

Snapshots every ``--checkpoint-minutes``; ``--resume`` continues from the last one (the
batches are drawn by step number, so a resumed run is the same run). CPU only, never in CI.

    python -m tools.scenes.train_encoder --out runs/encoder --minutes 30
    python -m tools.scenes.train_encoder --out runs/encoder --minutes 30 --resume
    python -m tools.scenes.train_encoder --out runs/encoder --export plugins/generators/weights/scene_encoder.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import gdx
from gdx.plugins.scene_arch import SceneEncoder
from tools.scenes.pool import ScenePool

GAN_WEIGHTS = Path(gdx.plugins.__file__).resolve().parent / "generators" / "weights" / "scene_gan.safetensors"


def unit_rms(z: torch.Tensor) -> torch.Tensor:
    return z / z.pow(2).mean(1, keepdim=True).add(1e-8).sqrt()


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen = gdx.load_generator("scene")
    for p in gen.module.parameters():
        p.requires_grad_(False)
    torch.manual_seed(args.seed)
    enc = SceneEncoder(args.z_dim)
    opt = torch.optim.Adam(enc.parameters(), lr=args.lr)
    step, log, seconds = 0, [], 0.0
    ckpt = out / "last.pt"
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        enc.load_state_dict(state["encoder"])
        opt.load_state_dict(state["optimizer"])
        step, seconds = int(state["step"]), float(state["seconds"])
        log = json.loads((out / "log.json").read_text()) if (out / "log.json").exists() else []
        print(f"resumed at step {step} ({seconds / 60:.1f} min)", flush=True)
    pool = ScenePool(args.pool, seed=args.pool_seed)
    started, last_save = time.time() - seconds, time.time()

    def save() -> None:
        torch.save({"encoder": enc.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "seconds": time.time() - started}, out / "last.tmp")
        (out / "last.tmp").replace(ckpt)
        (out / "log.json").write_text(json.dumps(log))

    while step < args.steps and time.time() - started < args.minutes * 60:
        rng = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        z = torch.randn(args.batch, args.z_dim, generator=rng)
        with torch.no_grad():
            fake = gen.generate(z)
        latent_loss = F.mse_loss(enc(fake), unit_rms(z))
        real = pool.sample(args.batch, rng)
        recon_loss = F.mse_loss(gen.generate(enc(real)), real)
        loss = latent_loss + args.recon_weight * recon_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % args.log_every == 0:
            log.append({"step": step, "seconds": round(time.time() - started, 1), "latent": latent_loss.item(),
                        "recon": recon_loss.item()})
            print(json.dumps(log[-1]), flush=True)
        if time.time() - last_save > args.checkpoint_minutes * 60:
            save()
            last_save = time.time()
    save()
    print(f"stopped at step {step} after {(time.time() - started) / 60:.1f} min -> {ckpt}", flush=True)


def export(checkpoint: Path, dest: Path) -> None:
    """fp16 safetensors + the JSON config beside it (with the GAN weights it belongs to)."""
    from safetensors.torch import save_file

    state = torch.load(checkpoint, weights_only=True)
    tensors = {k: v.half().contiguous() for k, v in state["encoder"].items()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest))
    z_dim = int(tensors["head.weight"].shape[0])
    config = {"arch": "scene-encoder", "z_dim": z_dim, "latent_shape": [z_dim], "steps": int(state["step"]),
              "train_seconds": round(float(state["seconds"]), 1),
              "gan_weights_sha256": hashlib.sha256(GAN_WEIGHTS.read_bytes()).hexdigest()}
    dest.with_suffix(".json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"exported step {config['steps']} -> {dest}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--z-dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--recon-weight", type=float, default=1.0)
    p.add_argument("--pool", type=int, default=4000)
    p.add_argument("--pool-seed", type=int, default=7)
    p.add_argument("--steps", type=int, default=10**9)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--checkpoint-minutes", type=float, default=3.0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--export", default=None, help="write the encoder to this .safetensors and exit")
    args = p.parse_args(argv)
    if args.export:
        export(Path(args.out) / "last.pt", Path(args.export))
    else:
        train(args)


if __name__ == "__main__":
    main()
