"""The "upernet" segmenter loads smp UPerNet directories and CSAIL mit_semseg pairs exactly."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import gdx
from gdx.errors import CheckpointError

import seg_formats as sf


@pytest.fixture(scope="module")
def smp_dir(tmp_path_factory):
    return sf.smp_directory(tmp_path_factory.mktemp("smp_upernet"), classes=150)


@pytest.fixture(scope="module")
def mit_pair(tmp_path_factory):
    """The real published layout: deep-stem ResNet-50 encoder + UPerNet (fpn_dim 512) decoder, 150 classes."""
    return sf.mit_semseg_pair(tmp_path_factory.mktemp("mit_semseg"))


def test_smp_directory_roundtrip_matches_original(smp_dir):
    folder, model = smp_dir
    seg = gdx.load_segmenter("upernet", weights=str(folder))
    x = sf.images(2, (64, 64))
    with torch.no_grad():
        ref = model(sf.imagenet_input(x))
    logits = seg.logits(x)
    assert (logits - ref).abs().max().item() < 1e-5
    labels = seg.segment(x)
    assert labels.dtype == torch.int64 and labels.shape == (2, 64, 64)
    assert torch.equal(labels, ref.argmax(1))
    assert len(seg.labels) == 150 and seg.labels[:3] == ["wall", "building", "sky"]
    assert seg.categories["sky"] == "stuff" and seg.categories["car"] == "object"  # the benchmark's split


def test_smp_directory_any_size_is_padded_to_the_stride(smp_dir):
    folder, _ = smp_dir
    seg = gdx.load_segmenter("upernet", weights=str(folder))
    out = seg.segment(sf.images(1, (70, 50)))
    assert out.shape == (1, 70, 50)
    assert 0 <= int(out.min()) and int(out.max()) < 150


def test_smp_directory_uses_albumentations_eval_config(tmp_path):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    folder, model = sf.smp_directory(
        tmp_path, classes=4, albumentations=sf.albumentations_eval(mean, std, 255.0, resize=(96, 128))
    )
    (tmp_path / "labels.json").write_text(json.dumps({"labels": ["a", "b", "c", "d"], "categories": {"a": "part"}}))
    seg = gdx.load_segmenter("upernet", weights=str(folder))
    assert seg.input_size == (96, 128)
    assert seg.labels == ["a", "b", "c", "d"] and seg.categories == {"a": "part"}
    x = sf.images(1, (64, 64))
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model(((x + 1) / 2 - m) / s)
    assert (seg.logits(x) - ref).abs().max().item() < 1e-5
    # An explicit input_size option wins over the config's Resize.
    assert gdx.load_segmenter("upernet", weights=str(folder), input_size="64x64").input_size == (64, 64)


def test_smp_directory_without_normalize_feeds_raw_pixels(tmp_path):
    cfg = {"transform": {"__class_fullname__": "Compose", "transforms": [{"__class_fullname__": "ToTensorV2"}]}}
    folder, model = sf.smp_directory(tmp_path, classes=3, albumentations=cfg)
    seg = gdx.load_segmenter("upernet", weights=str(folder))
    x = sf.images(1, (32, 32))
    with torch.no_grad():
        ref = model((x + 1) * 127.5)
    assert (seg.logits(x) - ref).abs().max().item() < 1e-3 * ref.abs().max().item()
    assert seg.labels == ["class0", "class1", "class2"]


def test_mit_semseg_pair_resnet50_upernet_matches_original(mit_pair):
    enc_path, dec_path, model = mit_pair
    for weights in (enc_path.parent, enc_path):  # the folder, or the encoder with its decoder beside it
        seg = gdx.load_segmenter("upernet", weights=str(weights))
        assert "resnet50+upernet" in seg.describe()
        x = sf.images(2, (64, 64), seed=1)
        with torch.no_grad():
            ref = F.interpolate(model(sf.imagenet_input(x)), (64, 64), mode="bilinear", align_corners=False)
        assert (seg.logits(x) - ref).abs().max().item() < 1e-5
        assert torch.equal(seg.segment(x), ref.argmax(1))
        assert seg.labels[0] == "wall" and len(seg.labels) == 150


def test_mit_semseg_explicit_decoder_path_and_dilated_ppm(tmp_path):
    enc_path, dec_path, model = sf.mit_semseg_pair(tmp_path / "r18", encoder="resnet18dilated", classes=7)
    other = tmp_path / "elsewhere.pth"
    other.write_bytes(dec_path.read_bytes())
    labels = tmp_path / "names.txt"
    labels.write_text("\n".join(f"thing{i}" for i in range(7)))
    seg = gdx.load_segmenter("upernet", weights=str(enc_path), decoder_weights=str(other), labels=str(labels))
    assert "resnet18dilated+ppm_deepsup" in seg.describe()
    x = sf.images(1, (48, 40), seed=2)
    with torch.no_grad():
        ref = F.interpolate(model(sf.imagenet_input(x)), (48, 40), mode="bilinear", align_corners=False)
    assert (seg.logits(x) - ref).abs().max().item() < 1e-5
    assert seg.labels[6] == "thing6"


def test_mit_semseg_matches_the_reference_package_when_installed(tmp_path):
    """Against CSAIL's own code (pip install --no-deps mit-semseg): same keys, same numbers."""
    models = pytest.importorskip("mit_semseg.models.models")
    resnet = pytest.importorskip("mit_semseg.models.resnet")
    torch.manual_seed(0)
    enc = sf.randomize(models.ResnetDilated(resnet.resnet18(pretrained=False), dilate_scale=8))
    dec = sf.randomize(models.ModelBuilder.build_decoder(arch="ppm_deepsup", fc_dim=512, num_class=150))
    dec.use_softmax = True
    torch.save(enc.state_dict(), tmp_path / "encoder_epoch_1.pth")
    torch.save(dec.state_dict(), tmp_path / "decoder_epoch_1.pth")
    seg = gdx.load_segmenter("upernet", weights=str(tmp_path))
    x = sf.images(1, (64, 64))
    with torch.no_grad():
        ref = dec(enc(sf.imagenet_input(x), return_feature_maps=True), segSize=(64, 64))
    assert (seg.logits(x).softmax(1) - ref).abs().max().item() < 1e-6


