"""The "upernet" segmenter: UPerNet scene parsers from the files users have.

The segmenter ``upernet`` with the option ``weights=PATH``
(``gdx.load_segmenter("upernet", weights=PATH)``), where PATH is

* an smp ``UPerNet`` ``save_pretrained`` directory (``config.json`` +
  ``model.safetensors``, e.g. smp-hub's ADE20K conversions). Preprocessing comes from
  its ``albumentations_config_eval.json`` when present, else from the encoder's
  pretraining (ImageNet mean/std on RGB 0..1, or the timm config for ``tu-*``);
* an smp ``UPerNet`` plain state dict (``torch.save(model.state_dict())``); the
  decoder width is read from the keys, a ResNet encoder's depth from its blocks
  (``encoder`` names any other smp encoder);
* a CSAIL ``mit_semseg`` checkpoint pair: a directory holding
  ``encoder_epoch_N.pth`` and ``decoder_epoch_N.pth`` (highest common N is used),
  or the encoder file (the decoder is found beside it, or given by
  ``decoder_weights``). Architecture is read from the keys; preprocessing is
  mit_semseg's: RGB 0..1, ImageNet mean/std. Dilated encoders
  (``resnet50dilated``) go with the PPM/C1 decoders, plain ones with UPerNet, as in
  the published ADE20K configs; ``encoder_arch`` overrides.

* the paper's Unified Perceptual Parsing model (gandissect's
  ``upp-resnet50-upernet/``: an encoder/decoder pair whose decoder has Broden+
  object/part/material/scene heads, plus its ``labels.json``), recognised from the
  decoder keys; see :mod:`gdx.plugins.segmenters.unified_parsing`. Output is
  N x 3 x H x W (object, material, part).

Labels: ``labels=FILE`` (.txt/.json/.csv), else ``labels.json``/``labels.txt`` beside
the weights, else the 150 ADE20K classes when the model has 150 outputs, else
``class0..``. Every pixel gets a label (ADE20K models have no "none" class).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

import gdx
from gdx.checkpoints import existing_file, load_torch_file, unwrap_state_dict
from gdx.errors import CheckpointError

from gdx.plugins.segmenters import mit_semseg_arch as arch
from gdx.plugins.segmenters import unified_parsing as upp
from gdx.plugins.segmenters.labels import LabelSet, ade20k_labels, choose_labels
from gdx.plugins.segmenters.smp_loading import (
    build_smp,
    classes_of_smp_state,
    encoder_preprocess,
    is_smp_directory,
    load_smp_directory,
    load_strict,
    resnet_encoder_name,
)
from gdx.hookspecs import Register
from gdx.plugins.generators.downloads import KnownWeights
from gdx.plugins.segmenters.sniff import looks_like
from gdx.plugins.segmenters.torch_segmenter import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    TorchSegmenter,
    parse_size,
    parse_triple,
)

WHAT = "upernet segmenter weights"
_EPOCH = re.compile(r"^(encoder|decoder)_epoch_(\d+)\.pth$")


def labels_beside(path: Path) -> str | None:
    """A ``labels.json``/``labels.txt`` shipped in the weights directory, if any."""
    folder = path if path.is_dir() else path.parent
    for name in ("labels.json", "labels.txt"):
        if (folder / name).is_file():
            return str(folder / name)
    return None


def override_preprocess(pre: Preprocess, mean: str | None, std: str | None) -> Preprocess:
    """``pre`` with the user's ``mean``/``std`` options (same units as ``pre.scale``)."""
    m = parse_triple(mean, option="mean")
    s = parse_triple(std, option="std")
    if m is None and s is None:
        return pre
    return Preprocess(m or pre.mean, s or pre.std, pre.scale, pre.bgr)


def find_epoch_pair(folder: Path) -> tuple[Path, Path]:
    """The ``encoder_epoch_N.pth``/``decoder_epoch_N.pth`` pair with the highest common N."""
    found: dict[str, dict[int, Path]] = {"encoder": {}, "decoder": {}}
    for f in folder.iterdir():
        m = _EPOCH.match(f.name)
        if m:
            found[m.group(1)][int(m.group(2))] = f
    common = sorted(set(found["encoder"]) & set(found["decoder"]))
    if not common:
        listing = ", ".join(sorted(f.name for f in folder.iterdir())[:8]) or "(empty)"
        raise CheckpointError(
            f"{WHAT}: {folder} is neither an smp save_pretrained directory (config.json + "
            f"model.safetensors) nor a mit_semseg checkpoint folder (encoder_epoch_N.pth + "
            f"decoder_epoch_N.pth). It holds: {listing}."
        )
    n = common[-1]
    return found["encoder"][n], found["decoder"][n]


