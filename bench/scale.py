"""Scale-out: the single-process service vs the Ray Serve application, same total CPUs.

Phases (``--cpus N`` CPUs in every one):

* ``single`` — ``darkpose serve`` (uvicorn subprocess on 127.0.0.1, in-process micro-batching
  with N batcher threads), pinned to N cores when the machine has more.
* ``ray1`` — a real local Ray cluster of 1 node with N CPUs (service/ray_app/local_cluster).
* ``ray2`` — 2 local nodes with N/2 CPUs each.

Each Ray phase runs once per ``--ingress`` entry, each on a fresh cluster:

* ``haproxy`` (default, as deploy/serve_config*.yaml and the KubeRay manifest) — Ray's HAProxy
  ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``): HAProxy on each node forwards HTTP straight to the
  replicas' own HTTP servers;
* ``python`` — Serve's Python proxy actor (HTTP → Ray RPC → replica).

In each Ray cluster every ``--topologies`` entry is deployed in turn:

* ``pipeline`` (default topology) — one 1-CPU ``Ingress`` replica per CPU, each running the
  whole pipeline (its own detector, micro-batcher and decoding);
* ``split`` — per node one ``Ingress`` (detector + uint8 crops) and one ``PoseModel`` replica
  (pose + decoding), half the node's CPUs each.

Per measurement: ``--clients`` keep-alive clients POST coco-mini images for ``--duration`` s
after ``--warmup`` s (images/s, p50/p99, errors), then ``--seq-requests`` requests from one
client (unloaded median latency).  Ray's unloaded overhead is paired: once a Ray app's load is
measured, a single process starts beside it and one client sends each image to both in turn
(``--seq-requests`` pairs, which one goes first alternating); the overhead is the median of
the per-pair differences, so the neighbours' load, which drifts over the minutes between
phases, cancels (the difference of the phases' own unloaded medians is shown as "unpaired").
The Ray apps run with ``measure_bytes``: each ``Ingress``
replica counts the pickled size of every message crossing the proxy → replica hop (the
request's scope and body messages in, the response messages out) and, in ``split``, the
``PoseJob``/``PoseAnswer`` of every pose call; they are printed per image next to the mean
encoded image and JSON answer sizes.  CPU per image: per process, by role, minus what each
role burns at rest (``--idle`` s windows, repeated until the cluster has settled); Ray's spare
workers (``ray::IDLE``, no request) are shown but not counted.  The CPU-bound ratio (single's
CPU per image ÷ all Ray processes') is what the throughput ratio becomes on N otherwise idle
cores; on shared, loaded vCPUs Ray's many processes get a larger share of the machine than the
single process, so compare CPU-bound ratios there.

Noise: the single process is measured before, between and after the Ray clusters (never
while one is up) and each Ray run is compared with the mean of the single-process runs
around it; ``--repeat R`` repeats the whole sequence and reports the median ratio.

    python bench/scale.py                                   # 2 CPUs, 8 s per measurement
    python bench/scale.py --topologies pipeline --ingress haproxy,python --repeat 2

All local nodes share this machine's cores, so ``ray2`` shows what the distribution costs,
not what a second machine adds; compare ratios within one run, not absolute figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_line  # noqa: E402

sys.path.insert(0, str(BENCH))
# Before Ray is imported anywhere: keep every Ray address on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from load import (  # noqa: E402
    load_images,
    run_clients,
    start_server,
    stop_server,
    summarize,
    wait_ready,
)

logger = logging.getLogger("bench.scale")

#: Targets of the scale-out design (ratios measured in one run; bytes per image, default topology).
TARGETS = {
    "ray1_vs_single": 0.85,
    "ray2_vs_ray1": 0.9,
    "overhead_ms": 10.0,
    "bytes_vs_payload": 1.5,
}


#: Ray ingresses compared (the first is the shipped one, deploy/serve_config*.yaml).
INGRESSES = ("haproxy", "python")

#: As deploy/serve_config*.yaml: no per-request access log lines.
QUIET = {"logging_config": {"enable_access_log": False, "log_level": "WARNING"}}


def ray_options(topology: str, nodes: int, cpus_per_node: float) -> dict[str, dict[str, Any]]:
    """Deployment options filling ``nodes`` × ``cpus_per_node`` CPUs exactly."""
    if topology == "pipeline":
        per_node = max(1, int(cpus_per_node))
        return {
            "Ingress": {
                "num_replicas": nodes * per_node,
                "max_replicas_per_node": per_node,
                "ray_actor_options": {"num_cpus": cpus_per_node / per_node},
                **QUIET,
            }
        }
    half = cpus_per_node / 2.0
    return {
        "Ingress": {
            "num_replicas": nodes,
            "max_replicas_per_node": 1,
            "ray_actor_options": {"num_cpus": half},
            **QUIET,
        },
        "PoseModel": {
            "num_replicas": nodes,
            "max_replicas_per_node": 1,
            "ray_actor_options": {"num_cpus": half},
            **QUIET,
        },
    }


@contextmanager
def pinned(cores: list[int] | None) -> Iterator[None]:
    """Run the block (and the processes it starts) on ``cores`` (no-op for ``None``)."""
    if cores is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def load(port: int, images: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    results: list[dict[str, Any]] = [{} for _ in range(clients)]
    t0 = time.perf_counter()
    run_clients(port, images, t0 + seconds, results)
    return summarize(results, time.perf_counter() - t0)


def _post_ms(conn: http.client.HTTPConnection, body: bytes) -> float | None:
    """Latency (ms) of one ``POST /pose`` on ``conn``; ``None`` unless it answered 200."""
    t0 = time.perf_counter()
    conn.request("POST", "/pose", body=body, headers={"Content-Type": "image/jpeg"})
    r = conn.getresponse()
    r.read()
    return (time.perf_counter() - t0) * 1000 if r.status == 200 else None


def sequential(port: int, images: list[bytes], n: int) -> float:
    """Median latency (ms) of ``n`` requests from one keep-alive client, nothing else running."""
    lat: list[float] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for k in range(n):
            ms = _post_ms(conn, images[k % len(images)])
            if ms is not None:
                lat.append(ms)
    finally:
        conn.close()
    return float(np.median(lat)) if lat else float("nan")


def paired_overhead(
    ray_port: int, single_port: int, images: list[bytes], n: int
) -> dict[str, float]:
    """Unloaded latency of the Ray app against a single process that is up (idle) at the same
    time: ``n`` pairs of one-client requests, the same image to both, which goes first
    alternating; the overhead is the median of the per-pair differences (Ray − single), so
    the neighbours' load, which drifts over the minutes between phases, cancels out."""
    conns = {
        name: http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for name, port in (("ray", ray_port), ("single", single_port))
    }
    lat: dict[str, list[float]] = {"ray": [], "single": []}
    diffs: list[float] = []
    try:
        for name in conns:  # one warm request each (connections, first-call caches)
            _post_ms(conns[name], images[0])
        for k in range(n):
            body = images[k % len(images)]
            order = ("ray", "single") if k % 2 == 0 else ("single", "ray")
            got = {name: _post_ms(conns[name], body) for name in order}
            ray_ms, single_ms = got["ray"], got["single"]
            if ray_ms is None or single_ms is None:
                continue
            lat["ray"].append(ray_ms)
            lat["single"].append(single_ms)
            diffs.append(ray_ms - single_ms)
    finally:
        for conn in conns.values():
            conn.close()
    nan = float("nan")
    return {
        "ray_p50_ms": float(np.median(lat["ray"])) if diffs else nan,
        "single_p50_ms": float(np.median(lat["single"])) if diffs else nan,
        "overhead_ms": float(np.median(diffs)) if diffs else nan,
        "pairs": float(len(diffs)),
    }


