"""Small PNG figures without matplotlib: heat-map overlays, image grids, line charts.

PNG files are written with zlib + struct (no imaging library needed). Text labels
are drawn with Pillow when it is installed (it comes with torchvision) and left
out otherwise; the figures stay readable either way.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

#: Distinct line colours (RGB 0..255).
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (23, 190, 207)]


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an H x W x 3 uint8 array as a PNG file."""
    arr = np.ascontiguousarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"write_png needs H x W x 3 uint8, got shape {arr.shape}")
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def to_uint8(image: torch.Tensor, size: int | None = None) -> np.ndarray:
    """A 3 x H x W image in [-1, 1] as H x W x 3 uint8 (optionally resized to ``size``)."""
    x = image.detach().float().cpu()
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def heatmap_overlay(image: torch.Tensor | None, heat: torch.Tensor, *, size: int = 256) -> np.ndarray:
    """Blend a signed h x w map over an image: red where positive, blue where negative."""
    heat = heat.detach().float().cpu()
    scale = float(heat.abs().max()) or 1.0
    up = F.interpolate(heat[None, None] / scale, size=(size, size), mode="nearest")[0, 0].numpy()
    base = to_uint8(image, size).astype(np.float32) if image is not None else np.full((size, size, 3), 128.0)
    grey = base.mean(axis=2, keepdims=True).repeat(3, axis=2) * 0.6 + base * 0.4
    pos, neg = np.clip(up, 0, 1)[..., None], np.clip(-up, 0, 1)[..., None]
    out = grey * (1 - 0.7 * pos - 0.7 * neg) + 0.7 * pos * np.array([255, 40, 20]) + 0.7 * neg * np.array([30, 80, 255])
    return out.clip(0, 255).astype(np.uint8)


def image_grid(rows: Sequence[Sequence[torch.Tensor]], *, size: int = 128, pad: int = 4) -> np.ndarray:
    """Images (3 x H x W in [-1, 1]) laid out in rows, e.g. before / after pairs."""
    n_rows = len(rows)
    n_cols = max(len(r) for r in rows)
    out = np.full((n_rows * (size + pad) + pad, n_cols * (size + pad) + pad, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (size + pad), pad + j * (size + pad)
            out[y : y + size, x : x + size] = to_uint8(img, size)
    return out


def _draw_line(canvas: np.ndarray, p0: tuple[float, float], p1: tuple[float, float],
               colour: tuple[int, int, int] | np.ndarray, width: int = 2) -> None:
    steps = int(max(abs(p1[0] - p0[0]), abs(p1[1] - p0[1]))) + 1
    for t in np.linspace(0.0, 1.0, steps):
        x = int(round(p0[0] + t * (p1[0] - p0[0])))
        y = int(round(p0[1] + t * (p1[1] - p0[1])))
        canvas[max(0, y - width // 2) : y + width - width // 2, max(0, x - width // 2) : x + width - width // 2] = colour


def line_chart(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    size: tuple[int, int] = (480, 320),
    ylim: tuple[float, float] | None = None,
) -> np.ndarray:
    """A line chart of named (x, y) series as an H x W x 3 uint8 array."""
    w, h = size
    left, right, top, bottom = 60, 130, 30, 40
    canvas = np.full((h, w, 3), 255, dtype=np.uint8)
    xs = [float(v) for s in series.values() for v in s[0]] or [0.0, 1.0]
    ys = [float(v) for s in series.values() for v in s[1] if v == v] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = ylim if ylim else (min(0.0, min(ys)), max(1e-9, max(ys)))
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (w - left - right), h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

    axis = (0, 0, 0)
    _draw_line(canvas, px(x0, y0), px(x1, y0), axis, 1)
    _draw_line(canvas, px(x0, y0), px(x0, y1), axis, 1)
    for k in range(5):
        yy = y0 + (y1 - y0) * k / 4
        _draw_line(canvas, px(x0, yy), px(x1, yy), (225, 225, 225), 1)
    for i, (name, (sx, sy)) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        pts = [px(float(a), float(b)) for a, b in zip(sx, sy) if b == b]
        for a, b in zip(pts, pts[1:]):
            _draw_line(canvas, a, b, colour, 2)
        for p in pts:
            _draw_line(canvas, (p[0] - 2, p[1]), (p[0] + 2, p[1]), colour, 4)
    try:
        from PIL import Image, ImageDraw
    except ImportError:  # no text without Pillow; the lines are still there
        return canvas
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    draw.text((left, 8), title, fill=(0, 0, 0))
    draw.text(((w - right + left) // 2 - 20, h - 18), xlabel, fill=(0, 0, 0))
    draw.text((4, top - 16), ylabel, fill=(0, 0, 0))
    for k in range(5):
        yy = y0 + (y1 - y0) * k / 4
        draw.text((4, px(x0, yy)[1] - 6), f"{yy:.2f}", fill=(60, 60, 60))
    for xv in sorted(set(xs))[:: max(1, len(set(xs)) // 10)]:
        draw.text((px(xv, y0)[0] - 4, h - bottom + 4), f"{xv:g}", fill=(60, 60, 60))
    for i, name in enumerate(series):
        draw.rectangle([w - right + 10, top + 16 * i + 3, w - right + 22, top + 16 * i + 11], fill=COLOURS[i % len(COLOURS)])
        draw.text((w - right + 26, top + 16 * i), name[:16], fill=(0, 0, 0))
    return np.asarray(img)
