"""Train the bundled scene GAN: gandissect's ProGAN generator at 64x64 on rendered scenes.

Why this recipe: the generator is exactly :class:`gdx.plugins.generators.progan_arch.
ProgressiveGenerator` (so its state dict has gandissect's ``layerK.conv.weight`` layout and
the ProGAN adapter can read it), trained at full resolution from the start (no progressive
growing: at 64x64 it is not needed), with the StyleGAN2-style losses that train a small GAN
reliably: non-saturating logistic loss, lazy R1 penalty on real images, Adam(0.002,
betas=(0, 0.99)) and an exponential moving average of the generator weights (the EMA copy
is what ships). bf16 autocast and channels-last roughly double the CPU speed.

Resumable: a checkpoint (``<out>/checkpoint.pt``, plain tensors and ints, loaded with
``weights_only=True``) is written every ``--checkpoint-minutes``; ``--resume`` continues
from it. Deterministic given ``--seed`` (up to the non-determinism of the CPU kernels).

    python -m tools.scenes.train_gan --out runs/gan --seed 0 --minutes 60
    python -m tools.scenes.train_gan --out runs/gan --seed 0 --minutes 60 --resume
    python -m tools.scenes.train_gan --out runs/gan --export plugins/generators/weights/scene_gan.safetensors
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gdx.plugins.generators.progan_arch import ProgressiveGenerator
from tools.scenes.pool import ScenePool

#: Feature depths [z, 4x4, 8x8, 16x16, 32x32, 64x64]: wide at 8x8/16x16 (the layers that
#: are dissected) and narrow at high resolution (where the compute is).
DEFAULT_SIZES = [128, 256, 128, 64, 32, 16]


class EqConv2d(nn.Module):
    """Conv with equalised learning rate (weights ~ N(0,1), scaled by He's constant at run time)."""

    def __init__(self, cin: int, cout: int, k: int, padding: int = 0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = 1.0 / math.sqrt(cin * k * k)
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqLinear(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = 1.0 / math.sqrt(cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class Discriminator(nn.Module):
    """ProGAN-style discriminator mirroring the generator: 64x64 -> one logit per image."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128, 128)) -> None:
        super().__init__()
        self.from_rgb = EqConv2d(3, widths[0], 1)
        blocks = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            blocks.append(nn.ModuleList([EqConv2d(cin, cin, 3, 1), EqConv2d(cin, cout, 3, 1)]))
        self.blocks = nn.ModuleList(blocks)
        last = widths[-1]
        self.final_conv = EqConv2d(last + 1, last, 3, 1)
        self.final_fc = EqLinear(last * 16, last)
        self.out = EqLinear(last, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        h = act(self.from_rgb(x))
        for c1, c2 in self.blocks:
            h = act(c2(act(c1(h))))
            h = F.avg_pool2d(h, 2)
        # Minibatch standard deviation (groups of 4) helps against mode collapse.
        n = h.shape[0]
        group = min(4, n)
        while n % group:
            group -= 1
        y = h.float().view(group, -1, *h.shape[1:])
        y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))
        y = y.repeat(group).view(n, 1, 1, 1).expand(n, 1, *h.shape[2:]).to(h.dtype)
        h = act(self.final_conv(torch.cat([h, y], 1)))
        h = act(self.final_fc(h.flatten(1)))
        return self.out(h).squeeze(1)


def _r1_penalty(disc: nn.Module, real: torch.Tensor) -> torch.Tensor:
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(disc(real).sum(), real, create_graph=True)
    return grad.square().sum(dim=(1, 2, 3)).mean()


def _save_grid(images: torch.Tensor, path: Path, cols: int = 8) -> None:
    from PIL import Image

    images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1)
    n = images.shape[0] - images.shape[0] % cols
    rows = [torch.cat(list(images[r * cols : (r + 1) * cols]), dim=1) for r in range(n // cols)]
    Image.fromarray(torch.cat(rows, dim=0).numpy()).save(path)


def export_ema(checkpoint: Path, dest: Path) -> None:
    """Write the EMA generator of ``checkpoint`` as fp16 safetensors plus a JSON config."""
    from safetensors.torch import save_file

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    sd = {k: v.to(torch.float16).contiguous() for k, v in state["g_ema"].items()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(dest), metadata={"format": "pt", "arch": "progan", "sizes": json.dumps(state["sizes"])})
    config = plugin_config(state["sizes"], steps=int(state["step"]), seed=int(state["seed"]),
                           train_seconds=float(state["elapsed"]))
    dest.with_suffix(".json").write_text(json.dumps(config, indent=2) + "\n")


def plugin_config(sizes: list[int], **provenance: object) -> dict[str, object]:
    """The JSON config the ``scene`` generator plugin reads beside the weights (plus provenance)."""
    return {"arch": "progan", "sizes": list(sizes), "resolution": 64, "latent_shape": [sizes[0]], **provenance}


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    torch.manual_seed(args.seed)
    sizes = [int(s) for s in args.sizes.split(",")]
    gen = ProgressiveGenerator(sizes=sizes)
    disc = Discriminator()
    g_ema = copy.deepcopy(gen).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(gen.parameters(), lr=args.lr, betas=(0.0, 0.99), eps=1e-8)
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.lr, betas=(0.0, 0.99), eps=1e-8)
    step, elapsed = 0, 0.0
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        gen.load_state_dict(state["g"])
        disc.load_state_dict(state["d"])
        g_ema.load_state_dict(state["g_ema"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        torch.set_rng_state(state["rng"])
        print(f"resumed at step {step} ({elapsed / 60:.1f} min trained)", flush=True)
    if args.channels_last:
        gen = gen.to(memory_format=torch.channels_last)
        disc = disc.to(memory_format=torch.channels_last)
    pool = ScenePool(args.pool, seed=args.seed)
    n_g = sum(p.numel() for p in gen.parameters())
    n_d = sum(p.numel() for p in disc.parameters())
    print(f"G {n_g / 1e6:.2f}M params sizes={sizes}; D {n_d / 1e6:.2f}M params; pool {len(pool)}", flush=True)
    ema_beta = 0.5 ** (args.batch / (args.ema_kimg * 1000))
    fixed_z = torch.randn(32, sizes[0], generator=torch.Generator().manual_seed(1234))
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)

    def save() -> None:
        state = {
            "g": gen.state_dict(),
            "d": disc.state_dict(),
            "g_ema": g_ema.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "seed": args.seed,
            "sizes": sizes,
            "rng": torch.get_rng_state(),
        }
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(ckpt_path)

    def snapshot() -> None:
        # A copy of the EMA generator at this step, so a run can be judged (and a
        # checkpoint chosen) after the fact by `tools.scenes.evaluate`.
        from safetensors.torch import save_file

        sd = {k: v.to(torch.float16).contiguous() for k, v in g_ema.state_dict().items()}
        save_file(sd, str(out / f"snapshot_{step:06d}.safetensors"), metadata={"sizes": json.dumps(sizes)})

    t_last_ckpt = time.time()
    t_last_snap = time.time()
    t0 = time.time() - elapsed
    t_log = time.time()
    deadline = time.time() + args.minutes * 60
    while step < args.steps and time.time() < deadline:
        batch_rng = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        real = pool.sample(args.batch, batch_rng)
        if args.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        z = torch.randn(args.batch, sizes[0], generator=batch_rng)
        # Discriminator step.
        gen.requires_grad_(False)
        disc.requires_grad_(True)
        with amp:
            fake = gen(z)
            loss_d = F.softplus(disc(fake.detach())).mean() + F.softplus(-disc(real)).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.float().backward()
        if step % args.r1_every == 0:
            r1 = _r1_penalty(disc, real)
            (r1 * (args.r1_gamma / 2) * args.r1_every).backward()
        opt_d.step()
        # Generator step.
        gen.requires_grad_(True)
        disc.requires_grad_(False)
        z = torch.randn(args.batch, sizes[0], generator=batch_rng)
        with amp:
            loss_g = F.softplus(-disc(gen(z))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.float().backward()
        opt_g.step()
        with torch.no_grad():
            for pe, p in zip(g_ema.parameters(), gen.parameters()):
                pe.lerp_(p.detach(), 1 - ema_beta)
        step += 1
        elapsed = time.time() - t0
        if step % args.log_every == 0:
            rate = args.log_every / (time.time() - t_log)
            t_log = time.time()
            print(
                f"step {step} min {elapsed / 60:.1f} it/s {rate:.2f} loss_d {loss_d.item():.3f} "
                f"loss_g {loss_g.item():.3f} cpu_min {time.process_time() / 60:.1f}",
                flush=True,
            )
        if time.time() - t_last_ckpt > args.checkpoint_minutes * 60:
            save()
            with torch.no_grad():
                _save_grid(g_ema(fixed_z), out / "samples.png")
            t_last_ckpt = time.time()
        if args.snapshot_minutes and time.time() - t_last_snap > args.snapshot_minutes * 60:
            snapshot()
            t_last_snap = time.time()
    save()
    if args.snapshot_minutes:
        snapshot()
    with torch.no_grad():
        _save_grid(g_ema(fixed_z), out / "samples.png")
    print(f"done: step {step}, {elapsed / 60:.1f} min", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, samples.png)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--r1-gamma", type=float, default=1.0)
    p.add_argument("--r1-every", type=int, default=4)
    p.add_argument("--ema-kimg", type=float, default=10.0)
    p.add_argument("--pool", type=int, default=20000, help="rendered training scenes held in memory")
    p.add_argument("--steps", type=int, default=10**9)
    p.add_argument("--minutes", type=float, default=60.0, help="stop after this much wall time")
    p.add_argument("--checkpoint-minutes", type=float, default=3.0)
    p.add_argument(
        "--snapshot-minutes", type=float, default=0.0, help="also keep the EMA generator every N minutes (0: never)"
    )
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--export", default=None, help="write the EMA generator to this .safetensors and exit")
    args = p.parse_args(argv)
    if args.export:
        export_ema(Path(args.out) / "checkpoint.pt", Path(args.export))
        return
    train(args)


if __name__ == "__main__":
    main()
