"""The "deeplab" segmenter loads torchvision DeepLabV3 and smp DeepLabV3/V3+ weights exactly."""

from __future__ import annotations

import pytest
import torch

import gdx
from gdx.errors import CheckpointError

import seg_formats as sf


@pytest.fixture(scope="module")
def tv_deeplab(tmp_path_factory):
    return sf.torchvision_deeplab(tmp_path_factory.mktemp("tv") / "deeplabv3_resnet50_coco.pth")


def test_torchvision_deeplabv3_resnet50_matches_original(tv_deeplab):
    path, model = tv_deeplab
    seg = gdx.load_segmenter("deeplab", weights=str(path))
    assert seg.input_size is None  # by default: the images' own size, not 520 x 520
    assert "at the images' own size" in seg.describe()
    assert len(seg.labels) == 21 and seg.labels[0] == "background" and seg.labels[15] == "person"
    x = sf.images(2, (48, 48))
    with torch.no_grad():
        ref = model(sf.imagenet_input(x))["out"]
    assert (seg.logits(x) - ref).abs().max().item() < 1e-5
    labels = seg.segment(x)
    assert labels.shape == (2, 48, 48) and labels.dtype == torch.int64
    assert torch.equal(labels, ref.argmax(1))
    bg = gdx.load_segmenter("deeplab", weights=str(path), ignore_background=True, input_size="48x48")
    assert bg.input_size == (48, 48)
    assert torch.equal(bg.segment(x), ref.argmax(1).masked_fill(ref.argmax(1) == 0, -1))


def test_torchvision_nested_state_dict_without_aux(tmp_path):
    path, model = sf.torchvision_deeplab(tmp_path / "plain.pth", classes=3, aux=False)
    torch.save({"model": torch.load(path, weights_only=True)}, tmp_path / "nested.pth")
    seg = gdx.load_segmenter("deeplab", weights=str(tmp_path / "nested.pth"))
    assert seg.labels == ["class0", "class1", "class2"]
    x = sf.images(1, (40, 40))
    with torch.no_grad():
        ref = model(sf.imagenet_input(x))["out"]
    assert (seg.logits(x) - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("arch", ["DeepLabV3", "DeepLabV3Plus"])
def test_smp_state_dict_arch_and_encoder_from_keys(tmp_path, arch):
    path, model = sf.smp_state_dict(tmp_path / "sd.pth", arch=arch, encoder="resnet18", classes=21)
    seg = gdx.load_segmenter("deeplab", weights=str(path))
    assert f"smp {arch} resnet18" in seg.describe()
    x = sf.images(2, (64, 64))
    with torch.no_grad():
        ref = model(sf.imagenet_input(x))
    assert (seg.logits(x) - ref).abs().max().item() < 1e-5
    assert torch.equal(seg.segment(x), ref.argmax(1))
    assert seg.labels[20] == "tvmonitor"


def test_smp_directory(tmp_path):
    folder, model = sf.smp_directory(tmp_path, arch="DeepLabV3Plus", classes=5)
    seg = gdx.load_segmenter("deeplab", weights=str(folder))
    x = sf.images(1, (50, 60))  # not a multiple of the stride: padded and resized back
    out = seg.segment(x)
    assert out.shape == (1, 50, 60)
    x64 = sf.images(1, (64, 64))
    with torch.no_grad():
        ref = model(sf.imagenet_input(x64))
    assert torch.equal(seg.segment(x64), ref.argmax(1))


def test_errors(tmp_path, tv_deeplab):
    with pytest.raises(CheckpointError, match="not found"):
        gdx.load_segmenter("deeplab", weights=str(tmp_path / "missing.pth"))
    path, _ = tv_deeplab
    with pytest.raises(CheckpointError, match="truncated"):
        gdx.load_segmenter("deeplab", weights=str(sf.truncate(path, tmp_path / "cut.pth")))
    with pytest.raises(CheckpointError, match="ProGAN"):
        gdx.load_segmenter("deeplab", weights=str(sf.progan_like_state(tmp_path / "g.pth")))
    upernet_dir, _ = sf.smp_directory(tmp_path / "up", classes=3)
    with pytest.raises(CheckpointError, match="use the segmenter `upernet`"):
        gdx.load_segmenter("deeplab", weights=str(upernet_dir))
    sd, _ = sf.smp_state_dict(tmp_path / "r18.pth", encoder="resnet18", classes=3)
    with pytest.raises(CheckpointError, match="resnet34"):
        gdx.load_segmenter("deeplab", weights=str(sd), encoder="resnet34")
    enc, dec, _ = sf.mit_semseg_pair(tmp_path / "mit", encoder="resnet18dilated", classes=3)
    with pytest.raises(CheckpointError, match="mit_semseg"):
        gdx.load_segmenter("deeplab", weights=str(enc))


def test_torchvision_input_size_is_torchvisions_aspect_keeping_resize(tv_deeplab, caplog):
    """``input_size=N`` is torchvision's eval transform (shorter side to N, aspect kept), logged once."""
    from torchvision.transforms._presets import SemanticSegmentation

    path, model = tv_deeplab
    seg = gdx.load_segmenter("deeplab", weights=str(path), input_size="40")
    assert seg.input_size is None and "shorter side resized to 40 px" in seg.describe()
    x = sf.images(1, (32, 48))
    prep = SemanticSegmentation(resize_size=40)((x + 1) / 2)
    assert tuple(prep.shape[-2:]) == (40, 60)  # not squashed to 40 x 40
    with torch.no_grad():
        ref = torch.nn.functional.interpolate(model(prep)["out"], size=(32, 48), mode="bilinear",
                                              align_corners=False)
    with caplog.at_level("INFO", logger="gdx.plugins.segmenters.deeplab"):
        got = seg.logits(x)
        seg.logits(x)
    assert (got - ref).abs().max().item() < 1e-4
    assert [r.getMessage() for r in caplog.records] == ["deeplab: segmenting 32x48 images at 40x60 (segmenter option `input_size`)"]
    with pytest.raises(gdx.GdxError, match="input_size"):
        gdx.load_segmenter("deeplab", weights=str(path), input_size="0")


def test_gdx_run_prints_the_size_deeplab_segments_at(tv_deeplab, tmp_path):
    """A user sees the segmenter's input size in the run's first lines (it was a silent 520 x 520)."""
    from click.testing import CliRunner

    from gdx.cli import cli

    path, _ = tv_deeplab
    res = CliRunner().invoke(cli, ["run", "--gen", "toy", "--seg", "deeplab", "--seg-opt", f"weights={path}",
                                   "--seg-opt", "input_size=48x48", "--samples", "4", "--quiet",
                                   "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "segmenter: deeplab" in res.output and "resized to 48x48" in res.output
