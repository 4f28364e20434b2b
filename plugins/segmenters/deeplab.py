"""The "deeplab" segmenter: torchvision DeepLabV3 and smp DeepLabV3/DeepLabV3+ weights.

The segmenter ``deeplab`` with the option ``weights=PATH``
(``gdx.load_segmenter("deeplab", weights=PATH)``), where PATH is

* a torchvision ``deeplabv3_resnet50``/``deeplabv3_resnet101`` state dict (keys
  ``backbone.*``, ``classifier.*``, optionally ``aux_classifier.*``; e.g.
  ``deeplabv3_resnet50_coco-cd0a2569.pth``). Preprocessing as torchvision's
  ``DeepLabV3_ResNet50_Weights.transforms()``: RGB 0..1, ImageNet mean/std. The
  network is fully convolutional, so by default it segments the images at their own
  size (the generator's resolution). ``input_size=520`` is torchvision's own eval resize (shorter side to
  520, aspect kept, bilinear with antialiasing; the labels come back at the image's
  size); ``input_size=HxW`` resizes to exactly H x W. The size used is logged
  (logger ``gdx.plugins.segmenters.deeplab``) the first time a size is seen and named
  by ``describe()``. The auxiliary head's weights load but it never runs;
* an smp ``DeepLabV3``/``DeepLabV3Plus`` ``save_pretrained`` directory;
* an smp DeepLabV3/V3+ plain state dict; the architecture is read from the keys and
  a ResNet encoder's depth from its blocks (``encoder`` names any other encoder).

Labels: ``labels=FILE``, else the 21 PASCAL VOC classes for 21-class models, else
``class0..``. VOC's index 0 is "background": it stays a real label by default,
because dissection then measures it like any other concept (a unit that fires on
background is informative, and dropping it would leave pixels unlabelled that the
model did label). ``ignore_background=true`` maps it to -1 ("no label") instead.
"""

from __future__ import annotations

import logging
import re

import torch
import torch.nn.functional as F
from torch import nn

import gdx
from gdx.checkpoints import existing_file, load_torch_file, unwrap_state_dict
from gdx.errors import AdapterOptionError, CheckpointError
from gdx.plugins.generators.downloads import KnownWeights

from gdx.plugins.segmenters.labels import choose_labels, voc_labels
from gdx.plugins.segmenters.smp_loading import (
    build_smp,
    classes_of_smp_state,
    is_smp_directory,
    load_smp_directory,
    load_strict,
    encoder_preprocess,
    resnet_encoder_name,
)
from gdx.plugins.segmenters.sniff import looks_like
from gdx.plugins.segmenters.torch_segmenter import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    TorchSegmenter,
    parse_size,
)
from gdx.plugins.segmenters.upernet import labels_beside, override_preprocess
from gdx.hookspecs import Register

WHAT = "deeplab segmenter weights"
#: torchvision's eval resize for its DeepLabV3 weights (shorter side, aspect kept): ``input_size=520``.
TORCHVISION_RESIZE = 520
log = logging.getLogger(__name__)


def short_side_size(h: int, w: int, short: int) -> tuple[int, int]:
    """torchvision's ``resize(img, [short])``: the shorter side becomes ``short``, the aspect is kept."""
    if h <= w:
        return short, int(short * w / h)
    return int(short * h / w), short


