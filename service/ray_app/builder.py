"""Build the Ray Serve application: ``Ingress`` → (``Detector``, ``PoseModel`` …).

``deploy/serve_config.yaml`` names :func:`app_builder` as its ``import_path``; its ``args``
(``settings``: :class:`~service.settings.Settings` field overrides) reach every replica.
From Python::

    from ray import serve
    from service.ray_app.builder import build_app
    serve.run(build_app({"providers": "cpu"}), name="darkpose", route_prefix="/")

Several ``pose_models`` (an ensemble) become one ``PoseModel`` deployment each (named
``PoseModel``, ``PoseModel1``, …), so each model batches and scales on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from pydantic import BaseModel, Field
from ray.serve import Application, Deployment

from service.core.errors import InvalidParameter, ModelError
from service.ray_app import DETECTOR_NAME, INGRESS_NAME, POSE_NAME
from service.ray_app.deployments import (
    DetectorDeployment,
    IngressDeployment,
    PoseDeployment,
    make_settings,
    parse_address,
)


class BuildArgs(BaseModel):
    """``args`` of the application in the Serve config."""

    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings overrides (field name → value); the replicas' DARKPOSE_* "
        "environment applies below them",
    )
    metrics_address: str | None = Field(
        None,
        description="'host:port' where every Ingress replica also serves its own /metrics "
        "(scrape each replica; needs max_replicas_per_node: 1 on Ingress)",
    )


def pose_deployment_name(index: int) -> str:
    """``PoseModel`` for the first pose model, ``PoseModel<i>`` for the others."""
    return POSE_NAME if index == 0 else f"{POSE_NAME}{index}"


def build_app(
    settings: Mapping[str, Any] | None = None,
    deployment_options: Mapping[str, Mapping[str, Any]] | None = None,
    metrics_address: str | None = None,
) -> Application:
    """The bound application.

    settings: :class:`~service.settings.Settings` overrides (validated here, before deploying).
    deployment_options: deployment name → ``Deployment.options(...)`` keywords (``num_replicas``,
    ``ray_actor_options``, ``max_replicas_per_node``, ``user_config``, …) — what a Serve config's
    ``deployments:`` section sets, for ``serve.run`` from Python (tests, bench/scale.py).
    metrics_address: ``"host:port"`` where each ``Ingress`` replica also serves its metrics.
    """
    if metrics_address is not None:
        parse_address(metrics_address)
    overrides = dict(settings or {})
    resolved = make_settings(overrides)
    if not resolved.pose_models:
        raise ModelError("pose_models: expected at least one model file, got an empty list")
    opts = {k: dict(v) for k, v in (deployment_options or {}).items()}
    known = {INGRESS_NAME, DETECTOR_NAME} | {
        pose_deployment_name(i) for i in range(len(resolved.pose_models))
    }
    unknown = sorted(set(opts) - known)
    if unknown:
        raise InvalidParameter(
            f"deployment_options: expected names among {sorted(known)}, got {unknown}"
        )
    pose = [
        cast(Deployment, PoseDeployment)
        .options(name=pose_deployment_name(i), **opts.get(pose_deployment_name(i), {}))
        .bind(overrides, i)
        for i in range(len(resolved.pose_models))
    ]
    detector = (
        cast(Deployment, DetectorDeployment).options(**opts.get(DETECTOR_NAME, {})).bind(overrides)
    )
    return (
        cast(Deployment, IngressDeployment)
        .options(**opts.get(INGRESS_NAME, {}))
        .bind(detector, pose, overrides, metrics_address)
    )


def app_builder(args: BuildArgs) -> Application:
    """Serve's application builder (``import_path: service.ray_app.builder:app_builder``)."""
    return build_app(args.settings, metrics_address=args.metrics_address)
