"""Segmenter checkpoints in the exact formats users have, filled with random weights.

Each builder returns the path(s) it wrote and the original module, so a test can
load the file through the adapter and compare outputs with the module that wrote it.
BatchNorm running statistics are randomised too, so a buffer that fails to load
changes the output.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random parameters and BN statistics (deterministic in ``seed``); returns ``model.eval()``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return model.eval()


def imagenet_input(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] RGB -> the ImageNet-normalised 0..1 input most of these models expect."""
    return ((images + 1) / 2 - IMAGENET_MEAN) / IMAGENET_STD


def images(n: int = 2, size: tuple[int, int] = (64, 64), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, *size), generator=g) * 2 - 1


def smp_directory(folder: Path, *, arch: str = "UPerNet", encoder: str = "resnet18", classes: int = 150,
                  albumentations: dict | None = None, seed: int = 0, **kwargs) -> tuple[Path, nn.Module]:
    """An smp ``save_pretrained`` directory (config.json + model.safetensors [+ albumentations config]).

    ``kwargs`` go to the smp constructor (tests shrink ``decoder_channels`` for speed).
    """
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    kwargs.setdefault("decoder_channels", 64 if arch == "UPerNet" else 32)
    model = randomize(getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=classes, **kwargs), seed)
    model.save_pretrained(str(folder))
    if albumentations is not None:
        (folder / "albumentations_config_eval.json").write_text(json.dumps(albumentations))
    return folder, model


def albumentations_eval(mean, std, max_pixel_value=255.0, resize=None) -> dict:
    """What ``A.Compose([...]).save_pretrained`` writes for Resize + Normalize + ToTensorV2."""
    transforms = []
    if resize is not None:
        transforms.append({"__class_fullname__": "Resize", "p": 1.0, "height": resize[0], "width": resize[1],
                           "interpolation": 1})
    transforms.append({"__class_fullname__": "Normalize", "p": 1.0, "mean": list(mean), "std": list(std),
                       "max_pixel_value": max_pixel_value, "normalization": "standard"})
    transforms.append({"__class_fullname__": "ToTensorV2", "p": 1.0, "transpose_mask": False})
    return {"__version__": "2.0.5", "transform": {"__class_fullname__": "Compose", "p": 1.0,
                                                  "transforms": transforms, "is_check_shapes": True}}


