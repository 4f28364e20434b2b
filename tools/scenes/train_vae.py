"""Train the bundled scene VAE; its decoder is served as the "scene-vae" generator.

Why this loss: a plain VAE with a mean-squared-error likelihood spreads its error as blur
(the mean of many plausible sharp scenes), so small concepts (door, window, sun) wash out
and the segmenter no longer finds them in samples. Two changes keep it honest and sharper:

* the likelihood is a Gaussian with a fixed small sigma (``--sigma``, default 0.1): the
  ELBO's reconstruction term then outweighs the KL term the way a sharp-image model needs,
  while the KL still holds the posterior near N(0, I), so prior samples stay scene-like;
* a semantic term: the frozen bundled scene segmenter must recover the renderer's exact
  label map from the reconstruction (cross-entropy, ``--seg-weight``). This is a
  perceptual loss in the one feature space that matters here: it spends the decoder's
  capacity on the concepts rather than on texture.

The decoder is :class:`gdx.plugins.scene_arch.SceneVAEDecoder` (``layer1`` ... ``layer8``, a
plain conv decoder with BatchNorm; the ProGAN layout, tried first, stalled at the mean image
within this CPU budget); the encoder is a small conv net.

    python -m tools.scenes.train_vae --out runs/vae --seed 0 --segmenter plugins/segmenters/weights
    python -m tools.scenes.train_vae --out runs/vae --seed 0 --resume ...
    python -m tools.scenes.train_vae --out runs/vae --export plugins/generators/weights/scene_vae.safetensors
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gdx.plugins.scene_arch import SceneVAEDecoder
from tools.scenes.pool import ScenePool
from gdx.scenes.render import LABELS



class Encoder(nn.Module):
    """64x64 RGB in [-1, 1] -> (mu, logvar), each N x z_dim."""

    def __init__(self, z_dim: int, widths: tuple[int, ...] = (32, 64, 128, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for w in widths:
            layers += [
                nn.Conv2d(cin, w, 3, 1, 1, bias=False),
                nn.BatchNorm2d(w),
                nn.LeakyReLU(0.2),
                nn.Conv2d(w, w, 4, 2, 1, bias=False),
                nn.BatchNorm2d(w),
                nn.LeakyReLU(0.2),
            ]
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin * 16, 2 * z_dim)
        # Start with a narrow posterior (std ~0.05): the decoder then sees the encoder's
        # code from the first step instead of pure noise, and learns to use it (with
        # std 1 at the start the code drowned in noise and training stalled at the mean
        # image); the KL term widens the posterior as training goes on.
        with torch.no_grad():
            self.head.bias[z_dim:] = -6.0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.features(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 6)


def load_frozen_segmenter(folder: Path) -> nn.Module:
    """The bundled scene segmenter network from an exported weights folder, frozen."""
    from safetensors.torch import load_file

    from gdx.plugins.scene_arch import SceneSegmenterNet

    config = json.loads((folder / "scene_segmenter.json").read_text())
    net = SceneSegmenterNet(len(LABELS), config)
    net.load_state_dict(load_file(str(folder / "scene_segmenter.safetensors")))
    return net.eval().requires_grad_(False)


def export_decoder(checkpoint: Path, dest: Path) -> None:
    """Write the decoder as fp16 safetensors plus a JSON config (latent shape, sizes)."""
    from safetensors.torch import save_file

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    sd = {k: v.to(torch.float16).contiguous() for k, v in state["decoder"].items()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(dest), metadata={"format": "pt", "arch": "progan-decoder"})
    config = {
        "arch": "scene-vae-decoder",
        "z_dim": int(state["z_dim"]),
        "resolution": 64,
        "latent_shape": [int(state["z_dim"])],
        "steps": int(state["step"]),
        "seed": int(state["seed"]),
        "train_seconds": float(state["elapsed"]),
        "sigma": float(state["sigma"]),
        "seg_weight": float(state["seg_weight"]),
    }
    dest.with_suffix(".json").write_text(json.dumps(config, indent=2) + "\n")


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    decoder = SceneVAEDecoder(args.z_dim)
    encoder = Encoder(args.z_dim)
    params = list(decoder.parameters()) + list(encoder.parameters())
    opt = torch.optim.Adam(params, lr=args.lr, betas=(0.5, 0.99))
    seg = load_frozen_segmenter(Path(args.segmenter)) if args.seg_weight > 0 else None
    step, elapsed = 0, 0.0
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        decoder.load_state_dict(state["decoder"])
        encoder.load_state_dict(state["encoder"])
        opt.load_state_dict(state["opt"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        print(f"resumed at step {step}", flush=True)
    pool = ScenePool(args.pool, seed=args.seed + 2)
    print(f"decoder {sum(p.numel() for p in decoder.parameters()) / 1e6:.2f}M params; pool {len(pool)}", flush=True)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
    fixed_z = torch.randn(32, args.z_dim, generator=torch.Generator().manual_seed(1234))

    def save() -> None:
        state = {
            "decoder": decoder.state_dict(),
            "encoder": encoder.state_dict(),
            "opt": opt.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "seed": args.seed,
            "z_dim": args.z_dim,
            "sigma": args.sigma,
            "seg_weight": args.seg_weight,
        }
        torch.save(state, ckpt_path.with_suffix(".tmp"))
        ckpt_path.with_suffix(".tmp").replace(ckpt_path)
        from tools.scenes.train_gan import _save_grid

        decoder.eval()
        with torch.no_grad():
            _save_grid(decoder(fixed_z), out / "samples.png")
        decoder.train()

    t0 = time.time() - elapsed
    t_ckpt = time.time()
    deadline = time.time() + args.minutes * 60
    while step < args.steps and time.time() < deadline:
        rng = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        images, labels = pool.sample(args.batch, rng, with_labels=True)
        eps = torch.randn(args.batch, args.z_dim, generator=rng)
        with amp:
            mu, logvar = encoder(images)
            z = mu + eps * (0.5 * logvar.float()).exp()
            recon = decoder(z)
            seg_loss = F.cross_entropy(seg(recon), labels) if seg is not None else torch.zeros(())
        recon = recon.float()
        mu, logvar = mu.float(), logvar.float()
        # Per-image negative ELBO (nats) with a Gaussian likelihood of std sigma, plus the
        # semantic term summed over pixels so the three terms share one scale.
        rec = (recon - images).square().sum(dim=(1, 2, 3)).mean() / (2 * args.sigma**2)
        kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1).mean()
        warm = min(1.0, (step + 1) / args.kl_warmup)
        pixels = images.shape[2] * images.shape[3]
        loss = rec + warm * kl + args.seg_weight * pixels * seg_loss.float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1e4)
        opt.step()
        step += 1
        elapsed = time.time() - t0
        if step % args.log_every == 0:
            print(
                f"step {step} min {elapsed / 60:.1f} rec {rec.item():.1f} kl {kl.item():.1f} "
                f"seg {seg_loss.item():.4f}",
                flush=True,
            )
        if time.time() - t_ckpt > args.checkpoint_minutes * 60:
            save()
            t_ckpt = time.time()
    save()
    print(f"done: step {step}, {elapsed / 60:.1f} min", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--z-dim", type=int, default=64)
    p.add_argument("--segmenter", default="plugins/segmenters/weights", help="exported scene segmenter folder")
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--seg-weight", type=float, default=1.0)
    p.add_argument("--kl-warmup", type=int, default=500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--pool", type=int, default=12000)
    p.add_argument("--steps", type=int, default=10**9)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--checkpoint-minutes", type=float, default=3.0)
    p.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--export", default=None, help="write the decoder to this .safetensors and exit")
    args = p.parse_args(argv)
    if args.export:
        export_decoder(Path(args.out) / "checkpoint.pt", Path(args.export))
        return
    train(args)


if __name__ == "__main__":
    main()
