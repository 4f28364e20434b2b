"""The paper's segmenter: Unified Perceptual Parsing (UPerNet, ResNet-50) on Broden+.

Xiao et al. 2018 (CSAILVision/unifiedparsing), as GAN Dissection used it through
gandissect's ``netdissect/upsegmodel``: a folder ``upp-resnet50-upernet/`` with
``encoder_epoch_40.pth``, ``decoder_epoch_40.pth`` and ``labels.json`` (the Broden+
vocabularies: ``object``, ``material``, ``scene``, ``part`` and ``object_part``,
object -> its part names). The label lists exist only in that ``labels.json``; gdx
cannot ship them, so they are read from the weights folder or the ``labels`` option.

Architecture: mit_semseg's deep-stem ResNet-50 (not dilated) and a UPerNet decoder
with four heads (scene on the PPM output, material on P2, object and part on the
fused FPN). The original pools the PPM branches with Precise RoI Pooling, a CUDA-only
extension with no parameters, over a RoI covering the whole feature map.
:func:`precise_roi_pool` computes the same integral in plain torch (the exact
average of the bilinear interpolant over each bin, zero outside the map), so the
model runs on the CPU without approximation; ``ppm_pool="adaptive"`` swaps in
``adaptive_avg_pool2d`` instead.

Output (as gandissect's ``UnifiedParsingSegmenter``): N x 3 x H x W label maps,
channel 0 the object, 1 the material, 2 the part (only where the object argmax is an
object whose parts are used; gandissect uses the parts of sky, building and person).
Broden's index 0 ("-", nothing) becomes -1, and so does a ``"-"`` entry of a part list. A part that is also an object (a door
is an object and a part of a building) uses the object's label, as in gandissect.
Preprocessing: BGR, 0..255, minus [102.9801, 115.9465, 122.7717] (no std).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gdx.errors import CheckpointError

from gdx.plugins.segmenters.mit_semseg_arch import DeepStemResNet, PyramidFPN, conv3x3_bn_relu
from gdx.plugins.segmenters.torch_segmenter import Preprocess, TorchSegmenter

UPP_PREPROCESS = Preprocess(mean=(102.9801, 115.9465, 122.7717), std=(1.0, 1.0, 1.0), scale=255.0, bgr=True)
GANDISSECT_PART_OBJECTS = ("sky", "building", "person")


def _hat_integral(t: torch.Tensor) -> torch.Tensor:
    """∫_{-inf}^{t} max(0, 1 - |s|) ds: the cumulative integral of the bilinear hat."""
    return torch.where(
        t <= -1, torch.zeros_like(t),
        torch.where(t <= 0, 0.5 * (t + 1) ** 2, torch.where(t <= 1, 1 - 0.5 * (1 - t) ** 2, torch.ones_like(t))),
    )


def _bin_weights(length: int, bins: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """bins x length: the integral of each pixel's hat over each of ``bins`` equal bins of [0, length]."""
    edges = torch.arange(bins + 1, dtype=torch.float64) * (length / bins)
    centres = torch.arange(length, dtype=torch.float64)
    w = _hat_integral(edges[1:, None] - centres[None, :]) - _hat_integral(edges[:-1, None] - centres[None, :])
    return (w / (length / bins)).to(dtype=dtype, device=device)


def precise_roi_pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    """PrRoIPool2D(bins, bins, 1.0) over the RoI (0, 0, W, H) of every image, in plain torch.

    Each output is the exact mean of the bilinear interpolant of ``x`` (pixel centres
    at integer coordinates, zero outside the map) over its bin; the integral separates
    into a ``bins x H`` and a ``bins x W`` weight matrix.
    """
    h, w = x.shape[-2:]
    wy = _bin_weights(h, bins, x.dtype, x.device)
    wx = _bin_weights(w, bins, x.dtype, x.device)
    return torch.einsum("ph,nchw,qw->ncpq", wy, x, wx)


