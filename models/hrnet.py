"""HRNet (W32 / W48 / any width) top-down pose network with a 1x1 heatmap head.

Module and parameter names follow ``lib/models/pose_hrnet.py`` of the official repository
(leoxiaobin/deep-high-resolution-net.pytorch, also used unchanged by ilovepose/DarkPose):
``conv1, bn1, conv2, bn2, layer1, transition1, stage2, transition2, stage3, transition3,
stage4, final_layer``; inside a stage ``stageS.M.branches.B.i.*`` and
``stageS.M.fuse_layers.i.j.*``.  mmpose's ``HRNet`` backbone uses the same names (under
``backbone.``) and its head's 1x1 conv is ``keypoint_head.final_layer`` (0.x) /
``head.final_layer`` (1.x); see :mod:`darkpose.models.checkpoint`.

Shapes: ``x: (N, 3, H, W) float32 -> heatmaps (N, K, H/4, W/4)``; ``H`` and ``W`` must be
multiples of 32 (the lowest branch runs at 1/32 and is upsampled back by exact powers of 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from darkpose.models.blocks import BN_MOMENTUM, BasicBlock, Bottleneck, make_layer


@dataclass(frozen=True)
class StageConfig:
    """One HRNet stage: ``num_modules`` HR modules with ``len(num_channels)`` branches."""

    num_modules: int
    num_blocks: tuple[int, ...]
    num_channels: tuple[int, ...]

    @property
    def num_branches(self) -> int:
        return len(self.num_channels)


def hrnet_stages(
    width: int, num_modules: tuple[int, int, int] = (1, 4, 3), num_blocks: int = 4
) -> tuple[StageConfig, StageConfig, StageConfig]:
    """Stage 2-4 configuration; the defaults are those of the official
    ``w{width}_256x192_adam_lr1e-3.yaml`` files: 1 / 4 / 3 modules, 4 BASIC blocks per branch,
    channels ``width * 2**b``.  (Fewer modules/blocks only make small graphs for tests.)"""
    b = num_blocks
    return (
        StageConfig(num_modules[0], (b, b), (width, 2 * width)),
        StageConfig(num_modules[1], (b, b, b), (width, 2 * width, 4 * width)),
        StageConfig(num_modules[2], (b, b, b, b), (width, 2 * width, 4 * width, 8 * width)),
    )


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches of BASIC blocks followed by all-to-all fusion (sum).

    ``forward(xs)``: list of ``num_branches`` tensors ``(N, C_b, H/2**b, W/2**b)`` → list of
    ``num_branches`` tensors (or only the highest-resolution one when
    ``multi_scale_output=False``).
    """

    def __init__(
        self, num_blocks: Sequence[int], channels: Sequence[int], multi_scale_output: bool
    ) -> None:
        super().__init__()
        self.num_branches = len(channels)
        self.branches = nn.ModuleList(
            [make_layer(BasicBlock, c, c, n) for n, c in zip(num_blocks, channels, strict=True)]
        )
        n_out = self.num_branches if multi_scale_output else 1
        fuse: list[nn.ModuleList] = []
        for i in range(n_out):
            row: list[nn.Module | None] = []
            for j in range(self.num_branches):
                if j > i:  # lower resolution → 1x1 conv + BN + nearest upsample
                    row.append(
                        nn.Sequential(
                            nn.Conv2d(channels[j], channels[i], 1, 1, 0, bias=False),
                            nn.BatchNorm2d(channels[i]),
                            nn.Upsample(scale_factor=float(2 ** (j - i)), mode="nearest"),
                        )
                    )
                elif j == i:
                    row.append(None)
                else:  # higher resolution → (i - j) strided 3x3 convs
                    steps = [
                        _conv_bn(channels[j], channels[j], 3, 2, relu=True)
                        for _ in range(i - j - 1)
                    ]
                    steps.append(_conv_bn(channels[j], channels[i], 3, 2, relu=False))
                    row.append(nn.Sequential(*steps))
            fuse.append(nn.ModuleList(row))  # type: ignore[arg-type]  # None = identity
        self.fuse_layers = nn.ModuleList(fuse) if self.num_branches > 1 else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        if self.fuse_layers is None:
            return xs
        out: list[torch.Tensor] = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[i]
            for j, layer in enumerate(cast(nn.ModuleList, row)):
                if j != i:
                    y = y + layer(xs[j])
            out.append(self.relu(y))
        return out


