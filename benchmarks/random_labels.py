"""How many units random networks get: the paper's rule vs significance vs the random-weights control.

Random-weight ProGAN and StyleGAN2 generators (gdx's own architectures, the published
layouts at reduced size so it runs on a laptop CPU) read by a random-weight smp UPerNet
(150 labels); for each, the dissection of the model as built and of its
``control="random-weights"`` re-initialisation (a second, independent random draw).
Prints interpretable (IoU > 0.05) and significant (BH 5% vs the spatial-prior null)
counts. See docs/dissection.md, "Can you trust a label?".

    python benchmarks/random_labels.py --samples 64 --size 64
"""

from __future__ import annotations

import argparse

import torch

import gdx
from gdx.plugins.generators.progan_arch import ProgressiveGenerator
from gdx.plugins.generators.stylegan2_arch import StyleGAN2Config, StyleGAN2Generator


def segmenter(size: int) -> gdx.Segmenter:
    import segmentation_models_pytorch as smp

    torch.manual_seed(1)
    net = smp.UPerNet("resnet18", encoder_weights=None, classes=150).eval()
    return gdx.wrap_segmenter(lambda x: net(x).argmax(1), labels=[f"c{i}" for i in range(150)],
                              name="upernet-r18-random", input_size=(size, size))


def generators(size: int) -> dict[str, tuple[gdx.Generator, str]]:
    torch.manual_seed(0)
    progan = ProgressiveGenerator(resolution=size).eval()
    cfg = StyleGAN2Config(z_dim=128, w_dim=128, c_dim=0, img_resolution=size,
                          channels={r: (128 if r <= 16 else 64) for r in (4, 8, 16, 32, 64, 128, 256) if r <= size},
                          mapping_layers=4)
    torch.manual_seed(0)
    style = StyleGAN2Generator(cfg).eval().requires_grad_(False)
    return {
        f"ProGAN-{size} (random), layer4": (gdx.wrap_generator(progan, latent_shape=(512,), name="progan-random"), "layer4"),
        f"StyleGAN2-{size} (random), synthesis.b16.conv1": (gdx.wrap_generator(style, latent_shape=(128,), name="stylegan2-random"),
                                                      "synthesis.b16.conv1"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--only", default="", help="run only the models whose name contains this")
    args = ap.parse_args()
    seg = segmenter(args.size)
    print(f"{args.samples} samples, seed 0, threshold 0.99, images and segmentation {args.size}x{args.size}")
    print(f"{'model':<44} {'run':<16} {'units':>5} {'interpretable':>13} {'significant':>11} {'max IoU':>8}")
    for name, (gen, layer) in generators(args.size).items():
        if args.only not in name:
            continue
        for control in (None, "random-weights"):
            d = gdx.dissect(gen, seg, layer, samples=args.samples, seed=0, progress=False, control=control)
            s = d.summary()
            print(f"{name:<44} {control or 'as built':<16} {s.units:>5} {s.interpretable:>13} {s.significant:>11} "
                  f"{float(d.iou.max()):8.3f}")


if __name__ == "__main__":
    main()
