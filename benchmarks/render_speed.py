"""Scene renderer throughput: rendered scenes (image + exact labels) per second.

Issue 3 asks for "thousands of scenes per second on the CPU". Reports, for each batch
size and thread count, scenes per wall-second and per CPU-second of this process (CPU
time is robust to a busy machine; wall time is what a training script sees). With
``--processes K``, K processes render at once (one thread each) and their rates add up:
the way to use every core, since one process's torch threads scale less well here.

    python benchmarks/render_speed.py --size 64 --batches 128,512 --threads 1,2
    python benchmarks/render_speed.py --batches 512 --processes 2
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from gdx.scenes import render_scenes


def measure(batch: int, size: int, threads: int, seconds: float) -> dict[str, float]:
    torch.set_num_threads(threads)
    render_scenes(batch, seed=0, size=size)  # warm up
    wall0, cpu0 = time.perf_counter(), time.process_time()
    rendered, seed = 0, 1
    while time.perf_counter() - wall0 < seconds:
        render_scenes(batch, seed=seed, size=size)
        rendered += batch
        seed += 1
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"batch": batch, "size": size, "threads": threads, "scenes": rendered,
            "per_wall_second": rendered / wall, "per_cpu_second": rendered / cpu}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, choices=[64, 128])
    p.add_argument("--batches", default="32,128,512")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--seconds", type=float, default=5.0, help="time per configuration")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--processes", type=int, default=1, help="render in K processes at once (1 thread each)")
    args = p.parse_args(argv)
    if args.processes > 1:
        import multiprocessing as mp

        batch = int(args.batches.split(",")[0])
        with mp.get_context("spawn").Pool(args.processes) as pool:
            rows = pool.starmap(measure, [(batch, args.size, 1, args.seconds)] * args.processes)
        total = sum(r["per_wall_second"] for r in rows)
        print(f"{args.processes} processes x 1 thread, batch {batch}: "
              + " + ".join(f"{r['per_wall_second']:.0f}" for r in rows) + f" = {total:.0f} scenes / wall-s")
        return
    rows = []
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    print("| batch | threads | scenes / wall-s | scenes / CPU-s |")
    print("|---|---|---|---|")
    for threads in [int(t) for t in args.threads.split(",")]:
        for batch in [int(b) for b in args.batches.split(",")]:
            row = measure(batch, args.size, threads, args.seconds)
            rows.append(row)
            print(f"| {batch} | {threads} | {row['per_wall_second']:.0f} | {row['per_cpu_second']:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
