"""HRNet-W48 with a top-down heatmap head: mmpose's COCO-WholeBody model, in plain PyTorch.

The network of mmpose's ``td-hm_hrnet-w48_dark-8xb32-210e_coco-wholebody-384x288.py``
(Sun et al., "Deep High-Resolution Representation Learning for Human Pose Estimation", CVPR 2019):
a stride-4 stem, a Bottleneck stage, then three stages of multi-resolution modules that keep a
high-resolution branch and exchange information between branches, and a 1x1 convolution from
the 48-channel stride-4 branch to one heatmap per keypoint.

Module names follow ``mmpose/models/backbones/hrnet.py`` and its heads so that ``state_dict()``
has exactly the keys of ``hrnet_w48_coco_wholebody_384x288_dark-f5726563_20200918.pth``
(``backbone.*``, ``keypoint_head.final_layer.*``). Where mmpose keeps ``None`` in a module list
(a fuse of a branch with itself, a transition that passes a branch through) this file keeps an
``nn.Identity``, which has no parameters and so leaves the keys unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

# (num_modules, block, num_blocks per branch, channels per branch) of stages 2-4.
W48_STAGES = (
    (1, "BASIC", (4, 4), (48, 96)),
    (4, "BASIC", (4, 4, 4), (48, 96, 192)),
    (3, "BASIC", (4, 4, 4, 4), (48, 96, 192, 384)),
)


def conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, relu: bool = False) -> nn.Sequential:
    """Conv (no bias) + BatchNorm [+ ReLU]: keys ``0.weight``, ``1.{weight,bias,running_*}``."""
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34 block, expansion 1)."""

    expansion = 1

    def __init__(self, c_in: int, c_out: int, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # [N, c_out, H, W]
        out = self.relu(self.bn1(self.conv1(x)))  # [N, c_out, H, W]
        out = self.bn2(self.conv2(out))  # [N, c_out, H, W]
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual connection (ResNet-50 block)."""

    expansion = 4

    def __init__(self, c_in: int, c_out: int, downsample: nn.Module | None = None):
        super().__init__()
        mid = c_out // self.expansion
        self.conv1 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # [N, c_out, H, W]
        out = self.relu(self.bn1(self.conv1(x)))  # [N, c_out/4, H, W]
        out = self.relu(self.bn2(self.conv2(out)))  # [N, c_out/4, H, W]
        out = self.bn3(self.conv3(out))  # [N, c_out, H, W]
        return self.relu(out + identity)


BLOCKS = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


def res_layer(block: type[nn.Module], c_in: int, c_out: int, num_blocks: int) -> nn.Sequential:
    """``num_blocks`` blocks; the first gets a 1x1 conv + BN shortcut when the width changes."""
    downsample = conv_bn(c_in, c_out, kernel=1) if c_in != c_out else None
    return nn.Sequential(block(c_in, c_out, downsample),
                         *(block(c_out, c_out) for _ in range(num_blocks - 1)))


class HRModule(nn.Module):
    """One multi-resolution module: a residual chain per branch, then a fuse per output branch.

    Branch ``b`` has stride ``4 * 2**b``. Output ``i`` is ReLU(sum over branches ``j`` of branch
    ``j`` brought to branch ``i``'s resolution and width): ``j > i`` by 1x1 conv + BN + nearest
    upsampling, ``j < i`` by ``i - j`` strided 3x3 convs (the last without ReLU). With
    ``multiscale_output`` False only the highest-resolution output is fused and returned.
    """

    def __init__(self, block: type[nn.Module], num_blocks: tuple[int, ...], channels: tuple[int, ...],
                 multiscale_output: bool = True):
        super().__init__()
        self.branches = nn.ModuleList(res_layer(block, c, c, n) for c, n in zip(channels, num_blocks))
        num_out = len(channels) if multiscale_output else 1
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(self._fuse(channels, j, i) for j in range(len(channels))) for i in range(num_out))
        self.relu = nn.ReLU(inplace=True)

    @staticmethod
    def _fuse(channels: tuple[int, ...], j: int, i: int) -> nn.Module:
        """The path from branch j to branch i."""
        if j == i:
            return nn.Identity()
        if j > i:  # lower resolution -> higher: 1x1 conv to i's width, then upsample
            return nn.Sequential(*conv_bn(channels[j], channels[i], kernel=1),
                                 nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"))
        steps = [conv_bn(channels[j], channels[j], stride=2, relu=True) for _ in range(i - j - 1)]
        return nn.Sequential(*steps, conv_bn(channels[j], channels[i], stride=2))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]  # [N, C_b, H/2**b, W/2**b] each
        return [self.relu(sum(fuse(x) for fuse, x in zip(fuses, xs))) for fuses in self.fuse_layers]


class HRNet(nn.Module):
    """HRNet backbone (mmpose ``HRNet``): input [N, 3, H, W] -> list of branch features.

    Stem: two stride-2 3x3 convs (64 channels, stride 4). Stage 1: four Bottlenecks (256
    channels). Each transition keeps or re-widens the existing branches and adds a new branch at
    half the resolution of the lowest one; stages 2-4 are chains of ``HRModule``. The last module of
    the last stage fuses only into the stride-4 branch (mmpose's ``multiscale_output=False``).
    """

    def __init__(self, stages=W48_STAGES, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = res_layer(Bottleneck, 64, 256, 4)
        previous = (256,)
        for index, (num_modules, block, num_blocks, channels) in enumerate(stages, start=1):
            block = BLOCKS[block]
            channels = tuple(c * block.expansion for c in channels)
            modules = [HRModule(block, num_blocks, channels,
                                multiscale_output=not (index == len(stages) and m == num_modules - 1))
                       for m in range(num_modules)]
            setattr(self, f"transition{index}", self._transition(previous, channels))
            setattr(self, f"stage{index + 1}", nn.Sequential(*modules))
            previous = channels
        self.num_stages = len(stages)

    @staticmethod
    def _transition(previous: tuple[int, ...], channels: tuple[int, ...]) -> nn.ModuleList:
        """Per new-stage branch: identity, a 3x3 conv to a new width, or strided 3x3 convs from the
        lowest-resolution previous branch (each with ReLU; all but the last keep its width)."""
        layers = []
        for i, c in enumerate(channels):
            if i < len(previous):
                layers.append(nn.Identity() if c == previous[i] else conv_bn(previous[i], c, relu=True))
            else:
                steps = i + 1 - len(previous)
                layers.append(nn.Sequential(*(
                    conv_bn(previous[-1], c if k == steps - 1 else previous[-1], stride=2, relu=True)
                    for k in range(steps))))
        return nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))  # [N, 64, H/2, W/2]
        x = self.relu(self.bn2(self.conv2(x)))  # [N, 64, H/4, W/4]
        xs = [self.layer1(x)]  # [[N, 256, H/4, W/4]]
        for index in range(1, self.num_stages + 1):
            transition = getattr(self, f"transition{index}")
            # existing branches map one to one; new ones grow from the lowest-resolution branch
            xs = [t(xs[i] if i < len(xs) else xs[-1]) for i, t in enumerate(transition)]
            xs = getattr(self, f"stage{index + 1}")(xs)  # [[N, C_b, H/4/2**b, W/4/2**b] ...]
        return xs  # W48: [[N, 48, H/4, W/4]] after the last stage


class HeatmapHead(nn.Module):
    """mmpose's top-down heatmap head without deconvolutions: a 1x1 conv to one map per keypoint."""

    def __init__(self, in_channels: int = 48, num_keypoints: int = 133):
        super().__init__()
        self.final_layer = nn.Conv2d(in_channels, num_keypoints, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.final_layer(features[0])  # [N, 48, h, w] -> [N, K, h, w]


class TopDownHeatmapModel(nn.Module):
    """Backbone + head, named as in mmpose 0.x's ``TopDown`` (``backbone``, ``keypoint_head``).

    Input: [N, 3, 384, 288] normalised RGB crops; output: [N, K, 96, 72] heatmaps (stride 4).
    """

    def __init__(self, stages=W48_STAGES, num_keypoints: int = 133):
        super().__init__()
        self.backbone = HRNet(stages)
        self.keypoint_head = HeatmapHead(stages[-1][3][0], num_keypoints)
        self.init_weights()

    def init_weights(self) -> None:
        """mmpose's initialisation: convs N(0, 0.001) with zero bias, norms weight 1 and bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.001)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.keypoint_head(self.backbone(x))  # [N, 3, H, W] -> [N, K, H/4, W/4]


def hrnet_w48_wholebody(num_keypoints: int = 133) -> TopDownHeatmapModel:
    """mmpose's HRNet-W48 COCO-WholeBody model (384x288 input, 96x72 heatmaps), untrained."""
    return TopDownHeatmapModel(W48_STAGES, num_keypoints)
