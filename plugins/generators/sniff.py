"""Guess what kind of network a state dict belongs to, from its key names alone.

Adapters use this to turn "the keys don't match" into "this file looks like a
StyleGAN2 generator in rosinality's layout (use the generator `stylegan2`)", which is the error a
user can act on.
"""

from __future__ import annotations

from collections.abc import Iterable

#: (test on the key set, description); the first match wins.
_SIGNATURES: list[tuple[tuple[str, ...], str]] = [
    (("layer1.conv.weight", "layer2.conv.weight"), "a ProGAN generator in gandissect's layout (use the generator `progan`)"),
    (("features.0.conv.weight", "output.conv.weight"), "a ProGAN generator in the old features.N layout (use the generator `progan`)"),
    (("synthesis.input.affine.weight",), "a StyleGAN3 (alias-free) generator, which gdx does not build"),
    (("mapping.fc0.weight", "synthesis.b4.const"), "a StyleGAN2 generator in NVIDIA's layout (use the generator `stylegan2`)"),
    (("style.1.weight", "input.input"), "a StyleGAN2 generator in rosinality's layout (use the generator `stylegan2`)"),
    (("g_ema",), "a rosinality StyleGAN2 training checkpoint (use the generator `stylegan2`)"),
    (("decoder.conv_in.weight", "post_quant_conv.weight"), "a diffusers AutoencoderKL (use the generator `vae`)"),
    (("decoder.layers.0.weight",), "a diffusers AutoencoderTiny (use the generator `vae`)"),
    (("b4.conv.weight", "b4.out.weight"), "a StyleGAN2 discriminator, not a generator"),
    (("encoder.conv1.weight", "decoder.conv_last.1.weight"), "a segmenter (CSAIL UPerNet/PSPNet)"),
    (("encoder.conv1.weight", "decoder.segmentation_head.0.weight"), "a segmenter (segmentation_models_pytorch)"),
    (("segmentation_head.0.weight",), "a segmenter (segmentation_models_pytorch)"),
    (("backbone.conv1.weight", "classifier.4.weight"), "a segmenter (torchvision DeepLabV3)"),
    (("conv1.weight", "fc.weight"), "an image classifier (ResNet)"),
]


def describe_keys(keys: Iterable[str]) -> str:
    """A phrase naming what a checkpoint with these top-level/state-dict keys looks like."""
    keyset = set(keys)
    for needed, description in _SIGNATURES:
        if all(k in keyset for k in needed):
            return description
    # The decoder/encoder of smp models are nested one level deeper in some exports.
    if any(k.startswith("decoder.") for k in keyset) and any(k.startswith("encoder.") for k in keyset):
        return "an encoder/decoder network (a segmenter or an autoencoder)"
    sample = ", ".join(sorted(keyset)[:6])
    return f"an unrecognised network (first keys: {sample}{' ...' if len(keyset) > 6 else ''})"
