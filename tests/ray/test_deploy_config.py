"""deploy/serve_config*.yaml and deploy/kuberay/rayservice.yaml, checked with Ray's own schema.

The YAML-only checks run without Ray; the schema checks skip when the `ray` extra is absent.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

SERVE_CONFIG = REPO / "deploy" / "serve_config.yaml"
SPLIT_CONFIG = REPO / "deploy" / "serve_config.split.yaml"
CONFIGS = {"pipeline": SERVE_CONFIG, "split": SPLIT_CONFIG}
RAYSERVICE = REPO / "deploy" / "kuberay" / "rayservice.yaml"
DOCKERFILE_RAY = REPO / "docker" / "Dockerfile.ray"
#: HAProxy keeps this much of each buffer free for header rewrites (its tune.maxrewrite default).
HAPROXY_MAXREWRITE = 1024


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _deployments(path: Path = SERVE_CONFIG) -> dict[str, dict[str, Any]]:
    app = _load(path)["applications"][0]
    return {d["name"]: d for d in app["deployments"]}


def _pinned_ray_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    m = re.search(r'"ray\[serve\]==([0-9.]+)"', text)
    if m is None:
        pytest.fail('expected pyproject\'s ray extra to pin "ray[serve]==X.Y.Z", got no pin')
    return m.group(1)


# --- YAML level (no Ray needed) ----------------------------------------------------------------


def test_rayservice_embeds_the_serve_config_verbatim() -> None:
    manifest = _load(RAYSERVICE)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayService"
    embedded = manifest["spec"]["serveConfigV2"]
    assert embedded == SERVE_CONFIG.read_text(), (
        "deploy/kuberay/rayservice.yaml serveConfigV2 differs from deploy/serve_config.yaml: "
        "paste the file again (indented 4 spaces under `serveConfigV2: |`)"
    )
    assert yaml.safe_load(embedded) == _load(SERVE_CONFIG)


def test_rayservice_cluster_matches_the_pinned_ray_and_image() -> None:
    spec = _load(RAYSERVICE)["spec"]["rayClusterConfig"]
    assert spec["rayVersion"] == _pinned_ray_version()
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in spec["workerGroupSpecs"]
    ]
    assert len(pods) >= 2
    for pod in pods:
        (container,) = pod["containers"]
        assert container["image"].startswith("darkpose-service:ray")
        env = {e["name"]: e for e in container["env"]}
        assert "DARKPOSE_MODEL_DIR" not in env  # the image's packaged models by default
        # Encoded images ride inline in Serve's RPCs (Ray's default limit is 100 kB).
        assert int(env["RAY_max_direct_call_object_size"]["value"]) >= 1024 * 1024
        # Token auth: every node reads the same token from one Secret.
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "darkpose-ray-auth"
        assert "volumeMounts" not in container and "volumes" not in pod  # no PVC required
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def _pod_envs() -> list[dict[str, Any]]:
    spec = _load(RAYSERVICE)["spec"]["rayClusterConfig"]
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in spec["workerGroupSpecs"]
    ]
    return [{e["name"]: e for e in pod["containers"][0]["env"]} for pod in pods]


def _image_ray_serve_env() -> dict[str, str]:
    """``RAY_SERVE_*`` variables of docker/Dockerfile.ray's ``ENV`` lines."""
    return dict(re.findall(r"^\s*(RAY_SERVE_\w+)=(\S+)", DOCKERFILE_RAY.read_text(), re.M))


def test_every_node_runs_the_haproxy_ingress_with_the_image_s_limits() -> None:
    """The shipped ingress is Ray's HAProxy on every node: the KubeRay pods and the image
    (docker compose, plain docker) set the same RAY_SERVE_* values."""
    image = _image_ray_serve_env()
    assert image["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    for env in _pod_envs():
        pod = {k: e["value"] for k, e in env.items() if k.startswith("RAY_SERVE_")}
        assert pod == image


def test_haproxy_limits_map_to_the_service_limits() -> None:
    """HAProxy admits the request heads the service admits, and every time limit of the proxy
    path lies above the service's own, so the service's JSON errors answer first."""
    from darkpose.service.settings import Settings

    default = {k: f.default for k, f in Settings.model_fields.items()}
    env = _image_ray_serve_env()
    head_room = int(env["RAY_SERVE_HAPROXY_TUNE_BUFSIZE"]) - HAPROXY_MAXREWRITE
    assert head_room >= (default["max_headers_bytes"])
    assert int(env["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"]) > default["request_timeout_s"]
    for path in CONFIGS.values():
        http = _load(path)["http_options"]
        assert http["request_timeout_s"] > (
            default["request_timeout_s"] + default["work_timeout_s"]
        ), path.name
        # HAProxy's keep-alive timeout is Serve's keep_alive_timeout_s (default 90 s).
        assert "keep_alive_timeout_s" not in http or http["keep_alive_timeout_s"] > 0


def test_serve_configs_say_the_ingress_carries_streams_and_websockets() -> None:
    for path in CONFIGS.values():
        text = path.read_text()
        assert "RAY_SERVE_ENABLE_HA_PROXY=1" in text, path.name
        assert "NDJSON" in text and "WebSockets" in text, path.name


#: The commented lines a user uncomments to serve their own models from the PVC.
_OWN_MODELS_LINE = re.compile(
    r"^(\s*)# ((?:- name: DARKPOSE_MODEL_DIR|  value: /models|volumeMounts: .*|volumes: .*"
    r"|  - name: models|    mountPath: /models|    readOnly: true|    persistentVolumeClaim:"
    r"|      claimName: darkpose-models|      readOnly: true))$"
)


def test_rayservice_own_models_lines_uncommented_mount_the_pvc() -> None:
    """What the manifest's header says: uncommenting its model lines mounts the PVC
    "darkpose-models" read-only at /models on every pod and points the service at it."""
    lines, n = [], 0
    for line in RAYSERVICE.read_text().splitlines():
        m = _OWN_MODELS_LINE.match(line)
        if m:
            line, n = m.group(1) + m.group(2), n + 1
        lines.append(line)
    assert n == 13, f"expected the 13 commented own-models lines, got {n}"
    spec = yaml.safe_load("\n".join(lines))["spec"]["rayClusterConfig"]
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in spec["workerGroupSpecs"]
    ]
    for pod in pods:
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["DARKPOSE_MODEL_DIR"]["value"] == "/models"
        (mount,) = container["volumeMounts"]
        assert mount == {"name": "models", "mountPath": "/models", "readOnly": True}
        (volume,) = pod["volumes"]
        assert volume["name"] == "models"
        assert volume["persistentVolumeClaim"] == {"claimName": "darkpose-models", "readOnly": True}