#: Ray's spare worker processes (no task, so no request): a 2-node cluster still starts some
#: during the first measurement (seconds of CPU each on a loaded machine); shown, but left out
#: of the CPU per image that the CPU-bound ratios compare.
IDLE_WORKERS = "idle workers (not counted)"


#: Most CPU (cores) any one process may burn in an idle window once the cluster has settled.
SETTLED_CORES = 0.2


def request_cpu_ms(per_role: dict[str, float]) -> float:
    """CPU ms per image of every role on the request path (all but :data:`IDLE_WORKERS`)."""
    return sum(v for k, v in per_role.items() if k != IDLE_WORKERS)


#: Ray process titles → role, for CPU time per image by role.
_ROLES = (
    ("ray::ProxyActor", "proxy"),
    ("ray::HAProxyManager", "proxy"),  # starts HAProxy, feeds it routes, reads its metrics
    ("ray::ServeReplica", "replicas"),
    ("ray::ServeController", "controller"),
    ("ray::IDLE", IDLE_WORKERS),
    ("/usr/sbin/haproxy", "proxy"),
    ("haproxy", "proxy"),
)


def haproxy_env(binary: str) -> dict[str, str]:
    """Ray 2.60's (experimental) HAProxy ingress: HAProxy on each node forwards HTTP straight
    to the replicas' own HTTP servers instead of Serve's Python proxy; its files go to a
    private temp directory."""
    import atexit
    import tempfile

    root = tempfile.mkdtemp(prefix="hapx", dir="/tmp")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": binary,
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{root}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{root}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": root,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{root}/server-state",
    }


