"""The "onnx" segmenter: an exported segmenter agrees with torch, providers are reported truthfully."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import gdx
from gdx.errors import AdapterOptionError, CheckpointError, SegmenterOutputError

import seg_formats as sf

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


class ArgmaxHead(nn.Module):
    """A model whose ONNX graph outputs int64 labels N x H x W instead of logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).argmax(1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small smp UPerNet (resnet18 encoder, 5 classes) exported to ONNX at 64x64, batch 2."""
    import segmentation_models_pytorch as smp

    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = sf.randomize(smp.UPerNet("resnet18", encoder_weights=None, classes=5, decoder_channels=32))
    path = sf.onnx_export(folder / "upernet.onnx", model)
    labels = folder / "labels.json"
    labels.write_text(json.dumps({"labels": ["sky", "tree", "road", "car", "wall"], "categories": {"car": "object"}}))
    return path, model, labels


def test_onnx_export_agrees_with_torch(exported):
    path, model, labels = exported
    seg = gdx.load_segmenter(
        "onnx", model=str(path), labels=str(labels), input_range="0,1",
        mean="0.485,0.456,0.406", std="0.229,0.224,0.225",
    )
    assert seg.input_size == (64, 64)  # the graph's static input shape
    assert seg.labels == ["sky", "tree", "road", "car", "wall"] and seg.categories == {"car": "object"}
    x = sf.images(3, (64, 64))  # 3 images through a batch-2 graph: chunked and padded
    with torch.no_grad():
        ref = model(sf.imagenet_input(x))
    assert (seg.logits(x) - ref).abs().max().item() < 1e-4
    out = seg.segment(x)
    assert out.dtype == torch.int64 and out.shape == (3, 64, 64)
    agree = (out == ref.argmax(1)).float().mean().item()
    assert agree > 0.999  # argmax may flip only where two logits tie within 1e-4


def test_providers_are_the_ones_that_run(exported):
    import onnxruntime as ort

    path, _, labels = exported
    seg = gdx.load_segmenter("onnx", model=str(path), labels=str(labels))
    assert seg.providers == seg.session.get_providers()
    assert seg.providers[0] in seg.describe()
    assert set(seg.providers) <= set(ort.get_available_providers())
    # Asking for CUDA where it cannot start falls back to CPU: that must be visible.
    if not torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        with pytest.warns(UserWarning, match="did not start"):
            cuda = gdx.load_segmenter("onnx", model=str(path), labels=str(labels), providers="cuda,cpu")
        assert cuda.providers == ["CPUExecutionProvider"]
        assert "did not start" in cuda.describe()


def test_label_output_model_and_txt_labels(tmp_path, exported):
    _, model, _ = exported
    path = sf.onnx_export(tmp_path / "labels_out.onnx", ArgmaxHead(model))
    names = tmp_path / "labels.txt"
    names.write_text("a\nb\nc\nd\ne\n")
    seg = gdx.load_segmenter("onnx", model=str(path), labels=str(names), input_range="0,1",
                             mean="0.485,0.456,0.406", std="0.229,0.224,0.225")
    x = sf.images(2, (64, 64))
    with torch.no_grad():
        ref = model(sf.imagenet_input(x)).argmax(1)
    assert (seg.segment(x) == ref).float().mean().item() > 0.999
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    narrow = gdx.load_segmenter("onnx", model=str(path), labels=str(short))
    if int(ref.max()) >= 2:
        with pytest.raises(SegmenterOutputError, match="labels file"):
            narrow.segment(x)


def test_input_range_0_255_and_resizing_to_the_static_shape(tmp_path):
    conv = nn.Conv2d(3, 4, 1)
    torch.manual_seed(1)
    nn.init.normal_(conv.weight)
    path = sf.onnx_export(tmp_path / "conv.onnx", conv, size=(16, 16), batch=1)
    with pytest.warns(UserWarning, match=r"came without label names.*class0\.\.class3.*labels="):
        seg = gdx.load_segmenter("onnx", model=str(path), input_range="0,255")
    assert seg.labels == ["class0", "class1", "class2", "class3"]
    x = sf.images(2, (16, 16))
    with torch.no_grad():
        ref = conv((x + 1) * 127.5)
    assert (seg.logits(x) - ref).abs().max().item() < 1e-3
    big = sf.images(1, (32, 24))
    assert seg.segment(big).shape == (1, 32, 24)


def test_errors(tmp_path, exported):
    path, _, labels = exported
    with pytest.raises(CheckpointError, match="not found"):
        gdx.load_segmenter("onnx", model=str(tmp_path / "none.onnx"))
    with pytest.raises(CheckpointError, match="truncated"):
        gdx.load_segmenter("onnx", model=str(sf.truncate(path, tmp_path / "cut.onnx")), labels=str(labels))
    not_onnx = sf.progan_like_state(tmp_path / "gan.onnx")
    with pytest.raises(CheckpointError, match="not an ONNX model"):
        gdx.load_segmenter("onnx", model=str(not_onnx))
    wrong = tmp_path / "three.json"
    wrong.write_text(json.dumps(["a", "b", "c"]))
    with pytest.raises(CheckpointError, match="predicts 5 classes"):
        gdx.load_segmenter("onnx", model=str(path), labels=str(wrong))
    with pytest.raises(AdapterOptionError, match="input_range"):
        gdx.load_segmenter("onnx", model=str(path), input_range="0,2")
    dup = tmp_path / "dup.txt"
    dup.write_text("a\na\nb\nc\nd\n")
    with pytest.raises(CheckpointError, match="duplicate"):
        gdx.load_segmenter("onnx", model=str(path), labels=str(dup))
