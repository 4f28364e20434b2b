"""The bundled scene segmenter: a small U-Net trained on the procedural scene world.

It labels every pixel with one of :data:`gdx.scenes.LABELS` (sky, cloud, sun, mountain,
water, grass, road, tree, building, brick, roof, dome, door, window), the concepts the
bundled scene generators draw. Weights ship as safetensors with a JSON config; the same
network is also shipped as ONNX (``scene_segmenter.onnx``) for the generic onnx plugin.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import gdx
from gdx.checkpoints import existing_file, load_safetensors_file
from gdx.errors import CheckpointError
from gdx.hookspecs import Register

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class SceneSegment(nn.Module):
    """Images N x 3 x H x W in [-1, 1] -> labels N x H x W (argmax of the network's logits).

    The network needs sides that are multiples of 16; other sizes are resized to the next
    multiple and the logits resized back, so the labels always match the input size.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.eval()

    def segment_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable logits N x L x H x W (for the learned unit masks of gdx.optimize_units)."""
        h, w = images.shape[-2:]
        hh, ww = -(-h // 16) * 16, -(-w // 16) * 16
        x = images.clamp(-1, 1)
        if (hh, ww) != (h, w):
            x = F.interpolate(x, size=(hh, ww), mode="bilinear", align_corners=False)
        logits = self.net(x)
        if (hh, ww) != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return logits

    def segment_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's feature maps (differentiable), coarse to fine: the perceptual loss of
        :func:`gdx.invert` compares these, as they are what the labels are read from."""
        h, w = images.shape[-2:]
        x = images.clamp(-1, 1)
        if h % 16 or w % 16:
            x = F.interpolate(x, size=(-(-h // 16) * 16, -(-w // 16) * 16), mode="bilinear", align_corners=False)
        encoder: nn.Module = getattr(getattr(self.net, "net"), "encoder")  # the smp model's encoder
        return list(encoder(x))[1:]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.segment_logits(images).argmax(1)


def build_scene(weights: str = "") -> gdx.Segmenter:
    """Bundled U-Net (MobileNetV3-small) for the scene world's 14 concepts; 64x64 input.

    Args:
        weights: another export of the training script (.safetensors with its .json beside it); default: the bundled one
    """
    from gdx.plugins.scene_arch import SceneSegmenterNet

    what = "scene segmenter weights"
    path = existing_file(Path(weights) if weights else WEIGHTS_DIR / "scene_segmenter.safetensors", what=what)
    config_path = path.with_suffix(".json")
    if not config_path.exists():
        raise CheckpointError(
            f"{what}: {config_path} (the config beside the weights) is missing; export again with "
            "python -m tools.scenes.train_segmenter --export, which writes both files."
        )
    try:
        config = json.loads(config_path.read_bytes())
        labels = list(config["labels"])
        net = SceneSegmenterNet(len(labels), config)
        try:
            net.load_state_dict(load_safetensors_file(path, what=what))
        except RuntimeError as exc:
            raise CheckpointError(f"{what}: {path} does not match {config_path}: {str(exc)[:200]}") from None
        return gdx.wrap_segmenter(
            SceneSegment(net),
            labels=labels,
            categories=config["categories"],
            name="scene",
            input_size=tuple(config["input_size"]),
        )
    except gdx.GdxError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        raise CheckpointError(
            f"{what}: {config_path} (the config beside the weights) is damaged ({type(exc).__name__}: "
            f"{str(exc)[:160]}); export both files again with python -m tools.scenes.train_segmenter --export."
        ) from None


@gdx.hookimpl
def register_segmenters(register: Register) -> None:
    register("scene", build_scene)