def _descendants(root: int) -> set[int]:
    """Pids of every process below ``root`` (the local cluster's raylets, GCS and workers are
    started by this process; other users' Ray processes are not counted)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out: set[int] = set()
    todo = [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def cpu_by_pid(server_pid: int | None = None) -> dict[int, tuple[str, float]]:
    """(role, CPU seconds so far) of ``server_pid`` (role ``server``), or of each of this
    process's Ray processes: ``proxy`` (Serve's HTTP proxies, or HAProxy and its manager
    actors), ``replica <deployment>`` (Serve replicas), ``controller``, ``ray_other
    <executable>`` (raylets, GCS, agents, idle workers)."""
    from load import cpu_seconds

    if server_pid is not None:
        return {server_pid: ("server", cpu_seconds(server_pid))}
    out: dict[int, tuple[str, float]] = {}
    for pid in _descendants(os.getpid()):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            cpu = cpu_seconds(pid)
        except OSError:
            continue
        cmd = raw.split(b"\0")[0].decode(errors="replace")
        role = next((r for prefix, r in _ROLES if cmd.startswith(prefix)), "")
        if not role:
            words = cmd.split()
            role = "ray_other " + os.path.basename(words[0] if words else "?")[:24]
        if role == "replicas":  # "ray::ServeReplica:<app>:<deployment>"
            role = f"replica {cmd.rsplit(':', 1)[-1].split()[0]}"
        out[pid] = (role, cpu)
    return out


def cpu_between(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds spent between two :func:`cpu_by_pid` samples, by role.  Per process, so
    processes that come and go in between (HAProxy reloads start a new haproxy and retire the
    old one; Ray starts workers) neither subtract their past CPU nor hide it: a new process
    counts all of its CPU, one that exited counts none of its last moments."""
    out: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        prev = before.get(pid)
        spent = cpu - prev[1] if prev is not None and prev[0] == role else cpu
        out[role] = out.get(role, 0.0) + max(spent, 0.0)
    return out


