"""Build the Ray Serve application in one of two topologies.

``pipeline`` (default): ``Ingress`` only — each replica runs the whole pipeline (detector,
crops, pose with the in-process micro-batcher, decoding) on the requests it is routed; only the
encoded image and the JSON answer cross process or node boundaries.
``split``: ``Ingress`` (decode, detector, uint8 crops) → ``PoseModel`` pool (normalise, pose,
decode, OKS-NMS; keypoints and scores come back) — for a separate, e.g. GPU, pose pool.

``deploy/serve_config.yaml`` (pipeline) and ``deploy/serve_config.split.yaml`` name
:func:`app_builder` as their ``import_path``; their ``args`` (:class:`BuildArgs`) reach every
replica.  From Python::

    from ray import serve
    from darkpose.service.ray_app.builder import build_app
    serve.run(build_app({"providers": "cpu"}), name="darkpose", route_prefix="/")
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from pydantic import BaseModel, Field
from ray.serve import Application, Deployment

from darkpose.service.core.errors import InvalidParameter, ModelError
from darkpose.service.ray_app import INGRESS_NAME, POSE_NAME, TOPOLOGIES, Topology
from darkpose.service.ray_app.common import make_settings, parse_address
from darkpose.service.ray_app.ingress import PipelineIngress, SplitIngress
from darkpose.service.ray_app.pose_pool import PoseDeployment


class BuildArgs(BaseModel):
    """``args`` of the application in the Serve config."""

    topology: Topology = Field(
        "pipeline",
        description="pipeline: every Ingress replica runs the whole pipeline (default); "
        "split: Ingress detects and crops, a PoseModel pool runs pose + decoding",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings overrides (field name → value); the replicas' DARKPOSE_* "
        "environment applies below them",
    )
    metrics_address: str | None = Field(
        None,
        description="'host:port' where every Ingress replica also serves its own /metrics "
        "(several replicas on a node take port, port+1, ...: scrape that range per node)",
    )
    measure_bytes: bool = Field(
        False,
        description="count the serialised bytes crossing each hop (Ingress stats(); "
        "bench/scale.py); costs one pickle of every message",
    )


def build_app(
    settings: Mapping[str, Any] | None = None,
    deployment_options: Mapping[str, Mapping[str, Any]] | None = None,
    metrics_address: str | None = None,
    topology: str = "pipeline",
    measure_bytes: bool = False,
) -> Application:
    """The bound application.

    settings: :class:`~darkpose.service.settings.Settings` overrides (validated here, before
    deploying).
    deployment_options: deployment name → ``Deployment.options(...)`` keywords (``num_replicas``,
    ``ray_actor_options``, ``max_replicas_per_node``, ``user_config``, …) — what a Serve config's
    ``deployments:`` section sets, for ``serve.run`` from Python (tests, bench/scale.py).
    metrics_address: ``"host:port"`` where each ``Ingress`` replica also serves its metrics.
    topology: ``"pipeline"`` (default) or ``"split"`` (see the module docstring).
    measure_bytes: count the serialised bytes per hop (read with the Ingress's ``stats()``).
    """
    if topology not in TOPOLOGIES:
        raise InvalidParameter(f"topology: expected one of {sorted(TOPOLOGIES)}, got {topology!r}")
    if metrics_address is not None:
        parse_address(metrics_address)
    overrides = dict(settings or {})
    resolved = make_settings(overrides)
    if not resolved.pose_models:
        raise ModelError("pose_models: expected at least one model file, got an empty list")
    opts = {k: dict(v) for k, v in (deployment_options or {}).items()}
    known = set(TOPOLOGIES[topology])
    unknown = sorted(set(opts) - known)
    if unknown:
        raise InvalidParameter(
            f"deployment_options: expected names among {sorted(known)} for topology "
            f"{topology!r}, got {unknown}"
        )
    if topology == "pipeline":
        return (
            cast(Deployment, PipelineIngress)
            .options(**opts.get(INGRESS_NAME, {}))
            .bind(overrides, metrics_address, measure_bytes)
        )
    pose = cast(Deployment, PoseDeployment).options(**opts.get(POSE_NAME, {})).bind(overrides)
    return (
        cast(Deployment, SplitIngress)
        .options(**opts.get(INGRESS_NAME, {}))
        .bind(pose, overrides, metrics_address, measure_bytes)
    )


def app_builder(args: BuildArgs) -> Application:
    """Serve's application builder (``import_path:
    darkpose.service.ray_app.builder:app_builder``)."""
    return build_app(
        args.settings,
        metrics_address=args.metrics_address,
        topology=args.topology,
        measure_bytes=args.measure_bytes,
    )
