"""``darkpose``: the public Python face of the DARK pose service.

One line, like rtmlib's ``Body()(img)``::

    from darkpose import PoseEstimator

    poses = PoseEstimator()("photo.jpg")  # a path, bytes, or an array with its channel order
    poses.to_coco()                       # COCO keypoint results (list of dicts)
    poses.draw("overlay.png")             # boxes + skeletons on the (upright) photo

Import from here; the top-level packages ``service``, ``models`` and ``exporters`` that the
distribution also installs are its internals (the HTTP service, the PyTorch models, the ONNX
exporter) and may move under ``darkpose.`` in a later release.
"""

from __future__ import annotations

from darkpose.estimator import ChannelOrder, PoseEstimator, Poses
from service.cli import package_version as _package_version
from service.core.pipeline import Person, PipelineOptions
from service.core.types import COCO_KEYPOINTS, COCO_SKELETON
from service.settings import Settings

__version__ = _package_version()

__all__ = [
    "COCO_KEYPOINTS",
    "COCO_SKELETON",
    "ChannelOrder",
    "Person",
    "PipelineOptions",
    "PoseEstimator",
    "Poses",
    "Settings",
    "__version__",
]
