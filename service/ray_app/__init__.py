"""The DARK pose pipeline as a Ray Serve application (scale-out, optional extra ``ray``).

``service.ray_app.builder:app_builder`` is the ``import_path`` of ``deploy/serve_config.yaml``;
``service.ray_app.deployments`` holds the three deployments (``Ingress``, ``Detector``,
``PoseModel``) and the small adapters that let the unchanged :class:`Pipeline` call them.
Importing this package does not import Ray; import the submodules for that.
"""

from __future__ import annotations

APP_NAME = "darkpose"
INGRESS_NAME = "Ingress"
DETECTOR_NAME = "Detector"
POSE_NAME = "PoseModel"

__all__ = ["APP_NAME", "DETECTOR_NAME", "INGRESS_NAME", "POSE_NAME"]