@pytest.mark.parametrize(
    ("topology", "names"), [("pipeline", {"Ingress"}), ("split", {"Ingress", "PoseModel"})]
)
def test_each_serve_config_names_its_topology_and_the_builder(
    topology: str, names: set[str]
) -> None:
    app = _load(CONFIGS[topology])["applications"][0]
    assert app["import_path"] == "darkpose.service.ray_app.builder:app_builder"
    assert app["args"]["topology"] == topology
    # Serve refuses a config naming a deployment the application does not have.
    assert set(_deployments(CONFIGS[topology])) == names


def test_serve_configs_differ_only_in_topology_where_shared() -> None:
    """Both files carry the same proxy/HTTP options and the same base settings."""
    a, b = _load(SERVE_CONFIG), _load(SPLIT_CONFIG)
    for key in ("proxy_location", "http_options", "logging_config"):
        assert a[key] == b[key], key
    sa, sb = (c["applications"][0]["args"]["settings"] for c in (a, b))
    assert {k: sa[k] for k in ("providers", "intra_op_threads")} == {
        k: sb[k] for k in ("providers", "intra_op_threads")
    }


def test_pose_max_ongoing_requests_is_above_the_batch_size() -> None:
    from darkpose.service.settings import default_of

    pose = _deployments(SPLIT_CONFIG)["PoseModel"]
    size = pose.get("user_config", {}).get("max_batch_size", default_of("max_batch"))
    # Serve sends a replica at most max_ongoing_requests calls: a lower value caps every batch.
    assert pose["max_ongoing_requests"] >= size
    assert pose["max_ongoing_requests"] > 5


def test_pipeline_ingress_autoscales_one_cpu_replicas() -> None:
    ingress = _deployments()["Ingress"]
    auto = ingress["autoscaling_config"]
    assert 1 <= auto["min_replicas"] < auto["max_replicas"]
    assert ingress["ray_actor_options"]["num_cpus"] == 1
    # Room above the autoscaling target, or the router never sees a replica as busy.
    assert ingress["max_ongoing_requests"] > auto["target_ongoing_requests"]


# --- Ray's own schema ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> Any:
    return pytest.importorskip("ray.serve.schema", reason="needs the optional `ray` extra")


def test_split_config_does_not_repeat_the_batching_defaults(schema: Any) -> None:
    """Unset batching keys come from the settings' defaults; a copy of them would drift."""
    from darkpose.service.ray_app.common import default_pose_batch

    defaults = default_pose_batch()
    user_config = _deployments(SPLIT_CONFIG)["PoseModel"].get("user_config") or {}
    assert not {k for k, v in user_config.items() if defaults.get(k) == v}, user_config


@pytest.mark.parametrize("topology", sorted(CONFIGS))
def test_serve_config_parses_with_ray_serve_deploy_schema(schema: Any, topology: str) -> None:
    from ray.serve.config import AutoscalingConfig

    cfg = schema.ServeDeploySchema.model_validate(_load(CONFIGS[topology]))
    (app,) = cfg.applications
    assert isinstance(app, schema.ServeApplicationSchema)
    assert app.route_prefix == "/"
    for dep in app.deployments:
        auto = AutoscalingConfig(**dep.autoscaling_config)
        assert 1 <= auto.min_replicas <= auto.max_replicas
        assert auto.target_ongoing_requests > 0
        assert dep.ray_actor_options.num_cpus > 0


def test_serve_config_matches_the_installed_ray(schema: Any) -> None:
    import ray

    assert ray.__version__ == _pinned_ray_version()


