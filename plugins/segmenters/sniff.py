"""Recognise what a state dict is, so a wrong checkpoint gets a useful error.

"Missing key encoder.conv1.weight" does not tell a user that they passed a ProGAN
generator to the UPerNet loader; :func:`looks_like` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _has(keys: set[str], *prefixes: str) -> bool:
    return all(any(k.startswith(p) for k in keys) for p in prefixes)


def looks_like(state: Mapping[str, Any]) -> str:
    """A short human description of the model a state dict belongs to."""
    keys = set(state)
    if not keys:
        return "an empty state dict"
    if _has(keys, "layer1.conv.weight") and any(k.endswith("wscale.b") for k in keys):
        return "a gandissect ProGAN generator"
    if _has(keys, "features.0.") and any("wscale" in k for k in keys):
        return "an old-style (features.N) ProGAN generator"
    if _has(keys, "synthesis.") and _has(keys, "mapping."):
        return "a StyleGAN2/3 generator"
    if _has(keys, "convs.", "to_rgbs.") or _has(keys, "style.1."):
        return "a rosinality StyleGAN2 generator"
    if _has(keys, "encoder.down_blocks.", "decoder.up_blocks.") or _has(keys, "decoder.conv_in."):
        return "a diffusers VAE (AutoencoderKL/Tiny)"
    if _has(keys, "backbone.", "classifier."):
        if _has(keys, "classifier.0.convs."):
            return "a torchvision DeepLabV3 segmenter"
        if _has(keys, "classifier.4."):
            return "a torchvision FCN segmenter"
        if _has(keys, "classifier.low_classifier."):
            return "a torchvision LR-ASPP segmenter"
        return "a torchvision segmentation model"
    if _has(keys, "encoder.", "decoder.", "segmentation_head."):
        kind = "an smp segmentation model"
        if _has(keys, "decoder.aspp.0.convs."):
            kind = "an smp DeepLabV3+ model"
        elif _has(keys, "decoder.aspp."):
            kind = "an smp DeepLabV3 model"
        elif _has(keys, "decoder.fusion_block.") or _has(keys, "decoder.feature_norms."):
            kind = "an smp UPerNet model"
        elif _has(keys, "decoder.blocks."):
            kind = "an smp U-Net-style model"
        return kind
    if _has(keys, "ppm_last_conv.", "fpn_in."):
        if _has(keys, "object_head.") or _has(keys, "material_head.") or _has(keys, "part_head."):
            return "a Unified Perceptual Parsing (Broden+) UPerNet decoder"
        return "a CSAIL mit_semseg UPerNet decoder"
    if _has(keys, "ppm.0.", "conv_last."):
        return "a CSAIL mit_semseg PPM decoder"
    if _has(keys, "cbr.0.", "conv_last."):
        return "a CSAIL mit_semseg C1 decoder"
    if _has(keys, "conv1.weight", "conv2.weight", "conv3.weight", "layer1.0."):
        if "fc.weight" in keys:
            return "a deep-stem ResNet ImageNet classifier (mit_semseg pretrained backbone)"
        return "a CSAIL mit_semseg deep-stem ResNet encoder"
    if _has(keys, "conv1.weight", "layer1.0.", "fc.weight"):
        return "a torchvision-style ResNet classifier"
    if _has(keys, "features.") and _has(keys, "classifier."):
        return "a torchvision-style classifier (features/classifier)"
    sample = ", ".join(sorted(keys)[:4])
    return f"an unrecognised model (first keys: {sample})"
