"""SimpleBaseline: ResNet-50/101/152 backbone + 3 deconvolution layers + 1x1 heatmap conv.

Names follow ``lib/models/pose_resnet.py`` of the official repositories
(microsoft/human-pose-estimation.pytorch, deep-high-resolution-net.pytorch, DarkPose):
``conv1, bn1, layer1..layer4, deconv_layers.{0,1,3,4,6,7}, final_layer``.  mmpose's ``ResNet``
backbone uses the same names under ``backbone.`` and its ``TopdownHeatmapSimpleHead`` (0.x) /
``HeatmapHead`` (1.x) the same ``deconv_layers.*`` / ``final_layer.*`` under
``keypoint_head.`` / ``head.``.

Shapes: ``x: (N, 3, H, W) -> heatmaps (N, K, H/4, W/4)``; ``H`` and ``W`` multiples of 32.
"""

from __future__ import annotations

import torch
from torch import nn

from darkpose.models.blocks import BN_MOMENTUM, Bottleneck, make_layer

#: Bottleneck blocks per stage for each depth (He et al. 2016).
RESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


class PoseResNet(nn.Module):
    """SimpleBaseline ResNet-``depth`` (50 / 101 / 152).

    ``forward(x: (N, 3, H, W)) -> heatmaps (N, num_joints, H/4, W/4)``.
    ``base_width`` scales every channel count (64 for the published models; smaller values
    only for fast tests), ``deconv_channels`` the three deconvolutions (256 published).
    """

    stride_multiple = 32
    output_stride = 4

    def __init__(
        self,
        depth: int = 50,
        num_joints: int = 17,
        base_width: int = 64,
        deconv_channels: int = 256,
        final_conv_kernel: int = 1,
    ) -> None:
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise ValueError(f"expected ResNet depth in {sorted(RESNET_LAYERS)}, got {depth}")
        blocks = RESNET_LAYERS[depth]
        self.depth = depth
        self.num_joints = num_joints
        w = base_width
        self.conv1 = nn.Conv2d(3, w, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        e = Bottleneck.expansion
        self.layer1 = make_layer(Bottleneck, w, w, blocks[0])
        self.layer2 = make_layer(Bottleneck, w * e, 2 * w, blocks[1], stride=2)
        self.layer3 = make_layer(Bottleneck, 2 * w * e, 4 * w, blocks[2], stride=2)
        self.layer4 = make_layer(Bottleneck, 4 * w * e, 8 * w, blocks[3], stride=2)
        deconv: list[nn.Module] = []
        in_ch = 8 * w * e
        for _ in range(3):
            deconv += [
                nn.ConvTranspose2d(
                    in_ch, deconv_channels, 4, stride=2, padding=1, output_padding=0, bias=False
                ),
                nn.BatchNorm2d(deconv_channels, momentum=BN_MOMENTUM),
                nn.ReLU(inplace=True),
            ]
            in_ch = deconv_channels
        self.deconv_layers = nn.Sequential(*deconv)
        self.final_layer = nn.Conv2d(
            deconv_channels, num_joints, final_conv_kernel, 1, 1 if final_conv_kernel == 3 else 0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.final_layer(self.deconv_layers(x))