@pytest.mark.parametrize("topology", sorted(CONFIGS))
def test_serve_config_args_and_user_config_are_accepted_by_the_app(
    schema: Any, topology: str
) -> None:
    from darkpose.service.ray_app import TOPOLOGIES
    from darkpose.service.ray_app.builder import BuildArgs, app_builder
    from darkpose.service.ray_app.common import make_settings, parse_batch_config

    app = _load(CONFIGS[topology])["applications"][0]
    args = BuildArgs.model_validate(app["args"])
    assert args.topology == topology
    assert set(TOPOLOGIES[topology]) == set(_deployments(CONFIGS[topology]))
    settings = make_settings(args.settings)
    assert settings.intra_op_threads == 1
    bound = app_builder(args)._bound_deployment
    assert bound.name == "Ingress"
    if topology == "split":
        user_config = _deployments(SPLIT_CONFIG)["PoseModel"].get("user_config") or {}
        assert parse_batch_config(user_config) == parse_batch_config({})


@pytest.mark.parametrize(
    ("working_dir", "accepted"),
    [
        (".", False),
        ("/opt/darkpose", False),
        ("local:///opt/darkpose", True),
        ("https://example.org/darkpose.zip", True),
    ],
)
def test_working_dir_needs_a_uri(schema: Any, working_dir: str, accepted: bool) -> None:
    """What the comment in serve_config.yaml says: a local path must be a local:// URI."""
    cfg = _load(SERVE_CONFIG)
    cfg["applications"][0]["runtime_env"]["working_dir"] = working_dir
    if accepted:
        schema.ServeDeploySchema.model_validate(cfg)
    else:
        with pytest.raises(ValueError, match="local://"):
            schema.ServeDeploySchema.model_validate(cfg)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"max_batch_size": 0}, "max_batch_size: expected an int > 0, got 0"),
        ({"max_batch_size": 2.5}, "max_batch_size: expected an int > 0"),
        ({"max_batch_size": True}, "max_batch_size: expected an int > 0"),
        ({"batch_wait_timeout_s": -1}, r"batch_wait_timeout_s: expected seconds in \[0, 10\)"),
        ({"batch_wait_timeout_s": float("nan")}, "batch_wait_timeout_s: expected seconds"),
        ({"batch_wait_timeout_s": "1"}, "batch_wait_timeout_s: expected seconds"),
        ({"max_batch": 8}, r"user_config: expected keys among .*, got \['max_batch'\]"),
    ],
)
def test_bad_pose_user_config_is_refused(schema: Any, config: dict[str, Any], match: str) -> None:
    from darkpose.service.core.errors import InvalidParameter
    from darkpose.service.ray_app.common import parse_batch_config

    with pytest.raises(InvalidParameter, match=match):
        parse_batch_config(config)


@pytest.mark.parametrize(
    ("settings", "options", "topology", "match"),
    [
        ({}, {"Pose": {"num_replicas": 2}}, "split", r"expected names among .*, got \['Pose'\]"),
        ({}, {"PoseModel": {}}, "pipeline", r"expected names among \['Ingress'\] .*PoseModel"),
        ({}, {}, "tensors", r"topology: expected one of \['pipeline', 'split'\], got 'tensors'"),
        ({"pose_models": []}, {}, "pipeline", None),
        ({"max_batch": 0}, {}, "pipeline", None),
    ],
)
def test_build_app_validates_before_deploying(
    schema: Any, settings: dict[str, Any], options: dict[str, Any], topology: str, match: str | None
) -> None:
    from pydantic import ValidationError

    from darkpose.service.core.errors import DarkPoseError
    from darkpose.service.ray_app.builder import build_app

    with pytest.raises((DarkPoseError, ValidationError), match=match):
        build_app(settings, options, topology=topology)


@pytest.mark.parametrize("address", ["9100", "host:", ":9100", "h:0", "h:70000", "h:x"])
def test_bad_metrics_address_is_refused(schema: Any, address: str) -> None:
    from darkpose.service.core.errors import InvalidParameter
    from darkpose.service.ray_app.builder import build_app

    with pytest.raises(InvalidParameter, match="metrics_address: expected 'host:port'"):
        build_app({}, metrics_address=address)


def test_build_app_binds_each_topology(schema: Any) -> None:
    from darkpose.service.ray_app.builder import build_app

    pipeline = build_app({}, {"Ingress": {"num_replicas": 3}}, measure_bytes=True)
    ingress = pipeline._bound_deployment
    assert ingress.name == "Ingress" and ingress.num_replicas == 3
    settings, metrics, measure = ingress.init_args
    assert settings == {} and metrics is None and measure is True  # no other deployment

    split = build_app(
        {"pose_models": ["a.onnx", "b.onnx"]}, {"PoseModel": {"num_replicas": 2}}, topology="split"
    )
    ingress = split._bound_deployment
    pose, settings, _, measure = ingress.init_args
    assert ingress.name == "Ingress" and measure is False
    assert pose._bound_deployment.name == "PoseModel"  # one pool hosts the whole ensemble
    assert pose._bound_deployment.num_replicas == 2
    assert settings["pose_models"] == ["a.onnx", "b.onnx"]
