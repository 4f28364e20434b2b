"""The paper's segmenter: Unified Perceptual Parsing (Broden+ object/material/part heads)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import gdx
from gdx.errors import CheckpointError
from gdx.plugins.segmenters.unified_parsing import precise_roi_pool

import seg_formats as sf


def _bilinear_zero_outside(x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Reference bilinear interpolant at points (ys, xs), pixel centres at integers, 0 outside."""
    h, w = x.shape[-2:]
    out = torch.zeros(*x.shape[:2], len(ys), len(xs), dtype=x.dtype)
    for i in range(h):
        wy = (1 - (ys - i).abs()).clamp(min=0)
        for j in range(w):
            wx = (1 - (xs - j).abs()).clamp(min=0)
            out += x[:, :, i, j, None, None] * wy[:, None] * wx[None, :]
    return out


@pytest.mark.parametrize("bins,size", [(1, (5, 7)), (2, (6, 6)), (3, (5, 8)), (6, (4, 9))])
def test_precise_roi_pool_is_the_exact_bin_average(bins, size):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *size, generator=g, dtype=torch.float64)
    h, w = size
    n = 720 // bins  # midpoint rule per bin on a fine grid: error O(1/n^2) on a piecewise-bilinear function
    ys = (torch.arange(bins * n, dtype=torch.float64) + 0.5) * (h / (bins * n))
    xs = (torch.arange(bins * n, dtype=torch.float64) + 0.5) * (w / (bins * n))
    ref = _bilinear_zero_outside(x, ys, xs).view(2, 3, bins, n, bins, n).mean((3, 5))
    assert (precise_roi_pool(x, bins) - ref).abs().max().item() < 1e-4
    # Not the same as adaptive average pooling (which ignores the interpolant and the zero border).
    assert (precise_roi_pool(x, bins) - F.adaptive_avg_pool2d(x, bins)).abs().max().item() > 1e-3


@pytest.fixture(scope="module")
def upp(tmp_path_factory):
    return sf.upp_folder(tmp_path_factory.mktemp("upp-resnet50-upernet"))


def _expected(model, x, part_objects):
    """gandissect's combination rule, written out directly."""
    L = sf.UPP_LABELS
    objects, materials = L["object"][1:], [m if m not in L["object"][1:] else m + " (material)" for m in L["material"][1:]]
    names = objects + materials
    with torch.no_grad():
        obj, mat, part = [F.interpolate(t, x.shape[-2:], mode="bilinear", align_corners=False)
                          for t in model(((x + 1) * 127.5).flip(1) - torch.tensor([102.9801, 115.9465, 122.7717]).view(1, 3, 1, 1))]
    out = torch.full((x.shape[0], 3, *x.shape[-2:]), -1, dtype=torch.long)
    o, m = obj.argmax(1), mat.argmax(1)
    out[:, 0][o > 0] = o[o > 0] - 1
    out[:, 1][m > 0] = m[m > 0] - 1 + len(objects)
    start = 0
    for owner in sorted(L["object_part"], key=L["object"].index):
        parts = L["object_part"][owner]
        if owner in part_objects:
            for pi, pname in enumerate(parts):
                if pname not in names:
                    names.append(pname)
            local = part[:, start:start + len(parts)].argmax(1)
            for n in range(x.shape[0]):
                for yy in range(x.shape[2]):
                    for xx in range(x.shape[3]):
                        if o[n, yy, xx] - 1 == L["object"].index(owner) - 1:
                            out[n, 2, yy, xx] = names.index(parts[local[n, yy, xx]])
        start += len(parts)
    return out, names, (obj, mat, part)


def test_upp_folder_loads_and_combines_heads_like_gandissect(upp):
    folder, model = upp
    seg = gdx.load_segmenter("upernet", weights=str(folder), part_objects="sky,building,person")
    assert "Unified Perceptual Parsing" in seg.describe()
    x = sf.images(2, (32, 32), seed=3)
    expected, names, logits = _expected(model, x, ("sky", "building", "person"))
    for got, ref in zip(seg.logits(x), logits):
        assert (got - ref).abs().max().item() < 1e-5
    assert seg.labels == names
    assert seg.categories["glass"] == "object" and seg.categories["glass (material)"] == "material"
    assert seg.categories["window"] == "part" and seg.categories["door"] == "object"  # door: object wins
    assert "trunk" not in seg.labels  # tree's parts are not used by default
    out = seg.segment(x)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.int64
    assert torch.equal(out, expected)


def test_upp_all_parts_and_adaptive_pool(upp):
    folder, model = upp
    seg = gdx.load_segmenter("upernet", weights=str(folder), part_objects="all")
    assert "trunk" in seg.labels
    x = sf.images(1, (32, 32), seed=4)
    expected, _, _ = _expected(model, x, ("sky", "building", "person", "tree"))
    assert torch.equal(seg.segment(x), expected)
    adaptive = gdx.load_segmenter("upernet", weights=str(folder), ppm_pool="adaptive")
    assert adaptive.segment(x).shape == (1, 3, 32, 32)


def test_upp_errors(tmp_path, upp):
    folder, _ = upp
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("encoder_epoch_40.pth", "decoder_epoch_40.pth"):
        (bare / f).write_bytes((folder / f).read_bytes())
    with pytest.raises(CheckpointError, match="labels.json"):
        gdx.load_segmenter("upernet", weights=str(bare))
    wrong = dict(sf.UPP_LABELS, material=["-", "wood"])
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    with pytest.raises(CheckpointError, match="material: labels 2 vs weights 4"):
        gdx.load_segmenter("upernet", weights=str(bare), labels=str(tmp_path / "wrong.json"))
    with pytest.raises(CheckpointError, match="without parts"):
        gdx.load_segmenter("upernet", weights=str(folder), part_objects="glass")


def test_a_dash_in_a_part_list_is_no_label_not_a_label_named_dash(tmp_path):
    """labels.json part lists may hold Broden's "-" (nothing): those pixels get no part label."""
    import copy

    labels = copy.deepcopy(sf.UPP_LABELS)
    labels["object_part"] = {owner: ["-", *parts] for owner, parts in labels["object_part"].items()}
    folder, model = sf.upp_folder(tmp_path / "upp", labels=labels, seed=1)
    seg = gdx.load_segmenter("upernet", weights=str(folder), part_objects="all")
    assert "-" not in seg.labels
    x = sf.images(2, (32, 32), seed=5)
    out = seg.segment(x)
    with torch.no_grad():
        _, _, part = seg.logits(x)
    owners = sorted(labels["object_part"], key=labels["object"].index)
    dash_pixels = 0
    start = 0
    for owner in owners:
        n = len(labels["object_part"][owner])
        on_owner = out[:, 0] == labels["object"].index(owner) - 1
        picks_dash = (part[:, start:start + n].argmax(1) == 0) & on_owner
        assert (out[:, 2][picks_dash] == -1).all()
        assert (out[:, 2][on_owner & ~picks_dash] >= 0).all()
        dash_pixels += int(picks_dash.sum())
        start += n
    assert dash_pixels > 0, "the test needs pixels whose part argmax is '-'"
