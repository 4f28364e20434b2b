"""Load segmentation_models_pytorch (smp) models from local files, never from the network.

Two formats users have:

* a ``save_pretrained`` / hub directory: ``config.json`` (with ``_model_class``) plus
  ``model.safetensors`` (or ``pytorch_model.bin``), and for smp-hub conversions an
  ``albumentations_config_eval.json`` that states the evaluation preprocessing;
* a plain state dict (``torch.save(model.state_dict())``) plus the architecture
  named by options.

``smp.from_pretrained`` would rebuild the encoder with the ``encoder_weights`` named
in the config, which downloads ImageNet weights that are overwritten a moment later;
offline that fails. Here the model is built with ``encoder_weights=None`` and the
file's tensors are loaded strictly, through :mod:`gdx.checkpoints`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gdx.checkpoints import load_safetensors_file, load_torch_file, unwrap_state_dict
from gdx.errors import CheckpointError

from gdx.plugins.segmenters.sniff import looks_like
from gdx.plugins.segmenters.torch_segmenter import IMAGENET_MEAN, IMAGENET_STD, Preprocess

ALBU_CONFIG = "albumentations_config_eval.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: Transforms of an eval pipeline that do not change pixel values (geometry is handled
#: by the segmenter's input size and stride padding).
_NEUTRAL = {"Compose", "Sequential", "ToTensorV2", "ToTensor", "PadIfNeeded", "LongestMaxSize", "SmallestMaxSize"}


@dataclass
class SmpModel:
    """An smp model rebuilt from files, with what the files say about its input."""

    model: nn.Module
    model_class: str
    encoder_name: str
    classes: int
    preprocess: Preprocess
    input_size: tuple[int, int] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def smp_module() -> Any:
    try:
        import segmentation_models_pytorch as smp
    except ImportError as exc:  # pragma: no cover - smp is a core dependency
        raise CheckpointError(
            f"segmentation_models_pytorch is needed for smp models ({exc}); pip install segmentation-models-pytorch"
        ) from None
    return smp


def is_smp_directory(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any((path / f).is_file() for f in WEIGHT_FILES)


def encoder_preprocess(encoder_name: str) -> Preprocess:
    """The preprocessing an smp encoder was pretrained with, known without the network.

    timm encoders (``tu-*``) carry their mean/std in timm's local pretrained config;
    smp's own encoders are ImageNet-pretrained with the ImageNet mean/std on RGB 0..1.
    """
    if encoder_name.startswith("tu-"):
        try:
            import timm

            cfg = timm.models.get_pretrained_cfg(encoder_name[3:])
            if cfg is not None and getattr(cfg, "mean", None) and getattr(cfg, "std", None):
                (m0, m1, m2), (s0, s1, s2) = (float(v) for v in cfg.mean), (float(v) for v in cfg.std)
                return Preprocess((m0, m1, m2), (s0, s1, s2))
        except Exception:  # noqa: BLE001 - unknown timm names fall back to ImageNet
            pass
    return Preprocess(IMAGENET_MEAN, IMAGENET_STD)


def albumentations_preprocess(path: Path) -> tuple[Preprocess, tuple[int, int] | None]:
    """Read an ``albumentations_config_eval.json`` without albumentations installed.

    ``Normalize(mean, std, max_pixel_value=m)`` on 0..255 pixels computes
    ``(img/m - mean)/std``; no Normalize means the model sees raw 0..255 values.
    ``Resize(height, width)`` gives the input size.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read the preprocessing config {path} ({exc}).") from None
    transforms: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "__class_fullname__" in node:
                transforms.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(data)
    pre = Preprocess((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), scale=255.0)
    size = None
    for t in transforms:
        kind = str(t["__class_fullname__"]).rsplit(".", 1)[-1]
        if kind == "Normalize":
            if t.get("normalization", "standard") != "standard":
                raise CheckpointError(
                    f"{path}: Normalize(normalization={t.get('normalization')!r}) is not supported; "
                    "pass the segmenter option `mean=...` and the segmenter option `std=...` for the model's "
                    "fixed normalisation."
                )
            m = float(t.get("max_pixel_value", 255.0) or 255.0)
            mean = t.get("mean", IMAGENET_MEAN)
            std = t.get("std", IMAGENET_STD)
            mean = [float(v) for v in (mean if isinstance(mean, (list, tuple)) else [mean] * 3)]
            std = [float(v) for v in (std if isinstance(std, (list, tuple)) else [std] * 3)]
            pre = Preprocess((mean[0], mean[1], mean[2]), (std[0], std[1], std[2]), scale=255.0 / m)
        elif kind == "Resize":
            size = (int(t["height"]), int(t["width"]))
        elif kind not in _NEUTRAL:
            warnings.warn(f"{path}: eval transform {kind} is not applied by gdx", stacklevel=3)
    return pre, size


