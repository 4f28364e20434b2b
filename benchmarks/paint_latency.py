"""GANPaint edit latency over real HTTP: p50 / p95 round trip, 1 client and N concurrent clients.

The server is ``gdx paint``'s app under uvicorn on 127.0.0.1 in a separate process (so
client threads do not share its interpreter); each request is one stroke (a random
rectangle, "draw" or "remove" of a random paintable concept) on a random sample, the
whole edit path: JSON + mask decoding, one generator forward, PNG encoding. Uses the
bundled scene GAN when its weights are present, else the synthetic toy pair; ``--gen``
names another registered generator (segmented by the scene segmenter for the bundled
``scene-*`` models, else by the segmenter of the same name) and ``--layer`` the layer or
step window to paint on (default: the generator's paint layer).
Targets (CPU, one client): p95 <= 50 ms for the scene GAN, <= 150 ms for the 10-step
scene-diffusion model.

    python benchmarks/paint_latency.py                    # 200 requests + 20 clients x 10
    python benchmarks/paint_latency.py --run runs/scene-scene --requests 500 --json out.json
    python benchmarks/paint_latency.py --gen scene-diffusion --layer down2@0-4
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def pick_world(gen: str | None = None, layer: str | None = None) -> tuple[str, str, str]:
    """(generator, segmenter, layer to paint on)."""
    import gdx

    if gen:
        built = gdx.load_generator(gen)
        seg = "scene" if gen.startswith("scene") else gen
        return gen, seg, layer or built.paint_layer or built.default_layer or built.layer_names()[0]
    try:
        gen = gdx.load_generator("scene")
        gdx.load_segmenter("scene")
        return "scene", "scene", layer or gen.default_layer
    except Exception:  # noqa: BLE001 - any failure means: no usable scene models here
        return "toy", "toy", layer or "features"


def make_run(folder: Path, name: str, seg_name: str, layer: str, samples: int) -> Path:
    """A run folder dissecting ``layer`` (for a step window: its last step, which ranks the units painted)."""
    import gdx
    from gdx.paint.models import ranking_step
    from gdx.results import atomic_write_json

    layer = ranking_step(layer)
    result = gdx.dissect(gdx.load_generator(name), gdx.load_segmenter(seg_name), layer, samples=samples,
                         progress=False)
    result.save(folder / layer)
    atomic_write_json(folder / "run.json", {
        "format": "gdx.run", "version": 1, "generator": name, "segmenter": seg_name, "generator_options": [],
        "segmenter_options": [], "layers": [layer], "samples": samples, "seed": 0, "threshold": 0.99,
    })
    return folder


def serve(run: str, port: int, threads: int, layer: str | None = None) -> None:
    import torch
    import uvicorn

    from gdx.paint import engine_from_run
    from gdx.paint.server import create_app
    from gdx.paint.worker import ModelThread

    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    model_thread = ModelThread(threads)  # as gdx paint: the engine and its edits on one thread
    engine = model_thread.call(engine_from_run, run, layer)
    uvicorn.run(create_app(engine, model_thread=model_thread), host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def body(info: dict, rng: random.Random) -> dict:
    h, w = info["image_size"]
    mask = np.zeros((h, w), dtype=bool)
    y, x = rng.randrange(h // 2), rng.randrange(w // 2)
    mask[y : y + h // 4 + 1, x : x + w // 4 + 1] = True
    concept = rng.choice(info["concepts"])["name"]
    return {"sample": rng.randrange(1000), "units": info["default_units"], "strokes": [{
        "concept": concept, "mode": rng.choice(["draw", "remove"]),
        "mask": {"width": w, "height": h, "bits": base64.b64encode(np.packbits(mask)).decode()}}]}


def timed_requests(url: str, info: dict, n: int, seed: int, out: list[float],
                   server: list[float] | None = None) -> None:
    import httpx

    rng = random.Random(seed)
    with httpx.Client(timeout=60) as client:
        for _ in range(n):
            b = body(info, rng)
            t0 = time.perf_counter()
            r = client.post(url + "api/edit", json=b)
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                raise RuntimeError(f"edit failed: {r.status_code} {r.text[:200]}")
            out.append(dt * 1000)
            if server is not None:
                server.append(float(r.json()["milliseconds"]))


def stats(name: str, ms: list[float], wall: float, server: list[float]) -> dict:
    a, s = np.asarray(ms), np.asarray(server)
    return {"scenario": name, "requests": len(a), "p50_ms": float(np.percentile(a, 50)),
            "p95_ms": float(np.percentile(a, 95)), "max_ms": float(a.max()), "req_per_s": len(a) / wall,
            "server_p50_ms": float(np.percentile(s, 50)), "server_p95_ms": float(np.percentile(s, 95))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a 'gdx run' folder (default: dissect the scene GAN, else toy, now)")
    ap.add_argument("--gen", help="a registered generator to dissect now instead (e.g. scene-diffusion)")
    ap.add_argument("--layer", help="layer or step window to paint on (default: the generator's paint layer; "
                                    "with --run: the run's)")
    ap.add_argument("--requests", type=int, default=200, help="requests of the single client")
    ap.add_argument("--clients", type=int, default=20, help="concurrent clients")
    ap.add_argument("--per-client", type=int, default=10, help="requests per concurrent client")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads in the server (0: torch's default, what gdx paint uses)")
    ap.add_argument("--samples", type=int, default=200, help="samples of the startup dissection without --run")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.threads, args.layer)
        return
    import httpx

    tmp = tempfile.TemporaryDirectory()
    if args.run:
        run, world = args.run, json.loads(Path(args.run, "run.json").read_text())["generator"]
    else:
        world, seg_name, layer = pick_world(args.gen, args.layer)
        args.layer = layer
        print(f"dissecting {world}:{layer} on {args.samples} samples for the unit ranking...", file=sys.stderr)
        run = str(make_run(Path(tmp.name), world, seg_name, layer, args.samples))
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", run, "--port", str(port),
                               "--threads", str(args.threads), *(["--layer", args.layer] if args.layer else [])],
                              env=dict(os.environ))
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            try:
                info = httpx.get(url + "api/info", timeout=2).json()
                break
            except httpx.HTTPError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the paint server did not start") from None
                time.sleep(0.2)
        warm: list[float] = []
        timed_requests(url, info, 10, seed=99, out=warm)
        single: list[float] = []
        single_server: list[float] = []
        t0 = time.perf_counter()
        timed_requests(url, info, args.requests, seed=0, out=single, server=single_server)
        rows = [stats("1 client", single, time.perf_counter() - t0, single_server)]
        many: list[float] = []
        many_server: list[float] = []
        threads = [threading.Thread(target=timed_requests, args=(url, info, args.per_client, i + 1, many, many_server))
                   for i in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows.append(stats(f"{args.clients} clients", many, time.perf_counter() - t0, many_server))
    finally:
        server.terminate()
        server.wait(10)
        tmp.cleanup()
    h, w = info["image_size"]
    print(f"\ngdx paint edit round trip over HTTP: generator {info['generator']} ({w}x{h}), layer {info['layer']} "
          f"({info['units']} units), {info['default_units']} units per stroke, torch threads {args.threads or 'default'}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print("round trip = client sends the stroke .. client has the PNG; server = edit handler only "
          "(mask decoding, forward, PNG)")
    print(f"{'scenario':<12} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'req/s':>8} "
          f"{'server p50':>10} {'server p95':>10}")
    for r in rows:
        print(f"{r['scenario']:<12} {r['requests']:>8} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['max_ms']:>8.1f} "
              f"{r['req_per_s']:>8.1f} {r['server_p50_ms']:>10.1f} {r['server_p95_ms']:>10.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"world": world, "info": {k: info[k] for k in (
            "generator", "layer", "image_size", "units", "default_units")}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
