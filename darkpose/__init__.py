"""``darkpose``: top-down human pose estimation (DARK decoding) as a library and a service.

One line, like rtmlib's ``Body()(img)``::

    from darkpose import PoseEstimator

    poses = PoseEstimator()("photo.jpg")  # a path, bytes, or an array with its channel order
    poses.to_coco()                       # COCO keypoint results (list of dicts)
    poses.draw("overlay.png")             # boxes + skeletons on the (upright) photo

The names below are the public Python API.  The sub-packages are the service's parts:
``darkpose.service`` (``core``: pure numpy/OpenCV maths such as
``darkpose.service.core.codec.decode_heatmaps``; ``runtime``: model backends; ``api``: the HTTP
service; ``ray_app``; ``commands``), ``darkpose.models`` (the PyTorch networks, extra
``export``) and ``darkpose.exporters`` (checkpoint → ONNX).  ``darkpose/zoo`` holds the packaged
models and their cards.

The names are loaded on first use, so ``import darkpose.service.core.codec`` does not pull in
the whole pipeline.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from darkpose.estimator import ChannelOrder, PoseEstimator
    from darkpose.service.core.pipeline import PipelineOptions
    from darkpose.service.core.poses import Person, Poses
    from darkpose.service.core.types import COCO_KEYPOINTS, COCO_SKELETON
    from darkpose.service.settings import Settings

#: public name → the module that defines it
_EXPORTS: dict[str, str] = {
    "ChannelOrder": "darkpose.estimator",
    "PoseEstimator": "darkpose.estimator",
    "Poses": "darkpose.service.core.poses",
    "Person": "darkpose.service.core.poses",
    "PipelineOptions": "darkpose.service.core.pipeline",
    "COCO_KEYPOINTS": "darkpose.service.core.types",
    "COCO_SKELETON": "darkpose.service.core.types",
    "Settings": "darkpose.service.settings",
}

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


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from darkpose.service import package_version

        return package_version()
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'darkpose' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