def _transition(pre: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
    """Adapt ``len(pre)`` branches to ``len(cur)``: a 3x3 conv where channels differ, ``None``
    where they match, and a chain of strided 3x3 convs (from the lowest branch) for each new
    branch (``transitionT.b.0.0`` / ``transitionT.b.0.1``)."""
    layers: list[nn.Module | None] = []
    for i, c in enumerate(cur):
        if i < len(pre):
            layers.append(_conv_bn(pre[i], c, 3, 1, relu=True) if pre[i] != c else None)
        else:
            steps = []
            for k in range(i + 1 - len(pre)):
                out_ch = c if k == i - len(pre) else pre[-1]
                steps.append(_conv_bn(pre[-1], out_ch, 3, 2, relu=True))
            layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)  # type: ignore[arg-type]  # None = pass-through


class PoseHighResolutionNet(nn.Module):
    """HRNet-W``width`` pose network (``width`` 32 / 48 for the published models; any
    positive width builds, e.g. 8 for fast tests; ``num_modules`` / ``num_blocks`` other than
    the defaults only for tests).

    ``forward(x: (N, 3, H, W)) -> heatmaps (N, num_joints, H/4, W/4)``.
    """

    #: Input height and width must be multiples of this.
    stride_multiple = 32
    #: Heatmap = input / this.
    output_stride = 4

    def __init__(
        self,
        width: int = 32,
        num_joints: int = 17,
        final_conv_kernel: int = 1,
        num_modules: tuple[int, int, int] = (1, 4, 3),
        num_blocks: int = 4,
    ) -> None:
        super().__init__()
        if width < 1 or num_joints < 1:
            raise ValueError(f"expected positive width and num_joints, got {width}, {num_joints}")
        self.width = width
        self.num_joints = num_joints
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_layer(Bottleneck, 64, 64, 4)

        s2, s3, s4 = hrnet_stages(width, num_modules, num_blocks)
        self.transition1 = _transition([64 * Bottleneck.expansion], s2.num_channels)
        self.stage2 = self._stage(s2, multi_scale_output=True)
        self.transition2 = _transition(s2.num_channels, s3.num_channels)
        self.stage3 = self._stage(s3, multi_scale_output=True)
        self.transition3 = _transition(s3.num_channels, s4.num_channels)
        self.stage4 = self._stage(s4, multi_scale_output=False)
        self.final_layer = nn.Conv2d(
            width, num_joints, final_conv_kernel, 1, 1 if final_conv_kernel == 3 else 0
        )

    @staticmethod
    def _stage(cfg: StageConfig, multi_scale_output: bool) -> nn.Sequential:
        return nn.Sequential(
            *[
                HighResolutionModule(
                    cfg.num_blocks,
                    cfg.num_channels,
                    multi_scale_output or m < cfg.num_modules - 1,
                )
                for m in range(cfg.num_modules)
            ]
        )

    @staticmethod
    def _apply_transition(trans: nn.ModuleList, ys: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, t in enumerate(trans):
            if t is None:
                out.append(ys[i])
            else:  # existing branch with new width, or a new branch from the lowest one
                out.append(t(ys[i] if i < len(ys) else ys[-1]))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        ys = self.stage2(self._apply_transition(self.transition1, [x]))
        ys = self.stage3(self._apply_transition(self.transition2, ys))
        ys = self.stage4(self._apply_transition(self.transition3, ys))
        return self.final_layer(ys[0])
