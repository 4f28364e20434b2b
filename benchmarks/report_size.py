"""Size on disk of a 512-unit report (the world of tests/test_report_large.py).

A 512-unit layer, 20 top samples per unit, 32 px images: one JPEG strip per unit plus
index.html. Prints the tile size chosen, the total bytes and the largest files.

    python benchmarks/report_size.py
    python benchmarks/report_size.py --top-k 8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import gdx  # noqa: E402
from gdx.report import write_report  # noqa: E402
from test_report_large import K, Wide, fake_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top-k", type=int, default=K)
    parser.add_argument("--image-size", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = fake_run(Path(tmp) / "run")
        gen = gdx.wrap_generator(Wide().eval(), latent_shape=(16,), name="wide")
        t0 = time.perf_counter()
        with torch.no_grad():
            index = write_report(run, Path(tmp) / "report", top_k=args.top_k, image_size=args.image_size, generator=gen)
        seconds = time.perf_counter() - t0
        files = [p for p in index.parent.rglob("*") if p.is_file()]
        total = sum(p.stat().st_size for p in files)
        strips = [p for p in files if p.suffix == ".jpg"]
        html = index.stat().st_size
        width = int(next(iter(__import__("re").finditer(r'class="strip"[^>]*width="(\d+)"', index.read_text()))).group(1))
        print(f"units 512, top-k {args.top_k}: strip width {width} px, {len(strips)} strips, "
              f"total {total / 1e6:.2f} MB (strips {sum(p.stat().st_size for p in strips) / 1e6:.2f} MB, "
              f"index.html {html / 1e6:.2f} MB), written in {seconds:.1f} s")


if __name__ == "__main__":
    main()
