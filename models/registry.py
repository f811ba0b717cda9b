"""Architecture names → constructors, and input-size validation.

Published configurations: ``hrnet_w32``, ``hrnet_w48``, ``resnet50``, ``resnet101``,
``resnet152`` (SimpleBaseline).  ``hrnet_w<N>`` with any other positive ``N`` also builds (a
narrow HRNet, e.g. ``hrnet_w8`` for fast tests); there are no published weights for those.
"""

from __future__ import annotations

import re

from torch import nn

from darkpose.models.errors import ExportError
from darkpose.models.hrnet import PoseHighResolutionNet
from darkpose.models.resnet import RESNET_LAYERS, PoseResNet

PUBLISHED_ARCHS: tuple[str, ...] = ("hrnet_w32", "hrnet_w48", "resnet50", "resnet101", "resnet152")

_HRNET = re.compile(r"^hrnet_w(\d+)$")
_RESNET = re.compile(r"^(?:resnet|res|simplebaseline_res)(\d+)$")
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def build_model(arch: str, num_joints: int = 17, **overrides: object) -> nn.Module:
    """Construct ``arch`` (random init, eval mode).

    ``overrides`` go to the constructor (``num_modules`` / ``num_blocks`` for HRNet,
    ``base_width`` / ``deconv_channels`` for ResNet; small graphs for tests only).
    Raises :class:`ExportError` for an unknown name.
    """
    name = arch.strip().lower()
    model: nn.Module
    if (m := _HRNET.match(name)) is not None and int(m.group(1)) > 0:
        model = PoseHighResolutionNet(
            width=int(m.group(1)),
            num_joints=num_joints,
            **overrides,  # type: ignore[arg-type]
        )
    elif (m := _RESNET.match(name)) is not None and int(m.group(1)) in RESNET_LAYERS:
        model = PoseResNet(
            depth=int(m.group(1)),
            num_joints=num_joints,
            **overrides,  # type: ignore[arg-type]
        )
    else:
        raise ExportError(
            f"architecture: expected one of {', '.join(PUBLISHED_ARCHS)} (or hrnet_w<N>), "
            f"got {arch!r}"
        )
    return model.eval()


def canonical_arch(arch: str) -> str:
    """Normalised architecture name written to the model metadata (``resnet50`` …)."""
    name = arch.strip().lower()
    if (m := _RESNET.match(name)) is not None:
        return f"resnet{m.group(1)}"
    return name


def parse_input_size(text: str, multiple: int = 32) -> tuple[int, int]:
    """Parse ``"HxW"`` (e.g. ``"256x192"``: height 256, width 192, the convention of the
    HRNet/mmpose config names) and return ``(W, H)`` as :class:`ModelSpec` stores it.

    Raises :class:`ExportError` when malformed or not a multiple of ``multiple``.
    """
    m = _SIZE.match(text)
    if m is None:
        raise ExportError(f"input size: expected HEIGHTxWIDTH such as '256x192', got {text!r}")
    h, w = int(m.group(1)), int(m.group(2))
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        raise ExportError(
            f"input size: expected height and width positive multiples of {multiple} for this "
            f"architecture, got {h}x{w}"
        )
    return (w, h)