def test_errors_missing_wrong_truncated_other_architecture(tmp_path, mit_pair):
    with pytest.raises(CheckpointError, match="not found"):
        gdx.load_segmenter("upernet", weights=str(tmp_path / "nope"))
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pth"):
        gdx.load_segmenter("upernet", weights=str(text), decoder_weights=str(text))
    enc_path, dec_path, _ = mit_pair
    cut = sf.truncate(enc_path, tmp_path / "encoder_epoch_30.pth")
    (tmp_path / "decoder_epoch_30.pth").write_bytes(dec_path.read_bytes())
    with pytest.raises(CheckpointError, match="truncated"):
        gdx.load_segmenter("upernet", weights=str(tmp_path))
    gan = sf.progan_like_state(tmp_path / "gan.pth")
    with pytest.raises(CheckpointError, match="ProGAN"):
        gdx.load_segmenter("upernet", weights=str(gan))
    with pytest.raises(CheckpointError, match="ProGAN"):
        gdx.load_segmenter("upernet", weights=str(enc_path), decoder_weights=str(gan))
    with pytest.raises(CheckpointError, match="swap them"):
        gdx.load_segmenter("upernet", weights=str(dec_path), decoder_weights=str(enc_path))
    empty = tmp_path / "emptydir"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="neither an smp"):
        gdx.load_segmenter("upernet", weights=str(empty))


def test_errors_labels_length_and_other_smp_model(tmp_path, smp_dir):
    folder, _ = smp_dir
    bad = tmp_path / "labels.txt"
    bad.write_text("a\nb\n")
    with pytest.raises(CheckpointError, match="2 names but the model predicts 150"):
        gdx.load_segmenter("upernet", weights=str(folder), labels=str(bad))
    deeplab_dir, _ = sf.smp_directory(tmp_path / "dl", arch="DeepLabV3", classes=3)
    with pytest.raises(CheckpointError, match="use the segmenter `deeplab`"):
        gdx.load_segmenter("upernet", weights=str(deeplab_dir))


def test_options_are_listed_for_the_cli():
    info = gdx.default_registry().info("segmenter", "upernet")
    assert {"weights", "decoder_weights", "labels", "input_size", "encoder_arch", "mean", "std"} <= set(info.options())


def test_smp_directory_never_downloads_encoder_weights(tmp_path):
    """A config naming encoder_weights='imagenet' (as most saved models do) still loads offline."""
    folder, model = sf.smp_directory(tmp_path, classes=3)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["encoder_weights"] = "imagenet"
    (folder / "config.json").write_text(json.dumps(cfg))
    seg = gdx.load_segmenter("upernet", weights=str(folder))
    x = sf.images(1, (32, 32))
    with torch.no_grad():
        ref = model(sf.imagenet_input(x))
    assert (seg.logits(x) - ref).abs().max().item() < 1e-5


def test_smp_upernet_plain_state_dict(tmp_path):
    path, model = sf.smp_state_dict(tmp_path / "upernet.pth", arch="UPerNet", encoder="resnet18", classes=150)
    seg = gdx.load_segmenter("upernet", weights=str(path))
    assert "smp UPerNet resnet18" in seg.describe() and seg.labels[2] == "sky"
    x = sf.images(1, (64, 64))
    with torch.no_grad():
        ref = model(sf.imagenet_input(x))
    assert (seg.logits(x) - ref).abs().max().item() < 1e-5
    with pytest.raises(CheckpointError, match="resnet34"):
        gdx.load_segmenter("upernet", weights=str(path), encoder="resnet34")
