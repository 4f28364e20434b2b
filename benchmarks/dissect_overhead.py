"""Overhead of gdx.dissect over the bare forward passes, on real-sized random models.

Models: a ProGAN-256 shaped generator (random weights, gandissect architecture) and an
smp UPerNet-ResNet50 with 150 labels segmenting at 128 x 128. Baseline: the generator
and the segmenter on the same latents, batch for batch, with nothing else. Each
``--layers`` entry is one dissection (a comma list dissects several layers in one
run); each is timed in quantile and iqr mode, with the label statistics (spatial-prior
null, bootstrap intervals, p-values: the default) and, with ``--counts-only``, without.
Ratios are CPU time (robust to a busy machine). Targets: quantile <= 1.05 at layer4,
<= 1.15 at layer10; iqr <= 1.25.

    python benchmarks/dissect_overhead.py --samples 40 --batch-size 10 --threads 1 \
        --layers layer4 layer10 layer4,layer8,layer12
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F

import gdx
from gdx import kernels
from gdx.plugins.generators.progan_arch import ProgressiveGenerator


def build_models(sizes=(512, 512, 512, 512, 512, 256, 128, 64)):
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    # The layout of the LSUN ProGAN-256 checkpoints gandissect dissects (sizes as read from
    # the checkpoint: 512 channels up to 32x32, then 256, 128, 64): layer4 is 512 x 8 x 8,
    # layer10 256 x 64 x 64. (ProgressiveGenerator(resolution=256), gandissect's own table,
    # has 128 channels at 64x64; this benchmark used it before issue #18.)
    net_g = ProgressiveGenerator(sizes=list(sizes)).eval()
    gen = gdx.wrap_generator(net_g, latent_shape=(512,), name="progan256-random")
    net = smp.UPerNet("resnet50", encoder_weights=None, classes=150).eval()
    seg = gdx.wrap_segmenter(lambda x: net(x).argmax(1), labels=[f"c{i}" for i in range(150)],
                             name="upernet-r50-random", input_size=(128, 128))
    return gen, seg


def clock():
    """(wall seconds, CPU seconds of this process): CPU time is robust to a busy machine."""
    return time.perf_counter(), time.process_time()


def since(t0):
    w, c = clock()
    return w - t0[0], c - t0[1]


def forward_only(gen, seg, samples, batch_size, seed):
    z_all = gen.sample_latents(samples, seed=seed)
    t = clock()
    with torch.no_grad():
        for b in range(0, samples, batch_size):
            images = gen.generate(z_all[b:b + batch_size])
            x = F.interpolate(images, size=(128, 128), mode="bilinear", align_corners=False, antialias=True)
            seg.segment(x)
    return since(t)


def timed_dissect(gen, seg, layers, samples, batch_size, seed, threshold, label_stats=True, cache_bytes=None):
    """Both passes; ``label_stats=False`` leaves out the null, the intervals and the p-values."""
    t = clock()
    extra = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
    run = gdx.DissectionRun(gen, seg, layers, samples=samples, batch_size=batch_size, seed=seed,
                            threshold=threshold, label_stats=label_stats, **extra)
    levels = run.level_pass()
    run.results(levels, run.count_pass(levels))
    return since(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="take the best of this many timings")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--modes", nargs="+", default=["0.99", "iqr"], help="thresholds to time (0.99, iqr)")
    ap.add_argument("--layers", nargs="+", default=["layer4"],
                    help="layers to dissect, one run each; a comma list dissects several in one run")
    ap.add_argument("--counts-only", action="store_true", help="also time without the label statistics")
    ap.add_argument("--no-cache", action="store_true",
                    help="also time with the activation cache off (pass 2 regenerates, as before gdx 0.2)")
    ap.add_argument("--sizes", default="512,512,512,512,512,256,128,64",
                    help="generator channel sizes (z, then 4x4 ... 256x256); gandissect's resolution=256 table "
                         "is 512,512,512,512,256,128,64,32")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen, seg = build_models(tuple(int(x) for x in args.sizes.split(",")))
    # warm-up (allocator, kernels)
    forward_only(gen, seg, args.batch_size, args.batch_size, args.seed)
    variants = []
    for layers in args.layers:
        for thr in args.modes:
            thr = thr if thr == "iqr" else float(thr)
            variants.append((f"{layers} {thr}", layers, thr, True, None))
            if args.counts_only:
                variants.append((f"{layers} {thr}, counts only", layers, thr, False, None))
            if args.no_cache:
                variants.append((f"{layers} {thr}, no cache", layers, thr, True, 0))
    # Interleaved repeats (the baseline, then every variant, again): each row keeps its best
    # CPU time, so a burst of load on the machine cannot favour one row over another.
    rows: dict[str, tuple[float, float]] = {}
    for _ in range(args.repeats):
        timings = [("forward passes only", forward_only(gen, seg, args.samples, args.batch_size, args.seed))]
        for name, layers, thr, stats, cache in variants:
            timings.append((name, timed_dissect(gen, seg, layers.split(","), args.samples, args.batch_size,
                                                args.seed, thr, stats, cache)))
        for name, t in timings:
            if name not in rows or t[1] < rows[name][1]:
                rows[name] = t
    base = rows["forward passes only"]
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; {args.samples} samples, batch {args.batch_size}; compiled counting loops "
          f"(gdx.kernels): {'on' if kernels.available(torch.zeros(1)) else 'off (pip install numba, GDX_KERNELS unset)'}")
    print(f"{'':<40} {'wall s':>8} {'ratio':>6} {'cpu s':>8} {'ratio':>6}")
    for name, (wall, cpu) in rows.items():
        print(f"{name:<40} {wall:8.2f} {wall / base[0]:6.2f} {cpu:8.2f} {cpu / base[1]:6.2f}")
    print(json.dumps({k: {"wall_ratio": round(v[0] / base[0], 3), "cpu_ratio": round(v[1] / base[1], 3)}
                      for k, v in rows.items()}))


if __name__ == "__main__":
    main()
