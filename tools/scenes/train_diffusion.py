"""Train the bundled scene diffusion model: a rectified-flow pixel U-Net on rendered scenes.

Why this recipe: flow matching (rectified flow) regresses the straight-line velocity
``noise - x_0`` at ``x_t = (1 - t) x_0 + t noise``; its sampling paths are nearly straight,
so the shipped sampler needs only ~10 Euler steps and no distillation run. Times are drawn
logit-normal (SD3: most of the loss where the image is half noise, where layout and parts
are decided) mixed with 10% uniform times so both ends are learnt too. AdamW with a short
warm-up, bf16 autocast + channels-last (the CPU has AMX), horizontal flips, and an
exponential moving average of the weights (the EMA copy ships, fp16 like the GAN).

The network is :class:`gdx.plugins.generators.scene_diffusion_arch.SceneFlowUNet`, so the
plugin builds exactly the trained module tree. Resumable: ``<out>/checkpoint.pt`` (plain
tensors and ints, loaded with ``weights_only=True``) every ``--checkpoint-minutes``;
``--resume`` continues with the same batches (drawn by step number). The loss curve goes to
``<out>/loss.csv`` (one row per ``--log-every`` steps), EMA snapshots to
``<out>/snapshot_STEP.safetensors`` every ``--snapshot-minutes`` (judged afterwards by
``tools.scenes.select_snapshot --kind diffusion``).

    python -m tools.scenes.train_diffusion --out runs/diffusion --seed 0 --minutes 85 --snapshot-minutes 10 --threads 2
    python -m tools.scenes.train_diffusion --out runs/diffusion --minutes 30 --resume
    python -m tools.scenes.train_diffusion --out runs/diffusion --export plugins/generators/weights/scene_diffusion.safetensors
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

from gdx.plugins.generators.scene_diffusion_arch import DEFAULT_CONFIG, SceneFlowUNet
from tools.scenes.pool import ScenePool
from tools.scenes.train_gan import _save_grid


def model_config(args_or_state: dict[str, object]) -> dict[str, object]:
    """The JSON config the ``scene-diffusion`` plugin reads (architecture and sampler)."""
    cfg = dict(DEFAULT_CONFIG)
    for key in ("widths", "temb", "steps", "shift"):
        if key in args_or_state:
            cfg[key] = args_or_state[key]
    cfg["latent_shape"] = [3, 64, 64]
    return cfg


def save_fp16(state_dict: dict[str, torch.Tensor], path: Path, config: dict[str, object]) -> None:
    from safetensors.torch import save_file

    sd = {k: v.to(torch.float16).contiguous() for k, v in state_dict.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"format": "pt", "config": json.dumps(config)})


def export_ema(checkpoint: Path, dest: Path, **overrides: object) -> None:
    """Write the EMA network of ``checkpoint`` as fp16 safetensors plus its JSON config."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = model_config(state["config"])
    config.update(overrides)
    save_fp16(state["ema"], dest, config)
    provenance = {"train_steps": int(state["step"]), "seed": int(state["seed"]),
                  "train_seconds": round(float(state["elapsed"]), 1)}
    dest.with_suffix(".json").write_text(json.dumps({**config, **provenance}, indent=2) + "\n")


def sample_times(n: int, rng: torch.Generator, uniform_frac: float = 0.1) -> torch.Tensor:
    """t in (0, 1): logit-normal(0, 1), with a ``uniform_frac`` share drawn uniformly."""
    logit = torch.sigmoid(torch.randn(n, generator=rng))
    uniform = torch.rand(n, generator=rng)
    pick = torch.rand(n, generator=rng) < uniform_frac
    return torch.where(pick, uniform, logit).clamp(1e-4, 1 - 1e-4)


