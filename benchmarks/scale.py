"""Scale benchmarks for `gdx run`: throughput, 1 vs 2 processes, peak memory 1k vs 10k.

Each measurement runs `gdx run` in a fresh subprocess (so peak RSS is that run's own),
on the bundled scene world when it is installed (else the synthetic toy pair):

    python benchmarks/scale.py                      # all three
    python benchmarks/scale.py --only memory --gen toy --seg toy

Targets (issue 7, CPU, 2 cores): 2 processes >= 1.7x one process; peak memory at
10k samples <= 1.1x at 1k.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import gdx


def gdx_run(args: list[str], *, workers: int = 1, env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB of the largest child) of one `gdx run`."""
    out = tempfile.mkdtemp(prefix="gdx-bench-")
    cmd = [sys.executable, "-m", "gdx.cli", "run", "--quiet", "--out", out, *args]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024.0


def default_pair() -> tuple[str, str]:
    reg = gdx.default_registry()
    if "scene" in reg.infos("generator") and "scene" in reg.infos("segmenter"):
        return "scene", "scene"
    return "toy", "toy"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gen, seg = default_pair()
    ap.add_argument("--gen", default=gen)
    ap.add_argument("--seg", default=seg)
    ap.add_argument("--samples", type=int, default=2000, help="samples for the throughput / process runs")
    ap.add_argument("--only", choices=["throughput", "processes", "memory"], default=None)
    args = ap.parse_args()
    base = ["--gen", args.gen, "--seg", args.seg]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; models {args.gen}/{args.seg}")
    if args.only in (None, "throughput", "processes"):
        wall1, _ = gdx_run([*base, "--samples", str(args.samples)])
        print(f"1 process : {args.samples} samples in {wall1:7.1f} s = {args.samples / wall1:7.1f} samples/s")
    if args.only in (None, "processes"):
        wall2, _ = gdx_run([*base, "--samples", str(args.samples)], workers=2)
        print(f"2 processes: {args.samples} samples in {wall2:7.1f} s = {args.samples / wall2:7.1f} samples/s "
              f"(speed-up {wall1 / wall2:.2f}x, torchrun start included)")
    if args.only in (None, "memory"):
        peaks = {}
        for n in (1000, 10000):
            # a fresh interpreter per size, so each peak is that run's own
            code = (
                "import resource, sys; from gdx.cli import main\n"
                "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
            )
            out = tempfile.mkdtemp(prefix="gdx-mem-")
            res = subprocess.run([sys.executable, "-c", code, "run", "--quiet", "--out", out, *base,
                                  "--samples", str(n)], check=True, capture_output=True, text=True)
            peaks[n] = int(res.stdout.strip().splitlines()[-1]) / 1024.0
            print(f"peak RSS at {n:>5} samples: {peaks[n]:8.1f} MiB")
        print(f"ratio 10k/1k: {peaks[10000] / peaks[1000]:.3f}")


if __name__ == "__main__":
    main()