def measure(
    port: int, images: list[bytes], args: argparse.Namespace, server_pid: int | None = None
) -> dict[str, Any]:
    load(port, images, args.clients, args.warmup)
    # CPU the processes burn with no traffic (Ray's health checks, metrics, long polls): a cost
    # per second, not per image; subtracted for the marginal CPU per image.
    # A fresh cluster is still starting processes (a second node's proxy, spare workers):
    # idle windows repeat until one sees the same processes at its start and end, none of them
    # busier than SETTLED_CORES (at most 10 windows; then the last one counts).
    for _ in range(10):
        idle0 = cpu_by_pid(server_pid)
        time.sleep(args.idle)
        cpu0 = cpu_by_pid(server_pid)
        busy = max((c - idle0[pid][1] for pid, (_, c) in cpu0.items() if pid in idle0), default=0.0)
        if set(idle0) == set(cpu0) and busy / max(args.idle, 1e-9) < SETTLED_CORES:
            break
    idle = {k: v / max(args.idle, 1e-9) for k, v in cpu_between(idle0, cpu0).items()}
    t0 = time.perf_counter()
    res = load(port, images, args.clients, args.duration)
    elapsed = time.perf_counter() - t0
    spent = cpu_between(cpu0, cpu_by_pid(server_pid))
    n = max(res["ok"], 1)
    res["cpu_ms_per_image"] = {k: 1000.0 * v / n for k, v in spent.items()}
    res["idle_cpu_cores"] = idle
    res["marginal_cpu_ms_per_image"] = {
        k: 1000.0 * (v - idle.get(k, 0.0) * elapsed) / n for k, v in spent.items()
    }
    res["seq_p50_ms"] = sequential(port, images, args.seq_requests)
    return res


def boundary_bytes() -> dict[str, float]:
    """Bytes per image crossing each hop, summed over the ``Ingress`` replicas' counters."""
    from ray import serve

    from darkpose.service.ray_app import APP_NAME, INGRESS_NAME

    got = serve.get_deployment_handle(INGRESS_NAME, APP_NAME).broadcast("stats").results()
    stats = list(got.values()) if isinstance(got, dict) else list(got)
    totals: dict[str, dict[str, int]] = {}
    for s in stats:
        for hop, counts in s["bytes"].items():
            t = totals.setdefault(hop, {})
            for k, v in counts.items():
                t[k] = t.get(k, 0) + v
    proxy = totals.get("proxy", {})
    images = max(proxy.get("calls", 0), 1)
    out = {
        "images": float(proxy.get("calls", 0)),
        "image_bytes": proxy.get("image", 0) / images,
        "json_bytes": proxy.get("answer", 0) / images,
        "proxy_bytes": (proxy.get("received", 0) + proxy.get("sent", 0)) / images,
    }
    pose = totals.get("pose")
    if pose:
        out["pose_bytes"] = (pose.get("sent", 0) + pose.get("received", 0)) / images
        out["crops_per_image"] = pose.get("crops", 0) / images
    out["crossing_bytes"] = out["proxy_bytes"] + out.get("pose_bytes", 0.0)
    out["crossing_vs_payload"] = out["crossing_bytes"] / max(
        out["image_bytes"] + out["json_bytes"], 1.0
    )
    return out


def start_single(args: argparse.Namespace, cores: list[int] | None) -> Any:
    """``darkpose serve`` as the ``single`` phase runs it: (process, port)."""
    os.environ["DARKPOSE_BATCH_WORKERS"] = str(args.cpus)
    with pinned(cores):
        return start_server(True, args.threads)


def run_single(images: list[bytes], args: argparse.Namespace, cores: list[int] | None) -> Any:
    proc, port = start_single(args, cores)
    try:
        return measure(port, images, args, proc.pid)
    finally:
        stop_server(proc)


