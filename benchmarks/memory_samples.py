"""Peak memory of a dissection does not grow with the sample count (latents are drawn per batch).

Each case runs in a fresh process: a generator with ProGAN-sized latents (512 values a
sample, gdx.seeded_normal) and a tiny network, segmented by the toy segmenter, dissected
by ``gdx.DissectionRun`` with ``samples=N``. A run of 100 000 samples takes hours on a
2-core machine, so each case stops after the first ``--batches`` batches of pass 1 —
which is where the whole latent tensor used to be built (100 000 x 512 floats = 195 MiB).
The ``whole`` rows do what gdx did before: ``sample_latents(N)`` up front. Each case also
checks that its batches hold exactly the rows of ``seeded_normal(N, ...)``.

    python benchmarks/memory_samples.py            # 1000 vs 100000 samples
    python benchmarks/memory_samples.py --samples 1000 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

BATCH = 32


def case(samples: int, batches: int, whole: bool) -> dict[str, float]:
    import torch
    from torch import nn

    import gdx
    from gdx.interfaces import WholeLatents

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(512, 8 * 16 * 16), nn.Unflatten(1, (8, 16, 16)), nn.Conv2d(8, 8, 3, padding=1),
                        nn.Conv2d(8, 3, 1), nn.Tanh())
    gen = gdx.wrap_generator(net, latent_shape=(512,), name="latent512", default_layer="2")
    seg = gdx.load_segmenter("toy")
    run = gdx.DissectionRun(gen, seg, ["2"], samples=samples, batch_size=BATCH, seed=3)
    if whole:
        run._latents = WholeLatents(gen, samples, 3)  # the former behaviour
    stop = min(samples, batches * BATCH)
    run.level_pass(0, stop)
    ok = torch.equal(run.latent_rows.rows(stop - BATCH, stop),
                     gdx.seeded_normal(stop, (512,), 3)[stop - BATCH:stop]) if samples > 16 else True
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "exact": float(ok)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, nargs="+", default=[1000, 100_000])
    ap.add_argument("--batches", type=int, default=20, help="batches of pass 1 each case runs")
    ap.add_argument("--case", nargs=3, metavar=("SAMPLES", "BATCHES", "WHOLE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(case(int(args.case[0]), int(args.case[1]), args.case[2] == "1")))
        return
    rows = {}
    for whole in (False, True):
        for n in args.samples:
            out = subprocess.run([sys.executable, __file__, "--case", str(n), str(args.batches), str(int(whole))],
                                 capture_output=True, text=True, check=True)
            rows[(whole, n)] = json.loads(out.stdout.strip().splitlines()[-1])
    lo, hi = min(args.samples), max(args.samples)
    for whole in (False, True):
        label = "whole tensor up front (before)" if whole else "per batch (gdx now)"
        a, b = rows[(whole, lo)]["peak_rss_mib"], rows[(whole, hi)]["peak_rss_mib"]
        exact = all(rows[(whole, n)]["exact"] for n in args.samples)
        print(f"| {label} | {a:.1f} MiB | {b:.1f} MiB | **{b / a:.3f}x** | {'yes' if exact else 'NO'} |")


if __name__ == "__main__":
    main()
