"""Procedural outdoor scenes with exact per-pixel label maps: the bundled "scene world".

Why: gdx ships small trained models (a GAN, a VAE, a segmenter) so that dissection works
offline; they are trained on these scenes, whose labels are exact by construction.

Every scene is drawn in one vectorised pass over a batch (torch tensors, no Python loop over
scenes), about a thousand 64x64 scenes per second per CPU core
(``benchmarks/render_speed.py``). All geometry is defined on a 64-pixel grid and scaled,
so ``size=128`` draws the same scenes at double resolution. The context rules the paper relies on hold by construction:

* doors and windows are parts of a building and lie inside its wall rectangle;
* clouds and the sun lie strictly above the horizon (only in the sky);
* trees and buildings stand on the ground (their base is below the horizon), and the
  one nearer the viewer (lower base) hides the one behind it.

>>> from gdx.scenes import render_scenes, LABELS
>>> batch = render_scenes(8, seed=0)
>>> batch.images.shape, batch.labels.shape      # N x 3 x 64 x 64 in [-1, 1], N x 64 x 64
(torch.Size([8, 3, 64, 64]), torch.Size([8, 64, 64]))
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

#: Concept names; a label map holds indices into this list (every pixel has a label).
LABELS: tuple[str, ...] = (
    "sky",
    "cloud",
    "sun",
    "mountain",
    "water",
    "grass",
    "road",
    "tree",
    "building",
    "brick",
    "roof",
    "dome",
    "door",
    "window",
)
#: Label -> category, in the spirit of Broden's object / part / material split.
CATEGORIES: dict[str, str] = {
    "sky": "stuff",
    "cloud": "object",
    "sun": "object",
    "mountain": "stuff",
    "water": "stuff",
    "grass": "stuff",
    "road": "stuff",
    "tree": "object",
    "building": "object",
    "brick": "material",
    "roof": "part",
    "dome": "part",
    "door": "part",
    "window": "part",
}
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(LABELS)}

MAX_BUILDINGS = 2
MAX_TREES = 4
MAX_CLOUDS = 3
_WINDOW_ROWS, _WINDOW_COLS = 2, 3


@dataclasses.dataclass
class SceneBatch:
    """A batch of rendered scenes.

    images: N x 3 x S x S float in [-1, 1]; labels: N x S x S long (indices into LABELS);
    horizon: N float, the row (in pixels) where the sky ends; building_boxes: N x B x 4
    float (x0, y0, x1, y1) of each building's wall in pixels (half-open), building_active:
    N x B bool.
    """

    images: torch.Tensor
    labels: torch.Tensor
    horizon: torch.Tensor
    building_boxes: torch.Tensor
    building_active: torch.Tensor


def _u(g: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
    return torch.rand(shape, generator=g) * (hi - lo) + lo


def _col(rgb: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(rgb).view(1, 3, 1, 1)


class _Canvas:
    """Labels, depth buffer and deferred colours of a batch; ``paint`` writes where a mask is nearer.

    Why deferred: every texture in this world is ``color * shade + color2 * shade2`` with
    per-scene colours (N x 3) and one-channel shade maps. So a paint only records, per
    pixel, which paint call won (its slot, which also gives the label), the depth and the
    two shade values (one-channel work), and the RGB image and the label map are looked
    up by slot once at the end. Compositing full RGB frames once per object was most of the time.
    """

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size
        self.depth = torch.full((n, size, size), -1e9)
        # Which paint won each pixel, as a float (written with the same exact 0/1 lerp as the
        # shades: much faster than masked_fill_ on an integer map).
        self.slot = torch.zeros(n, size, size)
        self.shade = torch.zeros(n, size, size)
        self.shade2 = torch.zeros(n, size, size)
        self.colors = [torch.zeros(n, 3)]  # slot 0: nothing painted (black)
        self.colors2 = [torch.zeros(n, 3)]
        self.labels = [0]

    def paint(
        self,
        mask: torch.Tensor,
        label: int,
        color: torch.Tensor,
        shade: torch.Tensor | float = 1.0,
        *,
        color2: torch.Tensor | None = None,
        shade2: torch.Tensor | float = 0.0,
        depth: torch.Tensor | None = None,
    ) -> None:
        """Paint ``color * shade + color2 * shade2`` and ``label`` where ``mask`` (N x S x S).

        Colours are per scene (N x 3 x 1 x 1 or 1 x 3 x 1 x 1); shades broadcast to
        N x S x S. With ``depth`` (broadcastable to N x S x S), only where it is not behind
        what is already there (a larger depth is nearer the viewer); the buffer updates.
        """
        if depth is not None:
            mask = mask & (depth >= self.depth)
        weight = mask.to(self.shade.dtype)
        # lerp with a 0/1 weight is an exact select (end - (end - start) * 0 at weight 1),
        # and much faster than torch.where with a broadcast boolean mask on the CPU.
        if depth is not None:
            self.depth.lerp_(torch.as_tensor(depth, dtype=self.depth.dtype).expand_as(self.depth), weight)
        self.shade.lerp_(torch.as_tensor(shade, dtype=self.shade.dtype).expand_as(self.shade), weight)
        if color2 is not None:  # a slot without a second colour never reads shade2
            self.shade2.lerp_(torch.as_tensor(shade2, dtype=self.shade.dtype).expand_as(self.shade), weight)
        self.slot.lerp_(torch.tensor(float(len(self.colors))).expand_as(self.slot), weight)
        self.colors.append(color.reshape(-1, 3).expand(self.n, 3))
        self.colors2.append(torch.zeros(self.n, 3) if color2 is None else color2.reshape(-1, 3).expand(self.n, 3))
        self.labels.append(label)

    def label_map(self) -> torch.Tensor:
        """The label of the paint that won each pixel, N x S x S (long)."""
        return torch.tensor(self.labels)[self.slot.long()]

    def image(self) -> torch.Tensor:
        """The composited RGB image, N x 3 x S x S."""
        n, S = self.n, self.size
        index = self.slot.long().view(n, S * S)
        first = torch.stack(self.colors, dim=2)  # N x 3 x K
        second = torch.stack(self.colors2, dim=2)
        shade, shade2 = self.shade.view(n, S * S), self.shade2.view(n, S * S)
        # One gather per channel with an N x S*S index (no expanded index: that was slow).
        rgb = [first[:, c].gather(1, index) * shade + second[:, c].gather(1, index) * shade2 for c in range(3)]
        return torch.stack(rgb, dim=1).view(n, 3, S, S)


def _palette(g: torch.Generator, n: int, colors: list[tuple[float, float, float]], jitter: float) -> torch.Tensor:
    """Pick one of ``colors`` per scene and jitter it: N x 3 x 1 x 1."""
    table = torch.tensor(colors)
    pick = torch.randint(len(colors), (n,), generator=g)
    return (table[pick] + _u(g, (n, 3), -jitter, jitter)).clamp(0, 1).view(n, 3, 1, 1)


def _smooth_noise(g: torch.Generator, n: int, size: int, cell: int) -> torch.Tensor:
    """Blobby noise in about [-1, 1] with features about ``cell`` pixels wide: N x 1 x S x S."""
    coarse = torch.randn(n, 1, max(2, size // cell + 1), max(2, size // cell + 1), generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def render_scenes(n: int, *, seed: int, size: int = 64) -> SceneBatch:
    """Render ``n`` scenes deterministically from ``seed`` at ``size`` x ``size`` pixels.

    The same (n, seed, size) always gives the same tensors. Labels index :data:`LABELS`.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if size not in (64, 128):
        raise ValueError(f"size must be 64 or 128, got {size}")
    g = torch.Generator().manual_seed(int(seed))
    f = size / 64.0
    S = size
    ys = (torch.arange(S, dtype=torch.float32) + 0.5).view(1, S, 1)
    xs = (torch.arange(S, dtype=torch.float32) + 0.5).view(1, 1, S)

    def col(v: torch.Tensor) -> torch.Tensor:  # N -> N x 1 x 1 for broadcasting on N x S x S
        return v.view(-1, 1, 1)

    cv = _Canvas(n, S)
    light = _u(g, (n,), 0.8, 1.1).view(n, 1, 1, 1)
    horizon = _u(g, (n,), 26, 36) * f
    hz = col(horizon)
    fine = torch.randn(n, 1, S, S, generator=g)
    blob = _smooth_noise(g, n, S, max(2, int(4 * f)))
    # Shade maps several objects share, computed once (N x S x S).
    fine1 = fine.squeeze(1)
    grain = {amount: 1.0 + amount * fine1 for amount in (0.03, 0.05, 0.06)}

    # Sky: a vertical gradient from a zenith colour to a lighter horizon colour.
    zenith = _palette(g, n, [(0.20, 0.42, 0.85), (0.35, 0.55, 0.90), (0.45, 0.50, 0.62), (0.30, 0.35, 0.70)], 0.06)
    low = _palette(g, n, [(0.70, 0.82, 0.95), (0.92, 0.72, 0.55), (0.75, 0.78, 0.82)], 0.05)
    t = (ys / hz).clamp(0, 1).unsqueeze(1)
    cv.paint(ys < hz, LABEL_INDEX["sky"], zenith, (1 - t).squeeze(1), color2=low, shade2=t.squeeze(1))

    # Sun: a disc in the sky.
    has_sun = torch.rand(n, generator=g) < 0.7
    r_sun = _u(g, (n,), 4.0, 7.0) * f
    sx = _u(g, (n,), 8, 56) * f
    sy = torch.minimum(_u(g, (n,), 6, 20) * f, horizon - r_sun - 2 * f)
    # Per-scene flags and 1-D (row or column) conditions are combined first, so that only
    # the last & runs over whole N x S x S frames.
    sun = ((xs - col(sx)) ** 2 + (ys - col(sy)) ** 2 < col(r_sun) ** 2) & (col(has_sun) & (ys < hz))
    sun_rgb = _palette(g, n, [(1.0, 0.95, 0.60), (1.0, 0.85, 0.45), (1.0, 1.0, 0.85)], 0.03)
    cv.paint(sun, LABEL_INDEX["sun"], sun_rgb)

    # Clouds: each a union of three ellipses, clipped to the sky.
    cloud_rgb = _palette(g, n, [(0.97, 0.97, 0.98), (0.85, 0.86, 0.90), (0.95, 0.92, 0.88)], 0.03)
    for _ in range(MAX_CLOUDS):
        on = torch.rand(n, generator=g) < 0.6
        cx = _u(g, (n,), 0, 64) * f
        cw = _u(g, (n,), 6, 11) * f
        ch = _u(g, (n,), 2.5, 4.5) * f
        cy = torch.minimum(_u(g, (n,), 5, 20) * f, horizon - ch - 3 * f)
        mask = None
        for dx, dy, s in ((-0.6, 0.25, 0.65), (0.0, -0.2, 1.0), (0.6, 0.25, 0.7)):
            ex = col(cx + dx * cw)
            ey = col(cy + dy * ch)
            ellipse = ((xs - ex) / col(cw * s)) ** 2 + ((ys - ey) / col(ch * s)) ** 2 < 1
            mask = ellipse if mask is None else mask | ellipse
        shade = 1.0 - 0.12 * ((ys - col(cy)) / col(ch)).clamp(-1, 1)
        assert mask is not None  # the loop above runs at least once
        cv.paint(mask & (col(on) & (ys < hz)), LABEL_INDEX["cloud"], cloud_rgb, shade)

    # Mountains: a ridge of up to three peaks standing on the horizon.
    has_mtn = torch.rand(n, generator=g) < 0.7
    ridge = torch.zeros(n, 1, S)
    side = torch.zeros(n, 1, S)
    for _ in range(3):
        px = _u(g, (n,), -8, 72) * f
        ph = _u(g, (n,), 5, 16) * f
        slope = _u(g, (n,), 0.5, 1.1)
        prof = col(ph) - (xs - col(px)).abs() * col(slope)
        side = torch.where(prof > ridge, torch.sign(xs - col(px)), side)
        ridge = torch.maximum(ridge, prof)
    mtn = col(has_mtn) & (ys > hz - ridge) & (ys < hz)
    mtn_rgb = _palette(g, n, [(0.45, 0.48, 0.58), (0.50, 0.42, 0.35), (0.38, 0.45, 0.40)], 0.05)
    shade = (1.0 + 0.12 * side.unsqueeze(1)) + 0.05 * blob
    cv.paint(mtn, LABEL_INDEX["mountain"], mtn_rgb, shade.squeeze(1))

    # Ground: grass everywhere below the horizon, then water and road on top of it.
    ground = ys >= hz
    grass_rgb = _palette(g, n, [(0.45, 0.68, 0.25), (0.58, 0.70, 0.30), (0.40, 0.60, 0.30)], 0.04)
    cv.paint(ground, LABEL_INDEX["grass"], grass_rgb, (1.0 + 0.10 * blob + 0.05 * fine).squeeze(1))

    has_water = torch.rand(n, generator=g) < 0.5
    w_depth = _u(g, (n,), 6, 14) * f
    w_x0 = torch.where(torch.rand(n, generator=g) < 0.5, torch.zeros(n), _u(g, (n,), 0, 30) * f)
    w_x1 = torch.minimum(w_x0 + _u(g, (n,), 28, 64) * f, torch.full((n,), float(S)))
    water = col(has_water) & ground & (ys < hz + col(w_depth)) & (xs >= col(w_x0)) & (xs < col(w_x1))
    ripple = 0.06 * torch.sin(ys * (1.6 / f) + 3 * blob.squeeze(1))
    water_rgb = 0.55 * zenith + 0.45 * _col((0.10, 0.30, 0.55))
    cv.paint(water, LABEL_INDEX["water"], water_rgb, 1.0 + ripple)

    has_road = torch.rand(n, generator=g) < 0.6
    road_top = torch.where(has_water, horizon + w_depth, horizon)
    bx = _u(g, (n,), 16, 48) * f
    vx = _u(g, (n,), 8, 56) * f
    bw = _u(g, (n,), 8, 14) * f
    frac = ((ys - hz) / (S - hz)).clamp(0, 1)
    centre = col(vx) + (col(bx) - col(vx)) * frac
    half = 1.0 * f + (col(bw) - 1.0 * f) * frac
    road = col(has_road) & (ys >= col(road_top)) & ((xs - centre).abs() < half)
    road_rgb = _palette(g, n, [(0.42, 0.42, 0.44), (0.55, 0.52, 0.48), (0.32, 0.32, 0.35)], 0.04)
    cv.paint(road, LABEL_INDEX["road"], road_rgb, grain[0.05])

    # Buildings and trees stand on the ground; depth = base row (nearer = lower).
    boxes = torch.zeros(n, MAX_BUILDINGS, 4)
    active = torch.zeros(n, MAX_BUILDINGS, dtype=torch.bool)
    for b in range(MAX_BUILDINGS):
        on = torch.rand(n, generator=g) < (0.85 if b == 0 else 0.5)
        ww = _u(g, (n,), 16, 28) * f
        wh = _u(g, (n,), 13, 22) * f
        base = torch.where(has_water, horizon + w_depth, horizon) + _u(g, (n,), 3, 32) * f
        base = torch.minimum(base, torch.full((n,), S - 2 * f))
        x0 = _u(g, (n,), 2, 62) * f - ww / 2
        x0 = torch.minimum(x0.clamp_min(-4 * f), S + 4 * f - ww)
        x1, y1, y0 = x0 + ww, base, base - wh
        boxes[:, b] = torch.stack([x0, y0, x1, y1], dim=1)
        active[:, b] = on
        depth = col(base)
        wall_x = col(on) & (xs >= col(x0)) & (xs < col(x1))
        wall_y = (ys >= col(y0)) & (ys < col(y1))
        brick = torch.rand(n, generator=g) < 0.5
        plain_rgb = _palette(g, n, [(0.88, 0.84, 0.74), (0.80, 0.80, 0.82), (0.70, 0.76, 0.86), (0.90, 0.78, 0.60)], 0.05)
        brick_rgb = _palette(g, n, [(0.66, 0.28, 0.20), (0.58, 0.32, 0.22), (0.72, 0.38, 0.26)], 0.05)
        # Brick courses 3 px high with staggered joints every 6 px; light mortar lines.
        ry = ((ys - col(y0)) / f).floor()
        course = torch.div(ry, 3, rounding_mode="floor")
        joint_x = ((xs - col(x0)) / f + 3 * (course % 2)) % 6
        mortar = ((ry % 3) == 2) | (joint_x < 1)
        mortar_w = mortar.to(fine.dtype)
        brick_shade = grain[0.06] * (1 - mortar_w)
        mortar_rgb = _col((0.82, 0.78, 0.72))
        cv.paint((wall_x & col(brick)) & wall_y, LABEL_INDEX["brick"], brick_rgb, brick_shade,
                 color2=mortar_rgb, shade2=mortar_w, depth=depth)
        cv.paint((wall_x & ~col(brick)) & wall_y, LABEL_INDEX["building"], plain_rgb, grain[0.03], depth=depth)

        roof_kind = torch.rand(n, generator=g)  # < 0.45 gable roof, < 0.85 dome, else flat
        rh = _u(g, (n,), 6, 11) * f
        cxw = col(x0 + ww / 2)
        over = 1.5 * f
        gable = (col(on & (roof_kind < 0.45)) & (ys < col(y0)) & (ys >= col(y0) - col(rh))) & (
            (xs - cxw).abs() < (col(ww / 2) + over) * (1 - (col(y0) - ys) / col(rh))
        )
        roof_rgb = _palette(g, n, [(0.55, 0.18, 0.15), (0.30, 0.30, 0.35), (0.45, 0.30, 0.20)], 0.05)
        cv.paint(gable, LABEL_INDEX["roof"], roof_rgb, grain[0.05], depth=depth)
        dw = ww * _u(g, (n,), 0.35, 0.48)
        dome_on = on & (roof_kind >= 0.45) & (roof_kind < 0.85)
        dome = (col(dome_on) & (ys < col(y0))) & (((xs - cxw) / col(dw)) ** 2 + ((ys - col(y0)) / col(rh)) ** 2 < 1)
        dome_rgb = _palette(g, n, [(0.35, 0.55, 0.50), (0.85, 0.70, 0.30), (0.55, 0.60, 0.70)], 0.05)
        dshade = 1.0 + 0.15 * ((cxw - xs) / col(dw)).clamp(-1, 1)
        cv.paint(dome, LABEL_INDEX["dome"], dome_rgb, dshade, depth=depth)

        # Door at the foot of the wall, windows in the wall's upper half.
        has_door = torch.rand(n, generator=g) < 0.95
        dwid = torch.maximum(ww * _u(g, (n,), 0.2, 0.3), torch.full((n,), 4.5 * f))
        dhei = torch.maximum(wh * _u(g, (n,), 0.38, 0.5), torch.full((n,), 7 * f))
        dcx = x0 + ww / 2 + ww * _u(g, (n,), -0.2, 0.2)
        door = (col(on & has_door) & (xs >= col(dcx - dwid / 2)) & (xs < col(dcx + dwid / 2))) & (
            (ys >= col(y1 - dhei)) & (ys < col(y1))
        )
        door_rgb = _palette(g, n, [(0.30, 0.18, 0.10), (0.15, 0.20, 0.35), (0.45, 0.12, 0.10)], 0.04)
        cv.paint(door, LABEL_INDEX["door"], door_rgb, depth=depth)

        ws = _u(g, (n,), 4.5, 6.5) * f
        ncols = torch.where(ww > 22 * f, 3, 2)
        win_rgb = _palette(g, n, [(0.70, 0.85, 0.95), (0.20, 0.25, 0.35), (0.95, 0.85, 0.50)], 0.04)
        door_top = torch.where(has_door, y1 - dhei, y1)
        # The windows form a grid, so their union is (rows) x (columns): two 1-D masks.
        win_rows = torch.zeros(n, S, 1, dtype=torch.bool)
        for r in range(_WINDOW_ROWS):
            wy0 = y0 + 2.5 * f + r * (ws + 2.5 * f)
            row_ok = wy0 + ws <= door_top - 1.5 * f
            win_rows |= col(row_ok) & (ys >= col(wy0)) & (ys < col(wy0 + ws))
        win_cols = torch.zeros(n, 1, S, dtype=torch.bool)
        for c in range(_WINDOW_COLS):
            fx = torch.where(ncols == 3, torch.tensor([0.18, 0.5, 0.82])[c], torch.tensor([0.25, 0.75, 0.0])[c])
            wx = x0 + ww * fx - ws / 2
            win_cols |= col(c < ncols) & (xs >= col(wx)) & (xs < col(wx + ws))
        cv.paint((col(on) & win_rows) & win_cols, LABEL_INDEX["window"], win_rgb, depth=depth)

    tree_rgb = _palette(g, n, [(0.13, 0.36, 0.14), (0.18, 0.30, 0.10), (0.10, 0.28, 0.20)], 0.03)
    trunk_rgb = _col((0.35, 0.24, 0.14))
    leaf_grain = (1.0 + 0.18 * blob + 0.08 * fine).squeeze(1)
    for _ in range(MAX_TREES):
        on = torch.rand(n, generator=g) < 0.55
        base = torch.where(has_water, horizon + w_depth, horizon) + _u(g, (n,), 2, 38) * f
        base = torch.minimum(base, torch.full((n,), S - 1 * f))
        tx = _u(g, (n,), 0, 64) * f
        trunk_h = _u(g, (n,), 3, 6) * f
        rad = _u(g, (n,), 4.5, 8) * f
        conifer = torch.rand(n, generator=g) < 0.35
        depth = col(base)
        trunk = (col(on) & (ys < col(base)) & (ys >= col(base - trunk_h - rad))) & ((xs - col(tx)).abs() < 1.2 * f)
        fy = base - trunk_h - rad
        # A round crown, or a cone for conifers; a tree that is off gets neither (radius^2 -1).
        round_r2 = torch.where(on & ~conifer, rad**2, torch.full((n,), -1.0))
        round_crown = ((xs - col(tx)) ** 2 + ((ys - col(fy)) * 0.9) ** 2) < col(round_r2)
        top = fy - 1.6 * rad
        bottom = base - trunk_h
        cone = (col(on & conifer) & (ys >= col(top)) & (ys < col(bottom))) & (
            (xs - col(tx)).abs() < col(rad) * 0.95 * (ys - col(top)) / col(bottom - top)
        )
        crown = cone | round_crown
        leaf = leaf_grain - 0.12 * ((xs - col(tx)) / col(rad)).clamp(-1, 1)
        crown_w = crown.to(leaf.dtype)
        cv.paint(
            crown | trunk, LABEL_INDEX["tree"], tree_rgb, leaf * crown_w,
            color2=trunk_rgb, shade2=1 - crown_w, depth=depth,
        )

    img = (cv.image() * light).clamp(0, 1) * 2 - 1
    return SceneBatch(images=img, labels=cv.label_map(), horizon=horizon, building_boxes=boxes, building_active=active)


def label_frequencies(labels: torch.Tensor, num_labels: int = len(LABELS)) -> torch.Tensor:
    """Fraction of pixels per label over a batch of label maps (N x H x W, -1 ignored)."""
    flat = labels.reshape(-1)
    flat = flat[flat >= 0]
    counts = torch.bincount(flat, minlength=num_labels).double()
    return counts / counts.sum().clamp_min(1)
