"""A real local multi-node Ray cluster on this machine, for tests and bench/scale.py.

Ray writes an auth token under ``~/.ray`` and its session state under its temp dir, so both
point into a fresh short directory under /tmp (Unix socket paths must stay < 108 bytes), and
everything is shut down and removed at the end.  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
keeps every address on 127.0.0.1 (otherwise Ray swaps loopback for the host's interface
address).  Serve's HTTP proxies listen on a free 127.0.0.1 port: by default one per node
(``EveryNode``, as in production), all on the same port — Ray binds it with ``SO_REUSEPORT``,
so the kernel spreads connections over the nodes' proxies like a load balancer in front of a
cluster would, and each proxy prefers its own node's replicas.  With Ray's HAProxy ingress
(``RAY_SERVE_ENABLE_HA_PROXY=1`` in ``env``) each node's HAProxy shares that port the same way,
and the ports Ray otherwise binds at one fixed number per node (:data:`PER_NODE_PORTS`) are
free ports of each node's own: on one machine a second node's HAProxy would fail to bind them,
and Serve would restart that node's proxy every few seconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    # Each replica process would otherwise start one onnxruntime/OpenMP thread per core.
    "OMP_NUM_THREADS": "1",
    # As docker/Dockerfile.ray and the KubeRay pods: encoded images (~150 kB, above Ray's
    # 100 kB default) ride inline in the proxy ↔ replica RPCs instead of the object store.
    "RAY_max_direct_call_object_size": str(1024 * 1024),
}


#: Ports Ray 2.60 binds at a fixed default on every node (HAProxy's stats page and metrics,
#: the fallback Python proxy's HTTP and gRPC): each local node gets free ones of its own.
PER_NODE_PORTS = (
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
)

#: HAProxy ingress: every node's HAProxy binds Serve's one HTTP port with SO_REUSEPORT
#: (Ray's default for its Python proxies, not for HAProxy).
SHARED_PORT_ENV = {"SERVE_SOCKET_REUSE_PORT_ENABLED": "1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalRay:
    """A running local cluster with Serve started (HTTP on 127.0.0.1:``port``)."""

    cluster: Any
    port: int
    node_ids: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def local_ray_cluster(
    num_nodes: int = 2,
    cpus_per_node: int = 1,
    object_store_mb: int = 150,
    proxy_location: str = "EveryNode",
    env: Mapping[str, str] | None = None,
) -> Iterator[LocalRay]:
    """``num_nodes`` × ``cpus_per_node`` Ray nodes on this machine (``object_store_mb`` MiB of
    object store each), Serve on a free port with a proxy on every node (``"EveryNode"``) or
    on the head only (``"HeadOnly"``); ``env``: more environment for every Ray process (e.g.
    ``RAY_SERVE_ENABLE_HA_PROXY``), restored afterwards."""
    import ray
    from ray import serve
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    root = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {
        **RAY_ENV,
        **SHARED_PORT_ENV,
        "HOME": root,
        "RAY_TMPDIR": os.path.join(root, "t"),
        **dict(env or {}),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # Read once at import: when Ray was imported before this call, the env var alone is late.
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray_dir = os.path.join(env["RAY_TMPDIR"], "ray")  # Ray's layout: $RAY_TMPDIR/ray/session_*
    os.makedirs(ray_dir, exist_ok=True)
    cluster = None
    taken: set[int] = set()

    def node_env() -> dict[str, str]:
        """Free ports of the node's own for :data:`PER_NODE_PORTS` (unless ``env`` sets them)."""
        out: dict[str, str] = {}
        for name in PER_NODE_PORTS:
            if name in env:
                continue
            port = free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            out[name] = str(port)
        return out

    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": cpus_per_node,
                "object_store_memory": object_store_mb * 1024 * 1024,
                "include_dashboard": False,
                "temp_dir": ray_dir,
                "node_ip_address": "127.0.0.1",
                "env_vars": node_env(),
            },
        )
        for _ in range(num_nodes - 1):
            cluster.add_node(
                num_cpus=cpus_per_node,
                object_store_memory=object_store_mb * 1024 * 1024,
                node_ip_address="127.0.0.1",
                env_vars=node_env(),
            )
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, include_dashboard=False)
        port = free_port()
        serve.start(proxy_location=proxy_location, http_options={"host": "127.0.0.1", "port": port})
        node_ids = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        yield LocalRay(cluster=cluster, port=port, node_ids=node_ids)
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        with contextlib.suppress(Exception):
            ray.shutdown()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        time.sleep(0.2)
        shutil.rmtree(root, ignore_errors=True)