def clean_mit_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop SyncBN bookkeeping (``_tmp_running_*``, ``_running_iter``) and ``module.`` prefixes."""
    out = {}
    for k, v in state.items():
        leaf = k.rsplit(".", 1)[-1]
        if leaf.startswith("_tmp_running") or leaf == "_running_iter":
            continue
        out[k[7:] if k.startswith("module.") else k] = v
    return out


def read_mit_state(path: Path) -> dict[str, torch.Tensor]:
    """A mit_semseg/UPP checkpoint file as a clean state dict."""
    return clean_mit_state(unwrap_state_dict(load_torch_file(path, what=WHAT), what=f"{WHAT} ({path})"))


def load_mit_semseg_model(
    encoder_path: Path, decoder_path: Path, *, encoder_arch: str = "auto",
    states: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
) -> tuple[arch.MitSemsegModel, str, arch.DecoderSpec]:
    """Rebuild and load a mit_semseg encoder/decoder pair; returns (model, encoder arch, decoder spec)."""
    enc, dec = states if states is not None else (read_mit_state(encoder_path), read_mit_state(decoder_path))
    if arch.decoder_spec(enc) is not None and arch.encoder_depth(dec) is not None:
        raise CheckpointError(
            f"{WHAT}: {encoder_path.name} is a decoder and {decoder_path.name} an encoder; swap them "
            "(the segmenter option `weights=<encoder_epoch_N.pth>` and the segmenter option "
            "`decoder_weights=<decoder_epoch_N.pth>`)."
        )
    spec = arch.decoder_spec(dec)
    if spec is None:
        raise CheckpointError(
            f"{WHAT}: {decoder_path} is not a mit_semseg decoder (c1/ppm/upernet); it looks like {looks_like(dec)}."
        )
    depth = arch.encoder_depth(enc)
    if depth is None:
        raise CheckpointError(
            f"{WHAT}: {encoder_path} is not a mit_semseg deep-stem ResNet encoder; it looks like "
            f"{looks_like(enc)}. (MobileNet/HRNet/ResNeXt mit_semseg encoders are not supported.)"
        )
    if encoder_arch == "auto":
        encoder_arch = depth if spec.arch.startswith("upernet") else depth + "dilated"
    elif encoder_arch not in arch.ENCODERS:
        raise CheckpointError(f"{WHAT}: encoder_arch={encoder_arch!r}; choose auto or one of {', '.join(arch.ENCODERS)}.")
    elif encoder_arch.replace("dilated", "") != depth:
        raise CheckpointError(f"{WHAT}: encoder_arch={encoder_arch} but {encoder_path.name} holds a {depth}.")
    encoder = arch.build_encoder(encoder_arch)
    if encoder.out_channels[-1] != spec.fc_dim:
        raise CheckpointError(
            f"{WHAT}: the decoder expects {spec.fc_dim} input channels but the {encoder_arch} encoder gives "
            f"{encoder.out_channels[-1]}; the two files are from different models."
        )
    model = arch.MitSemsegModel(encoder, arch.build_decoder(spec))
    _load_part(model.encoder, enc, encoder_path, f"a mit_semseg {encoder_arch} encoder")
    _load_part(model.decoder, dec, decoder_path, f"a mit_semseg {spec.arch} decoder")
    return model.eval(), encoder_arch, spec


def _load_part(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, expected: str) -> None:
    load_strict(module, state, what=f"{WHAT} ({path})", expected=expected)


def build_upernet(
    weights: str,
    decoder_weights: str | None = None,
    labels: str | None = None,
    input_size: str | None = None,
    encoder_arch: str = "auto",
    mean: str | None = None,
    std: str | None = None,
    part_objects: str = "sky,building,person",
    ppm_pool: str = "prroi",
    encoder: str = "auto",
) -> gdx.Segmenter:
    """UPerNet scene parser: smp UPerNet directory, CSAIL mit_semseg ADE20K pair, or Unified Perceptual Parsing (Broden+).

    ``weights``: smp directory, mit_semseg folder or encoder file; ``decoder_weights``:
    the mit_semseg decoder file when not beside the encoder; ``labels``: a labels file
    (default: ADE20K-150 for 150 classes); ``input_size``: HxW to segment at (default:
    the eval Resize of an smp-hub directory, else the image's own size);
    ``encoder_arch``: mit_semseg encoder (auto, resnet50, resnet50dilated, ...);
    ``mean``/``std``: override the normalisation (comma-separated, model units);
    ``encoder``: the smp encoder of a plain smp UPerNet state dict (auto: ResNets).
    Unified Perceptual Parsing folders (upp-resnet50-upernet: the paper's segmenter,
    N x 3 label maps object/material/part) also take ``part_objects`` (objects whose
    parts are labelled, comma-separated, or "all"; default gandissect's
    sky,building,person) and ``ppm_pool`` ("prroi": exact Precise RoI Pooling in
    torch, or "adaptive" average pooling); their labels come from the labels.json
    beside the weights (or ``labels``).
    """
    path = existing_file(weights, what=WHAT)
    size = parse_size(input_size)
    if path.is_dir() and is_smp_directory(path):
        loaded = load_smp_directory(path, what=WHAT)
        if loaded.model_class != "UPerNet":
            raise CheckpointError(
                f"{WHAT}: {path} holds an smp {loaded.model_class}, not a UPerNet; "
                + ("use the segmenter `deeplab`." if "DeepLab" in loaded.model_class else "use the matching segmenter.")
            )
        chosen = choose_labels(loaded.classes, labels or labels_beside(path), default=ade20k_labels(), what=WHAT)
        return TorchSegmenter(
            loaded.model,
            labels=chosen.labels,
            categories=chosen.categories,
            name="upernet",
            preprocess=override_preprocess(loaded.preprocess, mean, std),
            input_size=size or loaded.input_size,
            multiple=int(getattr(loaded.model.encoder, "output_stride", 32)),
            details=f"smp UPerNet {loaded.encoder_name}, preprocessing from {loaded.source}, {path}",
        )
    if path.is_dir():
        if decoder_weights:
            raise CheckpointError(
                f"{WHAT}: weights={path} is a directory, but a decoder file is given too; pass the segmenter "
                "option `weights=<encoder file>` with the segmenter option `decoder_weights=<decoder file>`."
            )
        enc_path, dec_path = find_epoch_pair(path)
    else:
        enc_path = path
        if decoder_weights:
            dec_path = existing_file(decoder_weights, what=WHAT)
        else:
            m = _EPOCH.match(path.name)
            guess = path.with_name(f"decoder_epoch_{m.group(2)}.pth") if m and m.group(1) == "encoder" else None
            if guess is None or not guess.is_file():
                state = unwrap_state_dict(load_torch_file(path, what=WHAT), what=f"{WHAT} ({path})")
                if any(k.startswith("decoder.fusion_block.") for k in state):
                    return _smp_state_dict_segmenter(path, state, encoder, labels, size, mean, std)
                raise CheckpointError(
                    f"{WHAT}: {path} alone is not enough: it looks like {looks_like(state)}. Pass an smp "
                    "UPerNet directory, a folder with encoder_epoch_N.pth + decoder_epoch_N.pth, or "
                    "the segmenter option `weights=<encoder file>` with the segmenter option `decoder_weights=<decoder file>`."
                )
            dec_path = guess
    states = read_mit_state(enc_path), read_mit_state(dec_path)
    if upp.is_unified_parsing_decoder(states[1]):
        return build_upp_segmenter(enc_path, dec_path, states, labels=labels, input_size=size,
                                   part_objects=part_objects, ppm_pool=ppm_pool)
    model, enc_arch, spec = load_mit_semseg_model(enc_path, dec_path, encoder_arch=encoder_arch, states=states)
    chosen = choose_labels(spec.num_class, labels or labels_beside(enc_path), default=ade20k_labels(), what=WHAT)
    pre = override_preprocess(Preprocess(IMAGENET_MEAN, IMAGENET_STD), mean, std)
    return TorchSegmenter(
        model,
        labels=chosen.labels,
        categories=chosen.categories,
        name="upernet",
        preprocess=pre,
        input_size=size,
        # mit_semseg's test loader rounds image sizes to multiples of 32 (UPerNet) or 8 (dilated nets).
        multiple=8 if enc_arch.endswith("dilated") else 32,
        details=f"mit_semseg {enc_arch}+{spec.arch}, {enc_path.name} + {dec_path.name}",
    )


def _smp_state_dict_segmenter(path: Path, state: dict[str, torch.Tensor], encoder: str, labels: str | None,
                              size: tuple[int, int] | None, mean: str | None, std: str | None) -> gdx.Segmenter:
    """An smp UPerNet saved as a plain state dict (``torch.save(model.state_dict())``)."""
    what = f"{WHAT} ({path})"
    enc = resnet_encoder_name(state, "encoder.") if encoder == "auto" else encoder
    if enc is None:
        raise CheckpointError(f"{what}: cannot tell the smp encoder from the keys; pass the segmenter option `encoder=<smp encoder name>`.")
    classes = classes_of_smp_state(state, what=what)
    channels = int(state["segmentation_head.0.weight"].shape[1])
    model = build_smp("UPerNet", enc, classes, what=what, decoder_channels=channels)
    load_strict(model, state, what=what, expected=f"smp.UPerNet({enc})")
    chosen = choose_labels(classes, labels or labels_beside(path), default=ade20k_labels(), what=WHAT)
    return TorchSegmenter(
        model.eval(), labels=chosen.labels, categories=chosen.categories, name="upernet",
        preprocess=override_preprocess(encoder_preprocess(enc), mean, std), input_size=size,
        multiple=int(getattr(model.encoder, "output_stride", 32)), details=f"smp UPerNet {enc}, {path.name}",
    )


def build_upp_segmenter(
    enc_path: Path, dec_path: Path, states: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]], *,
    labels: str | None, input_size: tuple[int, int] | None, part_objects: str, ppm_pool: str,
) -> gdx.Segmenter:
    """The Unified Perceptual Parsing segmenter for an encoder/decoder pair with Broden+ heads."""
    labels_path = labels or str(enc_path.parent / "labels.json")
    if not Path(labels_path).is_file():
        raise CheckpointError(
            f"{WHAT}: {dec_path} is a Unified Perceptual Parsing (Broden+) decoder, whose label names live in the "
            f"labels.json published with it (upp-resnet50-upernet/labels.json); none found at {labels_path}. "
            "Put it beside the weights or pass the segmenter option `labels=<labels.json>`."
        )
    if ppm_pool not in ("prroi", "adaptive"):
        raise CheckpointError(f"{WHAT}: ppm_pool={ppm_pool!r}; choose prroi (exact) or adaptive.")
    broden = upp.read_broden_labels(Path(labels_path))
    enc_state, dec_state = states
    depth = arch.encoder_depth(enc_state)
    if depth not in ("resnet50", "resnet101"):
        raise CheckpointError(
            f"{WHAT}: {enc_path} is not a deep-stem ResNet-50/101 encoder; it looks like {looks_like(enc_state)}."
        )
    encoder = arch.build_encoder(depth)
    model = upp.build_unified_parsing(encoder, dec_state, broden, ppm_pool=ppm_pool)
    _load_part(model.encoder, enc_state, enc_path, f"a Unified Perceptual Parsing {depth} encoder")
    _load_part(model.decoder, dec_state, dec_path, "a Unified Perceptual Parsing decoder")
    owners = None if part_objects.strip().lower() == "all" else [o.strip() for o in part_objects.split(",") if o.strip()]
    unknown = [o for o in owners or [] if o not in broden.object_part]
    if unknown:
        raise CheckpointError(
            f"{WHAT}: part_objects names objects without parts {unknown}; objects with parts: "
            f"{', '.join(broden.objects_with_parts()[:20])}"
        )
    return upp.UnifiedParsingSegmenter(
        model.eval(), broden, part_objects=owners, input_size=input_size,
        details=f"Unified Perceptual Parsing {depth}+upernet (Broden+), {enc_path.name} + {dec_path.name}, "
        f"PPM pooling {ppm_pool}",
    )


def known_weights() -> list[KnownWeights]:
    """The CSAIL scene parsers users have (for ``gdx weights``); sizes and hashes are not recorded."""
    csail = ("CSAIL semantic-segmentation-pytorch folders, each holding encoder_epoch_N.pth + "
             "decoder_epoch_N.pth (ADE20K, 150 labels; upp-*: the paper's Unified Perceptual Parsing "
             "model, Broden+ object/part/material, plus its labels.json)")
    return [
        KnownWeights("upernet", name, f"{name}/", f"weights=PATH/{name}/", in_cache=False, note=csail)
        for name in ("ade20k-resnet50-upernet", "ade20k-resnet101-upernet", "upp-resnet50-upernet")
    ]


@gdx.hookimpl
def register_segmenters(register: Register) -> None:
    register("upernet", build_upernet)
