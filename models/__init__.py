"""PyTorch pose networks (HRNet, SimpleBaseline ResNet), checkpoint loading and the in-graph
DARK decode.  Only the exporter uses this package; ``service/`` never imports torch."""

from models.checkpoint import detect_layout, load_checkpoint, load_state, unwrap_state_dict
from models.dark import DarkDecode, DecodedPoseNet
from models.errors import CheckpointError, ExportError
from models.hrnet import PoseHighResolutionNet
from models.registry import PUBLISHED_ARCHS, build_model, parse_input_size
from models.resnet import PoseResNet

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