def smp_state_dict(path: Path, *, arch: str = "DeepLabV3", encoder: str = "resnet18", classes: int = 21,
                   seed: int = 0) -> tuple[Path, nn.Module]:
    """``torch.save(model.state_dict())`` of an smp model (default decoder size: the adapter builds it so)."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    model = randomize(getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=classes), seed)
    torch.save(model.state_dict(), path)
    return path, model


def torchvision_deeplab(path: Path, *, classes: int = 21, aux: bool = True, seed: int = 0) -> tuple[Path, nn.Module]:
    """A torchvision ``deeplabv3_resnet50`` state dict (backbone.*, classifier.*, aux_classifier.*)."""
    from torchvision.models.segmentation import deeplabv3_resnet50

    torch.manual_seed(seed)
    model = randomize(deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=classes, aux_loss=aux), seed)
    torch.save(model.state_dict(), path)
    return path, model


def mit_semseg_pair(folder: Path, *, encoder: str = "resnet50", classes: int = 150, epoch: int = 30,
                    syncbn_leftovers: bool = True, seed: int = 0) -> tuple[Path, Path, nn.Module]:
    """``encoder_epoch_N.pth`` + ``decoder_epoch_N.pth`` as mit_semseg saves them.

    Encoder: deep-stem ResNet (dilated for non-UPerNet decoders); decoder: UPerNet
    (fpn_dim 512) for plain encoders, PPM-deepsup for dilated ones, as in the
    published ADE20K models. SyncBN's ``_tmp_running_mean/var`` and ``_running_iter``
    buffers are added to every BN, as in the published files.
    """
    from gdx.plugins.segmenters import mit_semseg_arch as A

    torch.manual_seed(seed)
    enc = A.build_encoder(encoder)
    fc_dim = enc.out_channels[-1]
    if encoder.endswith("dilated"):
        dec = A.PPM(classes, fc_dim, deepsup=True)
    else:
        dec = A.UPerNetDecoder(classes, fc_dim, fpn_inplanes=tuple(enc.out_channels), fpn_dim=512)
    model = randomize(A.MitSemsegModel(enc, dec), seed)
    esd, dsd = dict(model.encoder.state_dict()), dict(model.decoder.state_dict())
    if syncbn_leftovers:
        for sd in (esd, dsd):
            for k in [k for k in sd if k.endswith(".running_mean")]:
                base = k[: -len("running_mean")]
                sd[base + "_tmp_running_mean"] = torch.zeros_like(sd[k])
                sd[base + "_tmp_running_var"] = torch.ones_like(sd[k])
                sd[base + "_running_iter"] = torch.tensor(1)
    folder.mkdir(parents=True, exist_ok=True)
    enc_path, dec_path = folder / f"encoder_epoch_{epoch}.pth", folder / f"decoder_epoch_{epoch}.pth"
    torch.save(esd, enc_path)
    torch.save(dsd, dec_path)
    return enc_path, dec_path, model


def onnx_export(path: Path, model: nn.Module, size: tuple[int, int] = (64, 64), batch: int = 2) -> Path:
    """``torch.onnx.export`` (dynamo exporter, static shapes) of ``model``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(batch, 3, *size),), str(path), dynamo=True, verbose=False)
    return path


def truncate(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def progan_like_state(path: Path) -> Path:
    """A tiny state dict with gandissect ProGAN key names (another architecture)."""
    torch.save({"layer1.conv.weight": torch.zeros(8, 4, 4, 4), "layer1.wscale.b": torch.zeros(8),
                "output_8x8.conv.weight": torch.zeros(3, 8, 1, 1), "output_8x8.wscale.b": torch.zeros(3)}, path)
    return path


#: A small Broden+-style vocabulary (labels.json of a Unified Perceptual Parsing model).
UPP_LABELS = {
    "object": ["-", "sky", "building", "person", "door", "tree", "glass"],
    "material": ["-", "wood", "glass", "brick"],
    "scene": ["-", "street", "bedroom"],
    "part": ["cloud", "door", "window", "roof", "head", "arm", "trunk"],
    "object_part": {"person": ["head", "arm"], "sky": ["cloud"], "building": ["door", "window", "roof"],
                    "tree": ["trunk"]},
}


def upp_folder(folder: Path, *, labels: dict | None = None, epoch: int = 40, seed: int = 0,
               write_labels: bool = True) -> tuple[Path, nn.Module]:
    """``upp-resnet50-upernet/``: encoder/decoder epoch files (SyncBN leftovers) + labels.json."""
    from gdx.plugins.segmenters import mit_semseg_arch as A
    from gdx.plugins.segmenters import unified_parsing as U

    labels = labels or UPP_LABELS
    broden = U.BrodenLabels(labels["object"], labels["material"], labels["scene"], labels["object_part"])
    torch.manual_seed(seed)
    enc = A.build_encoder("resnet50")
    model = randomize(U.UnifiedParsingModel(enc, U.UnifiedParsingDecoder(broden.nr_classes)), seed)
    folder.mkdir(parents=True, exist_ok=True)
    for part, name in ((model.encoder, "encoder"), (model.decoder, "decoder")):
        sd = dict(part.state_dict())
        for k in [k for k in sd if k.endswith(".running_mean")]:
            sd[k[: -len("running_mean")] + "_tmp_running_mean"] = torch.zeros_like(sd[k])
        torch.save(sd, folder / f"{name}_epoch_{epoch}.pth")
    if write_labels:
        (folder / "labels.json").write_text(json.dumps(labels))
    return folder, model