def run_ray(
    nodes: int,
    images: list[bytes],
    args: argparse.Namespace,
    cores: list[int] | None,
    env: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    from ray import serve

    from darkpose.service.ray_app import APP_NAME
    from darkpose.service.ray_app.builder import build_app
    from darkpose.service.ray_app.local_cluster import local_ray_cluster

    cpus_per_node = args.cpus // nodes
    settings: dict[str, Any] = {"providers": "cpu", "log_level": "warning"}
    if args.threads > 0:
        settings["intra_op_threads"] = args.threads
    out: dict[str, dict[str, Any]] = {}
    with pinned(cores):
        cluster = local_ray_cluster(num_nodes=nodes, cpus_per_node=cpus_per_node, env=env)
        lr = cluster.__enter__()
    try:
        for topology in args.topologies:
            t0 = time.perf_counter()
            app = build_app(
                settings,
                ray_options(topology, nodes, cpus_per_node),
                topology=topology,
                measure_bytes=True,
            )
            serve.run(app, name=APP_NAME, route_prefix="/")
            wait_ready(lr.port, 180.0)
            res = measure(lr.port, images, args)
            res["startup_s"] = time.perf_counter() - t0
            res["bytes"] = boundary_bytes()
            # The reference process starts once the load is measured (its CPU is not Ray's).
            proc, single_port = start_single(args, cores)
            try:
                res["paired"] = paired_overhead(lr.port, single_port, images, args.seq_requests)
            finally:
                stop_server(proc)
            out[topology] = res
            serve.delete(APP_NAME)
    finally:
        cluster.__exit__(None, None, None)
    return out


def line(name: str, r: dict[str, Any]) -> str:
    errors = sum(r["errors"].values())
    text = (
        f"  {name:15s} {r['images_per_s']:7.2f} img/s  p50 {r['p50_ms']:7.1f} ms  "
        f"p99 {r['p99_ms']:7.1f} ms  errors {errors}  unloaded p50 {r['seq_p50_ms']:6.1f} ms"
    )
    pair = r.get("paired")
    if pair:
        text += (
            f"\n  {'':15s} unloaded, paired with a single process up at the same time "
            f"({pair['pairs']:.0f} pairs): p50 {pair['ray_p50_ms']:.1f} vs "
            f"{pair['single_p50_ms']:.1f} ms, overhead (median of differences) "
            f"{pair['overhead_ms']:+.1f} ms"
        )
    cpu = r.get("cpu_ms_per_image")
    if cpu:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items()))
        text += f"\n  {'':15s} CPU ms/image {request_cpu_ms(cpu):.1f}: {parts}"
        marginal = r.get("marginal_cpu_ms_per_image", {})
        idle = sum(r.get("idle_cpu_cores", {}).values())
        text += f"; minus idle ({idle:.2f} cores) {request_cpu_ms(marginal):.1f}"
    b = r.get("bytes")
    if b:
        text += (
            f"\n  {'':15s} bytes/image: image {b['image_bytes'] / 1e3:.1f} kB + JSON "
            f"{b['json_bytes'] / 1e3:.1f} kB; crossing {b['crossing_bytes'] / 1e3:.1f} kB "
            f"(proxy hop {b['proxy_bytes'] / 1e3:.1f} kB"
            + (
                f", pose hop {b['pose_bytes'] / 1e3:.1f} kB for {b['crops_per_image']:.2f} crops"
                if "pose_bytes" in b
                else ""
            )
            + f") = x{b['crossing_vs_payload']:.3f} of image + JSON"
        )
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpus", type=int, default=min(2, os.cpu_count() or 1), help="N (even)")
    ap.add_argument("--phases", default="single,ray1,ray2", help="comma list of single,ray1,ray2")
    ap.add_argument("--topologies", default="pipeline,split", help="Ray topologies to deploy")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds of measured load")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of load before")
    ap.add_argument("--seq-requests", type=int, default=30, help="unloaded-latency requests")
    ap.add_argument("--images", type=int, default=16, help="coco-mini images cycled")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--repeat", type=int, default=1, help="repeat the whole sequence")
    ap.add_argument("--idle", type=float, default=3.0, help="seconds of idle CPU measured")
    ap.add_argument("--json", type=Path, default=None, help="write every result here")
    ap.add_argument(
        "--ingress",
        default="haproxy",
        help="comma list of Ray ingresses, each on its own cluster: haproxy (shipped), python",
    )
    ap.add_argument(
        "--haproxy",
        default=shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin"),
        metavar="BINARY",
        help="the haproxy executable of the haproxy ingress (default: found on PATH or /usr/sbin)",
    )
    ap.add_argument(
        "--ray-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment of the Ray processes (repeatable), e.g. RAY_SERVE_* tuning flags",
    )
    args = ap.parse_args()
    for name, v in (("duration", args.duration), ("warmup", args.warmup)):
        if not 0 <= v <= 600:
            ap.error(f"--{name}: expected seconds in [0, 600], got {v}")
    if not 1 <= args.clients <= 256:
        ap.error(f"--clients: expected 1..256, got {args.clients}")
    if not 1 <= args.seq_requests <= 1000:
        ap.error(f"--seq-requests: expected 1..1000, got {args.seq_requests}")
    if args.cpus < 2 or args.cpus % 2:
        ap.error(f"--cpus: expected an even number >= 2 (ray2 halves it), got {args.cpus}")
    if not 1 <= args.repeat <= 10:
        ap.error(f"--repeat: expected 1..10, got {args.repeat}")
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not phases or set(phases) - {"single", "ray1", "ray2"}:
        ap.error(f"--phases: expected a comma list of single,ray1,ray2, got {args.phases!r}")
    args.topologies = [t.strip() for t in args.topologies.split(",") if t.strip()]
    if not args.topologies or set(args.topologies) - {"pipeline", "split"}:
        ap.error(f"--topologies: expected pipeline and/or split, got {args.topologies!r}")
    for item in args.ray_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            ap.error(f"--ray-env: expected NAME=VALUE, got {item!r}")
        os.environ[name] = value  # before Ray starts: every Ray process inherits it
    ingresses = [i.strip() for i in args.ingress.split(",") if i.strip()]
    if not ingresses or set(ingresses) - set(INGRESSES):
        ap.error(f"--ingress: expected a comma list of {','.join(INGRESSES)}, got {args.ingress!r}")
    if "haproxy" in ingresses and not args.haproxy:
        ap.error("--haproxy: expected the haproxy executable (Debian package haproxy), got none")
    logging.basicConfig(level=logging.WARNING)

    ncores = os.cpu_count() or 1
    server_cores = list(range(args.cpus)) if ncores > args.cpus else None
    images = load_images(args.images)
    print(f"# CPU: {cpu_line()}")
    print(
        f"{args.clients} clients, {args.duration:g} s per measurement (+{args.warmup:g} s "
        f"warm-up), {len(images)} images, N = {args.cpus} CPUs per phase on a {ncores}-core "
        f"machine{' (servers pinned to cores 0..N-1)' if server_cores else ''}, onnxruntime "
        f"threads {args.threads}, repeat {args.repeat}",
        flush=True,
    )
    ray_phases = [p for p in phases if p != "single"]
    #: One fresh cluster per (phase, ingress); the single process runs before, between, after.
    ray_runs = [(phase, ingress) for phase in ray_phases for ingress in ingresses]
    rounds: list[dict[str, Any]] = []
    for r in range(args.repeat):
        rnd: dict[str, Any] = {"single": []}
        if "single" in phases:
            rnd["single"].append(run_single(images, args, server_cores))
            print(line(f"single#{r}.0", rnd["single"][-1]), flush=True)
        for k, (phase, ingress) in enumerate(ray_runs):
            env = haproxy_env(args.haproxy) if ingress == "haproxy" else None
            res = run_ray(1 if phase == "ray1" else 2, images, args, server_cores, env)
            for topology, v in res.items():
                rnd[f"{phase}@{ingress}/{topology}"] = v
                print(line(f"{phase}@{ingress}/{topology}", v), flush=True)
            if "single" in phases:
                rnd["single"].append(run_single(images, args, server_cores))
                print(line(f"single#{r}.{k + 1}", rnd["single"][-1]), flush=True)
        rounds.append(rnd)

    def around(rnd: dict[str, Any], run: tuple[str, str]) -> dict[str, float]:
        """Mean of the single-process runs just before and after the Ray ``run``."""
        i = ray_runs.index(run)
        pair = rnd["single"][i : i + 2]
        out = {k: statistics.fmean(s[k] for s in pair) for k in ("images_per_s", "seq_p50_ms")}
        out["cpu_ms"] = statistics.fmean(s["marginal_cpu_ms_per_image"]["server"] for s in pair)
        return out

    ratios: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        ratios.setdefault(key, []).append(value)

    for rnd in rounds:
        for phase, ingress in ray_runs:
            for topology in args.topologies:
                key = f"{phase}@{ingress}/{topology}"
                r = rnd[key]
                if rnd["single"]:
                    base = around(rnd, (phase, ingress))
                    add(f"{key} vs single", r["images_per_s"] / base["images_per_s"])
                    add(f"{key} overhead ms (unpaired)", r["seq_p50_ms"] - base["seq_p50_ms"])
                    # What the throughput ratio is on N otherwise idle cores, where CPU time
                    # per image decides: single's marginal CPU per image / all Ray processes'.
                    ray_cpu = request_cpu_ms(r["marginal_cpu_ms_per_image"])
                    add(f"{key} cpu-bound vs single", base["cpu_ms"] / ray_cpu)
                add(f"{key} overhead ms", r["paired"]["overhead_ms"])
                add(f"{key} bytes vs payload", r["bytes"]["crossing_vs_payload"])
        if "ray1" in ray_phases and "ray2" in ray_phases:
            for ingress in ingresses:
                for topology in args.topologies:
                    r1 = rnd[f"ray1@{ingress}/{topology}"]
                    r2 = rnd[f"ray2@{ingress}/{topology}"]
                    key = f"ray2@{ingress}/{topology}"
                    add(f"{key} vs ray1", r2["images_per_s"] / r1["images_per_s"])
                    add(
                        f"{key} cpu-bound vs ray1",
                        request_cpu_ms(r1["marginal_cpu_ms_per_image"])
                        / request_cpu_ms(r2["marginal_cpu_ms_per_image"]),
                    )
    print("medians over the repeats (same machine, same run):")
    for key, values in ratios.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {key:42s} {statistics.median(values):7.2f}   [{shown}]")

    med = {k: statistics.median(v) for k, v in ratios.items()}
    for ingress in ingresses:
        wanted = [  # (ratio key, label, target, at least?) of the default topology
            (
                f"ray1@{ingress}/pipeline vs single",
                "ray1 >= {t:g}x single",
                TARGETS["ray1_vs_single"],
                True,
            ),
            (
                f"ray1@{ingress}/pipeline cpu-bound vs single",
                "ray1 >= {t:g}x single (CPU-bound)",
                TARGETS["ray1_vs_single"],
                True,
            ),
            (
                f"ray2@{ingress}/pipeline vs ray1",
                "ray2 >= {t:g}x ray1",
                TARGETS["ray2_vs_ray1"],
                True,
            ),
            (
                f"ray2@{ingress}/pipeline cpu-bound vs ray1",
                "ray2 >= {t:g}x ray1 (CPU-bound)",
                TARGETS["ray2_vs_ray1"],
                True,
            ),
        ]
        for phase in ray_phases:
            wanted += [
                (
                    f"{phase}@{ingress}/pipeline overhead ms",
                    f"{phase} overhead <= {{t:g}} ms",
                    TARGETS["overhead_ms"],
                    False,
                ),
                (
                    f"{phase}@{ingress}/pipeline bytes vs payload",
                    f"{phase} bytes <= {{t:g}}x payload",
                    TARGETS["bytes_vs_payload"],
                    False,
                ),
            ]
        checks = [
            (label.format(t=target), med[key], target, at_least)
            for key, label, target, at_least in wanted
            if key in med
        ]
        if checks:
            print(f"targets (default topology 'pipeline', ingress {ingress}):")
        for name, value, target, at_least in checks:
            ok = value >= target if at_least else value <= target
            print(f"  {'PASS' if ok else 'MISS'}  {name:32s} measured {value:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"rounds": rounds, "ratios": ratios}, indent=1))
    errors = sum(
        sum(v["errors"].values()) for rnd in rounds for key, v in rnd.items() if key != "single"
    ) + sum(sum(s["errors"].values()) for rnd in rounds for s in rnd["single"])
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