class PPMPool(nn.Module):
    """The parameter-free PPM pooling of one scale (precise RoI pooling or adaptive average)."""

    def __init__(self, scale: int, mode: str = "prroi") -> None:
        super().__init__()
        self.scale, self.mode = scale, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "adaptive":
            return F.adaptive_avg_pool2d(x, self.scale)
        return precise_roi_pool(x, self.scale)


class UnifiedParsingDecoder(PyramidFPN):
    """gandissect's ``upsegmodel.UPerNet`` (key names kept); ``forward`` -> head logits at P2 size."""

    # Registered with setattr in __init__ (key names object_head, part_head, material_head).
    object_head: nn.Sequential
    part_head: nn.Sequential
    material_head: nn.Sequential

    def __init__(self, nr_classes: Mapping[str, int], fc_dim: int = 2048, pool_scales: Sequence[int] = (1, 2, 3, 6),
                 fpn_inplanes: Sequence[int] = (256, 512, 1024, 2048), fpn_dim: int = 512,
                 ppm_pool: str = "prroi") -> None:
        super().__init__([PPMPool(s, ppm_pool) for s in pool_scales], fc_dim, fpn_inplanes, fpn_dim)
        self.conv_fusion = conv3x3_bn_relu(len(fpn_inplanes) * fpn_dim, fpn_dim)
        self.scene_head = nn.Sequential(
            conv3x3_bn_relu(fpn_dim, fpn_dim), nn.AdaptiveAvgPool2d(1), nn.Conv2d(fpn_dim, nr_classes["scene"], 1)
        )
        for head in ("object", "part", "material"):
            setattr(self, f"{head}_head", nn.Sequential(
                conv3x3_bn_relu(fpn_dim, fpn_dim), nn.Conv2d(fpn_dim, nr_classes[head], 1)
            ))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """[object, material, part] logits; the scene head is not needed for pixel labels."""
        levels = self.fpn_levels(feats)
        fused = self.conv_fusion(self.concat_levels(levels))
        return [self.object_head(fused), self.material_head(levels[0]), self.part_head(fused)]


class UnifiedParsingModel(nn.Module):
    def __init__(self, encoder: DeepStemResNet, decoder: UnifiedParsingDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.decoder(self.encoder(x))


@dataclass(frozen=True)
class BrodenLabels:
    """labels.json of a Unified Perceptual Parsing model, and gdx's flat label list built from it."""

    object: list[str]
    material: list[str]
    scene: list[str]
    object_part: dict[str, list[str]]

    @property
    def nr_classes(self) -> dict[str, int]:
        return {"object": len(self.object), "material": len(self.material), "scene": len(self.scene),
                "part": sum(len(p) for p in self.object_part.values())}

    def objects_with_parts(self) -> list[str]:
        """Objects in the order their part channels appear (sorted by object index, as in training)."""
        index = {name: i for i, name in enumerate(self.object)}
        return sorted(self.object_part, key=lambda name: index[name])


def read_broden_labels(path: Path) -> BrodenLabels:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"Unified Perceptual Parsing labels {path}: cannot read ({exc}).") from None
    keys = ("object", "material", "scene", "object_part")
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise CheckpointError(
            f"Unified Perceptual Parsing labels {path}: expected the model's labels.json with keys "
            f"{', '.join(keys)} (it ships beside encoder_epoch_40.pth in upp-resnet50-upernet/)."
        )
    labels = BrodenLabels(list(data["object"]), list(data["material"]), list(data["scene"]),
                          {str(k): list(v) for k, v in data["object_part"].items()})
    unknown = [o for o in labels.object_part if o not in labels.object]
    if unknown:
        raise CheckpointError(f"{path}: object_part names objects that are not in 'object': {unknown[:5]}")
    return labels


#: Part-list entries that name no part (Broden's "-"); their pixels get no part label (-1).
NO_PART = frozenset({"-", ""})


