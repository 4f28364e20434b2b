"""The CSAIL ``mit_semseg`` scene-parsing networks, rebuilt to load their checkpoints.

CSAILVision/semantic-segmentation-pytorch publishes ADE20K models as two plain state
dicts, ``encoder_epoch_*.pth`` and ``decoder_epoch_*.pth``. This module re-implements
the architectures those files belong to with the same module names, so the files
load key for key without the original package (which pins old PyTorch and a custom
synchronised BatchNorm):

* encoders: the deep-stem ResNet (three 3x3 stem convolutions, 64-64-128 channels)
  of depth 18/50/101, plain (``resnet50``, used with UPerNet) or dilated to output
  stride 8 (``resnet50dilated``, used with the PPM/C1 decoders);
* decoders: ``c1``, ``c1_deepsup``, ``ppm``, ``ppm_deepsup``, ``upernet``
  (fpn_dim 512) and ``upernet_lite`` (fpn_dim 256).

At inference the decoders return logits at the feature resolution; the caller
upsamples them bilinearly to the image size, as ``segSize`` does in mit_semseg.
Deep-supervision branches are kept only so their weights load; they never run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Encoder name -> (block type, blocks per stage, dilated).
ENCODERS: dict[str, tuple[str, tuple[int, int, int, int], bool]] = {
    "resnet18": ("basic", (2, 2, 2, 2), False),
    "resnet18dilated": ("basic", (2, 2, 2, 2), True),
    "resnet50": ("bottleneck", (3, 4, 6, 3), False),
    "resnet50dilated": ("bottleneck", (3, 4, 6, 3), True),
    "resnet101": ("bottleneck", (3, 4, 23, 3), False),
    "resnet101dilated": ("bottleneck", (3, 4, 23, 3), True),
}
DECODERS = ("c1", "c1_deepsup", "ppm", "ppm_deepsup", "upernet", "upernet_lite")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def conv3x3_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """conv3x3 (no bias) -> BN -> ReLU, as mit_semseg's helper of the same name (keys .0/.1)."""
    return nn.Sequential(_conv3x3(cin, cout, stride), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _dilate(stage: nn.Module, dilation: int) -> None:
    """Turn a stride-2 stage into a dilated stride-1 one (mit_semseg's ``_nostride_dilate``).

    A conv that had stride 2 loses it and, if 3x3, gets dilation ``dilation // 2``;
    every other 3x3 conv gets ``dilation``. Padding follows dilation so sizes match.
    """
    for m in stage.modules():
        if not isinstance(m, nn.Conv2d):
            continue
        if m.stride == (2, 2):
            m.stride = (1, 1)
            if m.kernel_size == (3, 3):
                m.dilation = m.padding = (dilation // 2, dilation // 2)
        elif m.kernel_size == (3, 3):
            m.dilation = m.padding = (dilation, dilation)


class DeepStemResNet(nn.Module):
    """mit_semseg's ResNet encoder: deep stem, four stages, returns the four stage outputs.

    Key names (``conv1..3``, ``bn1..3``, ``layer1..4``) match ``encoder_epoch_*.pth``.
    With ``dilated=True`` stages 3 and 4 keep stride 1 (output stride 8).
    """

    def __init__(self, block: str = "bottleneck", layers: Sequence[int] = (3, 4, 6, 3), dilated: bool = False) -> None:
        super().__init__()
        block_cls: type[BasicBlock] | type[Bottleneck] = Bottleneck if block == "bottleneck" else BasicBlock
        self.conv1 = _conv3x3(3, 64, stride=2)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(64, 64)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = _conv3x3(64, 128)
        self.bn3 = nn.BatchNorm2d(128)
        self.relu3 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._cin = 128
        self.layer1 = self._stage(block_cls, 64, layers[0], 1)
        self.layer2 = self._stage(block_cls, 128, layers[1], 2)
        self.layer3 = self._stage(block_cls, 256, layers[2], 2)
        self.layer4 = self._stage(block_cls, 512, layers[3], 2)
        self.out_channels = [c * block_cls.expansion for c in (64, 128, 256, 512)]
        if dilated:
            _dilate(self.layer3, 2)
            _dilate(self.layer4, 4)

    def _stage(self, block_cls: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        out = planes * block_cls.expansion
        if stride != 1 or self._cin != out:
            downsample = nn.Sequential(
                nn.Conv2d(self._cin, out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
        mods = [block_cls(self._cin, planes, stride, downsample)]
        self._cin = out
        mods += [block_cls(out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.maxpool(x)
        feats = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            feats.append(x)
        return feats


class C1(nn.Module):
    """One conv3x3-BN-ReLU then a 1x1 classifier on the last feature map."""

    def __init__(self, num_class: int = 150, fc_dim: int = 2048, deepsup: bool = False) -> None:
        super().__init__()
        self.cbr = conv3x3_bn_relu(fc_dim, fc_dim // 4)
        self.conv_last = nn.Conv2d(fc_dim // 4, num_class, 1)
        if deepsup:
            self.cbr_deepsup = conv3x3_bn_relu(fc_dim // 2, fc_dim // 4)
            self.conv_last_deepsup = nn.Conv2d(fc_dim // 4, num_class, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.conv_last(self.cbr(feats[-1]))


def _pyramid(x: torch.Tensor, pools: nn.ModuleList, convs: nn.ModuleList | None = None) -> torch.Tensor:
    size = x.shape[-2:]
    outs = [x]
    for i, pool in enumerate(pools):
        y = F.interpolate(pool(x), size, mode="bilinear", align_corners=False)
        outs.append(convs[i](y) if convs is not None else y)
    return torch.cat(outs, 1)


class PPM(nn.Module):
    """Pyramid pooling (scales 1, 2, 3, 6; pool -> 1x1 conv -> BN -> ReLU, then upsample)."""

    def __init__(self, num_class: int = 150, fc_dim: int = 2048, pool_scales: Sequence[int] = (1, 2, 3, 6),
                 deepsup: bool = False) -> None:
        super().__init__()
        self.ppm = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(s), nn.Conv2d(fc_dim, 512, 1, bias=False), nn.BatchNorm2d(512), nn.ReLU(inplace=True)
            )
            for s in pool_scales
        )
        self.conv_last = nn.Sequential(
            _conv3x3(fc_dim + len(pool_scales) * 512, 512),
            nn.BatchNorm2d(512),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.1),
            nn.Conv2d(512, num_class, 1),
        )
        if deepsup:
            self.cbr_deepsup = conv3x3_bn_relu(fc_dim // 2, fc_dim // 4)
            self.conv_last_deepsup = nn.Conv2d(fc_dim // 4, num_class, 1)
            self.dropout_deepsup = nn.Dropout2d(0.1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        size = x.shape[-2:]
        pooled = [x] + [F.interpolate(branch(x), size, mode="bilinear", align_corners=False) for branch in self.ppm]
        return self.conv_last(torch.cat(pooled, 1))


class PyramidFPN(nn.Module):
    """Pyramid pooling on the top feature, then the FPN top-down path.

    The part that mit_semseg's UPerNet head and the Unified Perceptual Parsing head
    share; the attribute names (``ppm_pooling``, ``ppm_conv``, ``ppm_last_conv``,
    ``fpn_in``, ``fpn_out``) are the checkpoints' key names for both.
    """

    def __init__(self, pooling: Sequence[nn.Module], fc_dim: int, fpn_inplanes: Sequence[int], fpn_dim: int) -> None:
        super().__init__()
        self.ppm_pooling = nn.ModuleList(pooling)
        self.ppm_conv = nn.ModuleList(
            nn.Sequential(nn.Conv2d(fc_dim, 512, 1, bias=False), nn.BatchNorm2d(512), nn.ReLU(inplace=True))
            for _ in self.ppm_pooling
        )
        self.ppm_last_conv = conv3x3_bn_relu(fc_dim + len(self.ppm_pooling) * 512, fpn_dim)
        self.fpn_in = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, fpn_dim, 1, bias=False), nn.BatchNorm2d(fpn_dim), nn.ReLU(inplace=True))
            for c in fpn_inplanes[:-1]
        )
        self.fpn_out = nn.ModuleList(nn.Sequential(conv3x3_bn_relu(fpn_dim, fpn_dim)) for _ in fpn_inplanes[:-1])

    def fpn_levels(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The FPN outputs, finest level first."""
        f = self.ppm_last_conv(_pyramid(feats[-1], self.ppm_pooling, self.ppm_conv))
        levels = [f]
        for i in reversed(range(len(feats) - 1)):
            lateral = self.fpn_in[i](feats[i])
            f = lateral + F.interpolate(f, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            levels.append(self.fpn_out[i](f))
        levels.reverse()
        return levels

    @staticmethod
    def concat_levels(levels: list[torch.Tensor]) -> torch.Tensor:
        """All levels upsampled to the finest one's size and concatenated."""
        size = levels[0].shape[-2:]
        return torch.cat(
            [levels[0]] + [F.interpolate(t, size, mode="bilinear", align_corners=False) for t in levels[1:]], 1
        )


class UPerNetDecoder(PyramidFPN):
    """mit_semseg's UPerNet head: PPM on the top feature, FPN top-down, fuse all levels."""

    def __init__(self, num_class: int = 150, fc_dim: int = 2048, pool_scales: Sequence[int] = (1, 2, 3, 6),
                 fpn_inplanes: Sequence[int] = (256, 512, 1024, 2048), fpn_dim: int = 512) -> None:
        super().__init__([nn.AdaptiveAvgPool2d(s) for s in pool_scales], fc_dim, fpn_inplanes, fpn_dim)
        self.conv_last = nn.Sequential(
            conv3x3_bn_relu(len(fpn_inplanes) * fpn_dim, fpn_dim), nn.Conv2d(fpn_dim, num_class, 1)
        )

    def fused_features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The concatenated, upsampled FPN levels (input of ``conv_last``)."""
        return self.concat_levels(self.fpn_levels(feats))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.conv_last(self.fused_features(feats))


class MitSemsegModel(nn.Module):
    """Encoder + decoder; ``forward(x)`` returns logits N x classes x h x w (h, w = feature grid)."""

    def __init__(self, encoder: DeepStemResNet, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@dataclass(frozen=True)
class DecoderSpec:
    """What a decoder state dict says about its architecture."""

    arch: str
    num_class: int
    fc_dim: int
    fpn_dim: int = 512
    fpn_inplanes: tuple[int, ...] = (256, 512, 1024, 2048)


def decoder_spec(state: Mapping[str, torch.Tensor]) -> DecoderSpec | None:
    """Infer the decoder type and sizes from its keys and shapes (None: not a mit_semseg decoder)."""
    if "ppm_last_conv.0.weight" in state and "conv_last.1.weight" in state:
        fpn_dim = int(state["ppm_last_conv.0.weight"].shape[0])
        n_in = len({k.split(".")[1] for k in state if k.startswith("fpn_in.")})
        inplanes = tuple(int(state[f"fpn_in.{i}.0.weight"].shape[1]) for i in range(n_in))
        fc_dim = int(state["ppm_conv.0.0.weight"].shape[1])
        return DecoderSpec(
            "upernet" if fpn_dim == 512 else "upernet_lite",
            int(state["conv_last.1.weight"].shape[0]), fc_dim, fpn_dim, inplanes + (fc_dim,),
        )
    if "ppm.0.1.weight" in state and "conv_last.4.weight" in state:
        arch = "ppm_deepsup" if "cbr_deepsup.0.weight" in state else "ppm"
        return DecoderSpec(arch, int(state["conv_last.4.weight"].shape[0]), int(state["ppm.0.1.weight"].shape[1]))
    if "cbr.0.weight" in state and "conv_last.weight" in state:
        arch = "c1_deepsup" if "cbr_deepsup.0.weight" in state else "c1"
        return DecoderSpec(arch, int(state["conv_last.weight"].shape[0]), int(state["cbr.0.weight"].shape[1]))
    return None


def encoder_depth(state: Mapping[str, torch.Tensor]) -> str | None:
    """``resnet18``/``resnet50``/``resnet101`` from an encoder state dict (None: not a deep-stem ResNet)."""
    stem = state.get("conv1.weight")
    if stem is None or tuple(stem.shape) != (64, 3, 3, 3) or "conv3.weight" not in state:
        return None
    blocks = len({k.split(".")[1] for k in state if k.startswith("layer3.")})
    bottleneck = "layer1.0.conv3.weight" in state
    for name, (block, layers, dilated) in ENCODERS.items():
        if not dilated and (block == "bottleneck") == bottleneck and layers[2] == blocks:
            return name
    return None


def build_encoder(arch: str) -> DeepStemResNet:
    if arch not in ENCODERS:
        raise ValueError(f"unknown mit_semseg encoder {arch!r}; known: {', '.join(ENCODERS)}")
    block, layers, dilated = ENCODERS[arch]
    return DeepStemResNet(block, layers, dilated)


def build_decoder(spec: DecoderSpec) -> nn.Module:
    if spec.arch in ("upernet", "upernet_lite"):
        return UPerNetDecoder(spec.num_class, spec.fc_dim, fpn_inplanes=spec.fpn_inplanes, fpn_dim=spec.fpn_dim)
    if spec.arch in ("ppm", "ppm_deepsup"):
        return PPM(spec.num_class, spec.fc_dim, deepsup=spec.arch.endswith("deepsup"))
    if spec.arch in ("c1", "c1_deepsup"):
        return C1(spec.num_class, spec.fc_dim, deepsup=spec.arch.endswith("deepsup"))
    raise ValueError(f"unknown mit_semseg decoder {spec.arch!r}; known: {', '.join(DECODERS)}")