def load_smp_directory(path: Path, *, what: str) -> SmpModel:
    """Rebuild an smp model from a ``save_pretrained`` directory, offline."""
    cfg_path = path / "config.json"
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{what}: cannot read {cfg_path} ({exc}); the directory may be incomplete.") from None
    if not isinstance(config, dict) or "_model_class" not in config:
        raise CheckpointError(
            f"{what}: {cfg_path} has no '_model_class'; it is not an smp save_pretrained directory "
            "(diffusers/transformers configs look different). Save the model with smp's save_pretrained."
        )
    model_class = str(config["_model_class"])
    smp = smp_module()
    cls = getattr(smp, model_class, None)
    if cls is None:
        raise CheckpointError(f"{what}: {cfg_path} names an smp model class {model_class!r} this smp does not have.")
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    kwargs["encoder_weights"] = None
    try:
        model = cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - any constructor failure is a bad config
        raise CheckpointError(f"{what}: cannot build smp.{model_class} from {cfg_path} ({exc}).") from None
    weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{what}: {path} has no {' or '.join(WEIGHT_FILES)}.")
    if weights.suffix == ".safetensors":
        state = load_safetensors_file(weights, what=what)
    else:
        state = unwrap_state_dict(load_torch_file(weights, what=what), what=what)
    load_strict(model, state, what=f"{what} ({weights})", expected=f"smp.{model_class}")
    encoder_name = str(kwargs.get("encoder_name", ""))
    classes = int(kwargs.get("classes", 1))
    if (path / ALBU_CONFIG).is_file():
        pre, size = albumentations_preprocess(path / ALBU_CONFIG)
        source = ALBU_CONFIG
    else:
        pre, size = encoder_preprocess(encoder_name), None
        source = f"encoder {encoder_name} defaults"
    return SmpModel(model.eval(), model_class, encoder_name, classes, pre, size, config, source)


def build_smp(arch: str, encoder: str, classes: int, *, what: str, **kwargs: Any) -> nn.Module:
    """``smp.<arch>(encoder_name=encoder, encoder_weights=None, classes=classes, **kwargs)``, errors explained."""
    smp = smp_module()
    cls = getattr(smp, arch, None)
    if cls is None or not isinstance(cls, type):
        raise CheckpointError(f"{what}: smp has no architecture {arch!r} (e.g. UPerNet, DeepLabV3, DeepLabV3Plus).")
    try:
        return cls(encoder_name=encoder, encoder_weights=None, classes=classes, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{what}: cannot build smp.{arch}(encoder_name={encoder!r}) ({exc}).") from None


_RESNET_DEPTH = {("basic", 2): "resnet18", ("basic", 6): "resnet34", ("bottleneck", 6): "resnet50",
                 ("bottleneck", 23): "resnet101", ("bottleneck", 36): "resnet152"}


def resnet_encoder_name(state: dict[str, torch.Tensor], prefix: str) -> str | None:
    """``resnet18..152`` when the keys under ``prefix`` are a torchvision-style ResNet, else None."""
    if f"{prefix}conv1.weight" not in state:
        return None
    block = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in state else "basic"
    blocks = len({k[len(prefix):].split(".")[1] for k in state if k.startswith(prefix + "layer3.")})
    return _RESNET_DEPTH.get((block, blocks))


def classes_of_smp_state(state: dict[str, torch.Tensor], *, what: str) -> int:
    w = state.get("segmentation_head.0.weight")
    if w is None:
        raise CheckpointError(
            f"{what}: the state dict has no segmentation_head.0.weight, so it is not an smp model; "
            f"it looks like {looks_like(state)}."
        )
    return int(w.shape[0])


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], *, what: str, expected: str) -> None:
    """``load_state_dict(strict=True)`` with an error that says what the file looks like."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        shapes = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise CheckpointError(
            f"{what}: the weights have the key names of {expected} but other shapes "
            f"({'; '.join(shapes[:2]) or exc}). Check the architecture options (encoder, classes)."
        ) from None
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: the weights do not fit {expected}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}). "
            f"The file looks like {looks_like(state)}; check the architecture options (arch/encoder)."
        )