class UnifiedParsingSegmenter(TorchSegmenter):
    """N x 3 x H x W labels (object, material, part) from a Unified Perceptual Parsing model."""

    def __init__(self, model: UnifiedParsingModel, broden: BrodenLabels, *, part_objects: Sequence[str] | None,
                 input_size: tuple[int, int] | None, details: str) -> None:
        objects = broden.object[1:]
        materials = [m if m not in objects else f"{m} (material)" for m in broden.material[1:]]
        labels = list(objects) + materials
        categories = {**{o: "object" for o in objects}, **{m: "material" for m in materials}}
        self.material_offset = len(objects)
        index = {name: i for i, name in enumerate(labels)}
        # Per object with parts (in channel order): its slice of the part logits and the
        # gdx label of each of its parts; only objects in part_objects are used.
        self.part_slices: list[tuple[int, int, int, torch.Tensor]] = []
        start = 0
        for owner in broden.objects_with_parts():
            parts = broden.object_part[owner]
            if part_objects is None or owner in part_objects:
                ids = []
                for part in parts:
                    if part in NO_PART:  # Broden's "-" (nothing): no part label there, as in gandissect
                        ids.append(-1)
                    elif part in objects:
                        ids.append(index[part])
                    else:
                        if part not in index:
                            index[part] = len(labels)
                            labels.append(part)
                            categories[part] = "part"
                        ids.append(index[part])
                self.part_slices.append((broden.object.index(owner) - 1, start, start + len(parts), torch.tensor(ids)))
            start += len(parts)
        super().__init__(model, labels=labels, categories=categories, name="upernet", preprocess=UPP_PREPROCESS,
                         input_size=input_size, multiple=32, details=details)
        self.heads = ["object", "material", "part"]

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        obj_logits, mat_logits, part_logits = self.logits(images)
        obj = obj_logits.argmax(1)
        mat = mat_logits.argmax(1)
        out = torch.full((images.shape[0], 3, *obj.shape[-2:]), -1, dtype=torch.long, device=obj.device)
        out[:, 0] = torch.where(obj > 0, obj - 1, -1)
        out[:, 1] = torch.where(mat > 0, mat - 1 + self.material_offset, -1)
        for owner, lo, hi, ids in self.part_slices:
            local = part_logits[:, lo:hi].argmax(1)
            mask = out[:, 0] == owner
            out[:, 2][mask] = ids.to(local.device)[local][mask]
        return out.to(images.device)


def is_unified_parsing_decoder(state: Mapping[str, torch.Tensor]) -> bool:
    return "object_head.1.weight" in state and "material_head.1.weight" in state and "conv_fusion.0.weight" in state


def build_unified_parsing(encoder: DeepStemResNet, dec_state: dict[str, torch.Tensor], broden: BrodenLabels, *,
                          ppm_pool: str = "prroi") -> UnifiedParsingModel:
    """The model for these weights; raises CheckpointError when labels.json and the heads disagree."""
    expected = broden.nr_classes
    found = {"object": dec_state["object_head.1.weight"].shape[0],
             "material": dec_state["material_head.1.weight"].shape[0],
             "part": dec_state["part_head.1.weight"].shape[0],
             "scene": dec_state["scene_head.2.weight"].shape[0] if "scene_head.2.weight" in dec_state else 0}
    wrong = {k: (expected[k], int(v)) for k, v in found.items() if int(v) != expected[k]}
    if wrong:
        raise CheckpointError(
            "Unified Perceptual Parsing: labels.json does not match the decoder's heads "
            + ", ".join(f"{k}: labels {a} vs weights {b}" for k, (a, b) in wrong.items())
            + ". Use the labels.json that came with these weights."
        )
    fpn_dim = int(dec_state["ppm_last_conv.0.weight"].shape[0])
    fc_dim = int(dec_state["ppm_conv.0.0.weight"].shape[1])
    decoder = UnifiedParsingDecoder(expected, fc_dim=fc_dim, fpn_inplanes=tuple(encoder.out_channels),
                                    fpn_dim=fpn_dim, ppm_pool=ppm_pool)
    return UnifiedParsingModel(encoder, decoder)
