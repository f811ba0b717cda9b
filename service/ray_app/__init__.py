"""The DARK pose pipeline as a Ray Serve application (scale-out, optional extra ``ray``).

``darkpose.service.ray_app.builder:app_builder`` is the ``import_path`` of
``deploy/serve_config.yaml``
(topology ``pipeline``: every ``Ingress`` replica runs the whole pipeline) and of
``deploy/serve_config.split.yaml`` (topology ``split``: ``Ingress`` detects and crops,
a ``PoseModel`` pool runs the pose model(s) and decodes).  Modules: ``ingress`` (the ``Ingress``
deployments), ``pose_pool`` (the ``PoseModel`` pool and the ingress's remote pose stage),
``common`` (settings, ``user_config``, calls between deployments), ``wire_bytes`` (debug byte
counters), ``local_cluster`` (a local Ray cluster for tests and benchmarks).  Importing this
package does not import Ray; import the submodules.
"""

from __future__ import annotations

from typing import Literal

APP_NAME = "darkpose"
INGRESS_NAME = "Ingress"
POSE_NAME = "PoseModel"
Topology = Literal["pipeline", "split"]
#: Deployment names of each topology (what a Serve config's ``deployments:`` may name).
TOPOLOGIES: dict[str, tuple[str, ...]] = {
    "pipeline": (INGRESS_NAME,),
    "split": (INGRESS_NAME, POSE_NAME),
}

__all__ = ["APP_NAME", "INGRESS_NAME", "POSE_NAME", "TOPOLOGIES", "Topology"]