def flow_batch(x0: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, target velocity) for a batch of clean images."""
    n = x0.shape[0]
    flip = torch.rand(n, generator=rng) < 0.5
    x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
    noise = torch.randn(x0.shape, generator=rng)
    t = sample_times(n, rng)
    tt = t[:, None, None, None]
    return (1 - tt) * x0 + tt * noise, t, noise - x0


class ThreadTuner:
    """Use whichever of 1..``max_threads`` torch threads steps fastest *now*, re-probed every 300 steps.

    Why: the 2-core machine is shared, and this run is niced. With another busy process on
    one core, two threads that meet at a barrier after every op run at the pace of the
    niced thread that shares that core: measured 0.32 it/s with 2 threads against 2.5 it/s
    on the idle machine, where 1 thread would keep a whole core. On an idle machine 2 threads win.
    """

    def __init__(self, max_threads: int, every: int = 300, probe: int = 5) -> None:
        self.choices = list(range(1, max_threads + 1))
        self.every, self.probe = every, probe
        self.times: dict[int, list[float]] = {}
        self.current = max_threads
        torch.set_num_threads(self.current)

    def before_step(self, step: int) -> None:
        if len(self.choices) < 2:
            return
        phase = step % self.every
        slot = phase // self.probe
        if phase == 0:
            self.times = {}
        if slot < len(self.choices):
            self.current = self.choices[slot]
        elif slot == len(self.choices) and phase % self.probe == 0:
            # the first step of each probe warms up; judge by the median of the rest
            def median(ts: list[float]) -> float:
                rest = sorted(ts[1:]) or [float("inf")]
                return rest[len(rest) // 2]

            self.current = min(self.choices, key=lambda c: median(self.times.get(c, [])))
        if torch.get_num_threads() != self.current:
            torch.set_num_threads(self.current)

    def after_step(self, seconds: float) -> None:
        self.times.setdefault(self.current, []).append(seconds)


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    torch.manual_seed(args.seed)
    hyper = {"widths": [int(w) for w in args.widths.split(",")], "temb": args.temb,
             "steps": args.sample_steps, "shift": args.shift}
    step, elapsed = 0, 0.0
    state = None
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        hyper = dict(state["config"])
    net = SceneFlowUNet(widths=hyper["widths"], temb=int(hyper["temb"]), steps=int(hyper["steps"]),
                        shift=float(hyper["shift"]))
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    if state is not None:
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        print(f"resumed at step {step} ({elapsed / 60:.1f} min trained)", flush=True)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    pool = ScenePool(args.pool, seed=args.seed)
    print(f"net {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M params {hyper}; pool {len(pool)}", flush=True)
    ema_beta = 0.5 ** (args.batch / (args.ema_kimg * 1000))
    fixed_noise = torch.randn(32, 3, 64, 64, generator=torch.Generator().manual_seed(1234))
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
    log_path = out / "loss.csv"
    if not log_path.exists() or state is None:
        log_path.write_text("step,minutes,loss,loss_t_lo,loss_t_mid,loss_t_hi,lr,it_per_s\n")

    def save() -> None:
        payload = {"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                   "elapsed": elapsed, "seed": args.seed, "config": hyper}
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(ckpt_path)

    def preview() -> None:
        with torch.no_grad():
            _save_grid(ema(fixed_noise), out / "samples.png")

    t_last_ckpt = t_last_snap = t_log = time.time()
    t0 = time.time() - elapsed
    deadline = time.time() + args.minutes * 60
    sums = torch.zeros(4)
    counts = torch.zeros(4)
    tuner = ThreadTuner(args.threads)
    while step < args.steps and time.time() < deadline:
        tuner.before_step(step)
        t_step = time.time()
        batch_rng = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        xt, t, target = flow_batch(pool.sample(args.batch, batch_rng), batch_rng)
        if args.channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        with amp:
            pred = net.velocity(xt, t)
        per_image = (pred.float() - target).square().mean(dim=(1, 2, 3))
        loss = per_image.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            beta = min(ema_beta, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p.detach(), 1 - beta)
            bins = torch.bucketize(t, torch.tensor([1 / 3, 2 / 3]))
            sums[0] += loss.item()
            counts[0] += 1
            sums[1:] += torch.zeros(3, dtype=torch.float64).index_add_(0, bins, per_image.double()).float()
            counts[1:] += torch.bincount(bins, minlength=3).float()
        tuner.after_step(time.time() - t_step)
        step += 1
        elapsed = time.time() - t0
        if step % args.log_every == 0:
            rate = args.log_every / (time.time() - t_log)
            t_log = time.time()
            means = (sums / counts.clamp(min=1)).tolist()
            with log_path.open("a") as f:
                f.write(f"{step},{elapsed / 60:.2f},{means[0]:.5f},{means[1]:.5f},{means[2]:.5f},{means[3]:.5f},"
                        f"{lr:.2e},{rate:.2f}\n")
            print(f"step {step} min {elapsed / 60:.1f} it/s {rate:.2f} loss {means[0]:.4f} "
                  f"(t<1/3 {means[1]:.4f}, mid {means[2]:.4f}, t>2/3 {means[3]:.4f}) "
                  f"cpu_min {time.process_time() / 60:.1f} threads {torch.get_num_threads()}", flush=True)
            sums.zero_()
            counts.zero_()
        if time.time() - t_last_ckpt > args.checkpoint_minutes * 60:
            save()
            preview()
            t_last_ckpt = time.time()
        if args.snapshot_minutes and time.time() - t_last_snap > args.snapshot_minutes * 60:
            save_fp16(ema.state_dict(), out / f"snapshot_{step:06d}.safetensors", model_config(hyper))
            t_last_snap = time.time()
    save()
    if args.snapshot_minutes:
        save_fp16(ema.state_dict(), out / f"snapshot_{step:06d}.safetensors", model_config(hyper))
    preview()
    print(f"done: step {step}, {elapsed / 60:.1f} min", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, loss.csv, samples.png, snapshots)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--widths", default=",".join(map(str, DEFAULT_CONFIG["widths"])), help="channels at 32/16/8")
    p.add_argument("--temb", type=int, default=int(DEFAULT_CONFIG["temb"]))
    p.add_argument("--sample-steps", type=int, default=int(DEFAULT_CONFIG["steps"]), help="Euler steps shipped")
    p.add_argument("--shift", type=float, default=float(DEFAULT_CONFIG["shift"]), help="sampling time shift")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--ema-kimg", type=float, default=50.0, help="EMA half-life in thousands of images")
    p.add_argument("--pool", type=int, default=30000, help="rendered training scenes held in memory")
    p.add_argument("--steps", type=int, default=10**9)
    p.add_argument("--minutes", type=float, default=60.0, help="stop after this much wall time")
    p.add_argument("--checkpoint-minutes", type=float, default=3.0)
    p.add_argument("--snapshot-minutes", type=float, default=0.0, help="keep the EMA net every N minutes (0: never)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--export", default=None, help="write the EMA net to this .safetensors (+ .json) and exit")
    args = p.parse_args(argv)
    if args.export:
        export_ema(Path(args.out) / "checkpoint.pt", Path(args.export))
        return
    if math.isnan(args.lr) or args.lr <= 0:
        raise SystemExit("--lr must be positive")
    train(args)


if __name__ == "__main__":
    main()
