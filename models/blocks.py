"""Residual blocks shared by HRNet and SimpleBaseline (ResNet).

Parameter names follow the official HRNet / SimpleBaseline repositories (``conv1``, ``bn1``,
``conv2``, ``bn2``, ``conv3``, ``bn3``, ``downsample.0`` / ``downsample.1``), which mmpose's
``BasicBlock`` / ``Bottleneck`` also use (its norm layers are named ``bn1``.. via
``build_norm_layer(postfix=i)``), so checkpoints of all three load without renaming inside a block.
"""

from __future__ import annotations

import torch
from torch import nn

#: BatchNorm momentum used by the official repositories (irrelevant for inference).
BN_MOMENTUM = 0.1


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def projection(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """1x1 conv + BN shortcut (``downsample.0`` / ``downsample.1``)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_ch, momentum=BN_MOMENTUM),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; ``x: (N, C_in, H, W) -> (N, planes, H/s, W/s)``."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 → 3x3 (stride) → 1x1 (x4 channels) with a residual connection.

    ``x: (N, C_in, H, W) -> (N, 4 * planes, H/s, W/s)``; the stride sits on the 3x3 conv
    ("pytorch" style, as in the official repositories and mmpose's default).
    """

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def make_layer(
    block: type[BasicBlock] | type[Bottleneck],
    inplanes: int,
    planes: int,
    blocks: int,
    stride: int = 1,
) -> nn.Sequential:
    """``blocks`` residual blocks; the first one gets a projection shortcut when the shape
    changes.  Returns the ``nn.Sequential`` (its output has ``planes * block.expansion``
    channels)."""
    out_ch = planes * block.expansion
    downsample = projection(inplanes, out_ch, stride) if stride != 1 or inplanes != out_ch else None
    layers: list[nn.Module] = [block(inplanes, planes, stride, downsample)]
    layers += [block(out_ch, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)