def parse_deeplab_size(text: str | int | None) -> tuple[str, int | tuple[int, int] | None]:
    """``input_size`` -> ("auto", None) | ("short", N) | ("exact", (H, W))."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "auto", "none")):
        return "auto", None
    if isinstance(text, int) or (isinstance(text, str) and text.strip().isdigit()):
        n = int(text)
        if n <= 0:
            raise AdapterOptionError(f"deeplab option input_size={text!r}: expected a positive size such as 520.")
        return "short", n
    size = parse_size(str(text))
    return ("exact", size) if size is not None else ("auto", None)


class DeeplabSegmenter(TorchSegmenter):
    """A TorchSegmenter that resizes inside, aspect kept (``short``), or not at all (``auto``).

    ``mode`` ``"auto"``: the images' own size (the generator's resolution); ``"short"``: the shorter side becomes
    ``short`` (torchvision's eval resize); ``"exact"``: the engine resizes to
    ``input_size`` before :meth:`segment`. Logits come back at the image's size.
    """

    def __init__(self, module: nn.Module, *, mode: str, short: int | None, **kwargs: object) -> None:
        super().__init__(module, **kwargs)  # type: ignore[arg-type]
        self.mode, self.short = mode, short
        self._logged: set[tuple[int, int, int, int]] = set()

    def size_for(self, h: int, w: int) -> tuple[int, int]:
        """The (H, W) the network sees for an image of h x w."""
        if self.mode == "short" and self.short is not None:
            return short_side_size(h, w, self.short)
        return h, w

    def logits(self, images: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        h, w = (int(v) for v in images.shape[-2:])
        size = self.size_for(h, w)
        if (h, w, *size) not in self._logged:
            self._logged.add((h, w, *size))
            log.info("deeplab: segmenting %dx%d images at %dx%d (segmenter option `input_size`)", h, w, *size)
        if size == (h, w):
            return super().logits(images)
        down = size[0] < h or size[1] < w
        x = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=down)
        out = super().logits(x)
        outs = out if isinstance(out, list) else [out]
        back = [F.interpolate(o, size=(h, w), mode="bilinear", align_corners=False) for o in outs]
        return back if isinstance(out, list) else back[0]

    def describe(self) -> str:
        if self.mode == "short":
            how = f"shorter side resized to {self.short} px, aspect kept"
        elif self.mode == "exact" and self.input_size is not None:
            how = f"resized to {self.input_size[0]}x{self.input_size[1]}"
        else:
            how = "at the images' own size"
        return f"{super().describe()}; segments {how}"


class TorchvisionOut(nn.Module):
    """torchvision segmentation models return ``{"out": ..., "aux": ...}``; keep ``out``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def load_torchvision_deeplab(state: dict[str, torch.Tensor], *, what: str) -> tuple[nn.Module, int, str]:
    """Build torchvision's deeplabv3_resnet{50,101} to fit ``state``; returns (model, classes, name)."""
    from torchvision.models import segmentation as tvseg

    backbone = resnet_encoder_name(state, "backbone.")
    if backbone not in ("resnet50", "resnet101"):
        raise CheckpointError(
            f"{what}: a torchvision DeepLabV3 with a {backbone or 'non-ResNet'} backbone is not supported "
            "(deeplabv3_resnet50 and deeplabv3_resnet101 are)."
        )
    classes = int(state["classifier.4.weight"].shape[0])
    aux = any(k.startswith("aux_classifier.") for k in state)
    factory = getattr(tvseg, f"deeplabv3_{backbone}")
    model = factory(weights=None, weights_backbone=None, num_classes=classes, aux_loss=aux)
    load_strict(model, state, what=what, expected=f"torchvision deeplabv3_{backbone}")
    return TorchvisionOut(model).eval(), classes, f"deeplabv3_{backbone}"


def smp_arch_from_keys(state: dict[str, torch.Tensor]) -> str | None:
    if any(k.startswith("decoder.aspp.0.convs.") for k in state):
        return "DeepLabV3Plus"
    if any(k.startswith("decoder.aspp.convs.") for k in state):
        return "DeepLabV3"
    return None


def build_deeplab(
    weights: str,
    arch: str = "auto",
    encoder: str = "auto",
    labels: str | None = None,
    input_size: str | None = None,
    ignore_background: bool = False,
    mean: str | None = None,
    std: str | None = None,
) -> gdx.Segmenter:
    """DeepLabV3: torchvision deeplabv3_resnet50/101 state dict, or smp DeepLabV3/V3+ (directory or state dict).

    ``weights``: file or smp directory; ``arch`` (smp state dicts): auto, DeepLabV3 or
    DeepLabV3Plus; ``encoder`` (smp state dicts): auto (ResNets) or an smp encoder
    name; ``labels``: labels file (default VOC-21 for 21 classes); ``input_size``:
    auto (default: the images' own size, i.e. the generator's resolution), N (the
    shorter side to N px, aspect kept, as torchvision's eval transform with N=520)
    or HxW (exactly);
    ``ignore_background``: map VOC background (index 0) to -1; ``mean``/``std``:
    override the normalisation.
    """
    path = existing_file(weights, what=WHAT)
    mode, given = parse_deeplab_size(input_size)
    short = given if isinstance(given, int) else None
    size = given if isinstance(given, tuple) else None
    post = (lambda lab: lab.masked_fill(lab == 0, -1)) if ignore_background else None
    if path.is_dir():
        if not is_smp_directory(path):
            raise CheckpointError(
                f"{WHAT}: {path} is a directory but not an smp save_pretrained one (config.json + "
                "model.safetensors). Pass a state dict file or an smp directory."
            )
        loaded = load_smp_directory(path, what=WHAT)
        if loaded.model_class not in ("DeepLabV3", "DeepLabV3Plus"):
            raise CheckpointError(
                f"{WHAT}: {path} holds an smp {loaded.model_class}, not a DeepLabV3/V3+"
                + ("; use the segmenter `upernet`." if loaded.model_class == "UPerNet" else ".")
            )
        chosen = choose_labels(loaded.classes, labels or labels_beside(path), default=voc_labels(), what=WHAT)
        exact = size or (loaded.input_size if mode == "auto" else None)
        return DeeplabSegmenter(
            loaded.model, mode="exact" if exact else mode, short=short,
            labels=chosen.labels, categories=chosen.categories, name="deeplab",
            preprocess=override_preprocess(loaded.preprocess, mean, std), input_size=exact,
            multiple=int(getattr(loaded.model.encoder, "output_stride", 16)), postprocess=post,
            details=f"smp {loaded.model_class} {loaded.encoder_name}, preprocessing from {loaded.source}, {path}",
        )
    state = unwrap_state_dict(load_torch_file(path, what=WHAT), what=f"{WHAT} ({path})")
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    what = f"{WHAT} ({path})"
    if "classifier.4.weight" in state and any(k.startswith("classifier.0.convs.") for k in state):
        model, classes, tv_name = load_torchvision_deeplab(state, what=what)
        pre = Preprocess(IMAGENET_MEAN, IMAGENET_STD)
        multiple, details = 1, f"torchvision {tv_name}, {path.name}"
    elif smp_arch_from_keys(state) is not None or arch != "auto":
        smp_arch = smp_arch_from_keys(state) if arch == "auto" else arch
        enc = resnet_encoder_name(state, "encoder.") if encoder == "auto" else encoder
        if enc is None:
            raise CheckpointError(f"{what}: cannot tell the smp encoder from the keys; pass the segmenter option `encoder=<smp encoder name>`.")
        classes = classes_of_smp_state(state, what=what)
        model = build_smp(str(smp_arch), enc, classes, what=what)
        load_strict(model, state, what=what, expected=f"smp.{smp_arch}({enc})")
        model.eval()
        pre = encoder_preprocess(enc)
        multiple = int(getattr(model.encoder, "output_stride", 16))
        details = f"smp {smp_arch} {enc}, {path.name}"
    else:
        raise CheckpointError(
            f"{what}: not a DeepLabV3 checkpoint (torchvision keys backbone.*/classifier.0.convs.*, or smp "
            f"keys decoder.aspp.*); it looks like {looks_like(state)}."
        )
    chosen = choose_labels(classes, labels or labels_beside(path), default=voc_labels(), what=WHAT)
    return DeeplabSegmenter(
        model, mode=mode, short=short, labels=chosen.labels, categories=chosen.categories, name="deeplab",
        preprocess=override_preprocess(pre, mean, std), input_size=size,
        multiple=multiple, postprocess=post, details=details,
    )


def known_weights() -> list[KnownWeights]:
    """torchvision's published DeepLabV3 weights (from the installed torchvision's own records)."""
    from torchvision.models import segmentation as tvseg

    out = []
    for backbone, enum_name in (("resnet50", "DeepLabV3_ResNet50_Weights"), ("resnet101", "DeepLabV3_ResNet101_Weights")):
        for w in getattr(tvseg, enum_name):
            file = w.url.rsplit("/", 1)[-1]
            prefix = re.search(r"-([a-f0-9]{6,})\.", file)
            mb = w.meta.get("_file_size")
            out.append(KnownWeights(
                adapter="deeplab", name=f"deeplabv3_{backbone}", file=file, option=f"weights=PATH/{file}",
                size=f"{mb} MB" if mb else None, sha256=None,
                sha256_prefix=prefix.group(1) if prefix else None, in_cache=False,
                note=("torchvision's weights (size from torchvision's records): "
                      f"torchvision.models.segmentation.deeplabv3_*(weights='{w.name}') downloads them into "
                      "$TORCH_HOME/hub/checkpoints; pass that file"),
            ))
    return out


@gdx.hookimpl
def register_segmenters(register: Register) -> None:
    register("deeplab", build_deeplab)
