"""PyTorch pose networks (HRNet, SimpleBaseline ResNet), checkpoint loading and the in-graph
DARK decode.  Only the exporter uses this package; ``service/`` never imports torch."""

from darkpose.models.checkpoint import detect_layout, load_checkpoint, load_state, unwrap_state_dict
from darkpose.models.dark import DarkDecode, DecodedPoseNet
from darkpose.models.errors import CheckpointError, ExportError
from darkpose.models.hrnet import PoseHighResolutionNet
from darkpose.models.registry import PUBLISHED_ARCHS, build_model, parse_input_size
from darkpose.models.resnet import PoseResNet

__all__ = [
    "PUBLISHED_ARCHS",
    "CheckpointError",
    "DarkDecode",
    "DecodedPoseNet",
    "ExportError",
    "PoseHighResolutionNet",
    "PoseResNet",
    "build_model",
    "detect_layout",
    "load_checkpoint",
    "load_state",
    "parse_input_size",
    "unwrap_state_dict",
]
