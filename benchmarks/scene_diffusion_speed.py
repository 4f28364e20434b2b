"""Speed of the bundled scene-diffusion sampler on the CPU: one image, a thousand, and a dissection.

Reports (a) the latency of one full sample (batch 1, every Euler step) -- the generator
forward inside a GANPaint edit, target <= ~100 ms for 10 steps so an edit round trip stays
under 150 ms; (b) the throughput of 1,000 samples at batch 100; (c) with ``--dissect N``,
the wall time of ``gdx.dissect`` on the default layer (``mid@4``) over N samples, the core
of ``gdx run --gen scene-diffusion`` (target: 1,000 samples in <= 10 minutes on 2 cores).

    python benchmarks/scene_diffusion_speed.py --threads 2
    python benchmarks/scene_diffusion_speed.py --threads 2 --dissect 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import gdx


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30, help="batch-1 samples timed")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--dissect", type=int, default=0, help="also time gdx.dissect over this many samples")
    p.add_argument("--steps", type=int, default=0, help="Euler steps (0: the shipped config's)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = gdx.load_generator("scene-diffusion", steps=args.steps)
    out: dict[str, object] = {"threads": args.threads, "steps": gen.steps_per_image}
    with torch.no_grad():
        z = gen.sample_latents(args.repeats + 3, seed=0)
        for i in range(3):
            gen.generate(z[i : i + 1])
        times = []
        for i in range(3, args.repeats + 3):
            t = time.perf_counter()
            gen.generate(z[i : i + 1])
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        out["batch1_ms_p50"] = round(statistics.median(times), 1)
        out["batch1_ms_p95"] = round(times[min(len(times) - 1, int(0.95 * len(times)))], 1)
        many = gen.sample_latents(args.samples, seed=1)
        t = time.perf_counter()
        for start in range(0, args.samples, args.batch):
            gen.generate(many[start : start + args.batch])
        out[f"samples_{args.samples}_s"] = round(time.perf_counter() - t, 1)
    if args.dissect:
        seg = gdx.load_segmenter("scene")
        t = time.perf_counter()
        result = gdx.dissect(gen, seg, gen.default_layer or "mid@4", samples=args.dissect, seed=0,
                             batch_size=args.batch, progress=False)
        out[f"dissect_{args.dissect}_s"] = round(time.perf_counter() - t, 1)
        summary = result.summary(iou_min=0.05)
        out["interpretable_units"] = summary.interpretable
        out["concepts"] = dict(summary.per_concept)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
