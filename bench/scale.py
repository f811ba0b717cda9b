"""Scale-out: the single-process service vs the Ray Serve application (1 and 2 local nodes).

Every phase gets the same load and is measured in this one run:

1. ``single``: ``darkpose serve`` (uvicorn subprocess on 127.0.0.1, in-process micro-batching).
2. ``ray1`` / ``ray2``: a real local Ray cluster of 1 or 2 nodes (service/ray_app/local_cluster,
   everything on 127.0.0.1) running ``service.ray_app.builder.build_app`` — one ``Detector`` and
   one ``PoseModel`` replica per node (``@serve.batch``), one ``Ingress``, Serve's proxy on the
   head.

Per phase: ``--clients`` concurrent keep-alive clients POST coco-mini images for ``--duration``
seconds after ``--warmup`` seconds (throughput, p50/p99, errors), then ``--seq-requests``
requests from one client (unloaded latency).  The per-request overhead Ray adds is the
difference of the unloaded median latencies (ray − single): two extra hops (proxy → Ingress →
Detector/PoseModel) plus (de)serialisation of the image and the crops/heatmaps.

    python bench/scale.py                               # 16 clients, 15 s per phase
    python bench/scale.py --duration 5 --phases single,ray2

All nodes of the local cluster share this machine's cores, so ``ray2`` shows the cost of the
distribution, not the gain of a second machine; compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))
# Before Ray is imported anywhere: keep every Ray address on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from load import get, load_images, run_clients, start_server, stop_server  # noqa: E402


def ray_options(nodes: int, cpus_per_node: float) -> dict[str, dict[str, Any]]:
    """One Detector and one PoseModel replica per node, one Ingress: fits ``cpus_per_node``."""
    share = cpus_per_node / 3.0
    return {
        "Ingress": {"num_replicas": 1, "ray_actor_options": {"num_cpus": share}},
        "Detector": {
            "num_replicas": nodes,
            "max_replicas_per_node": 1,
            "ray_actor_options": {"num_cpus": share},
        },
        "PoseModel": {
            "num_replicas": nodes,
            "max_replicas_per_node": 1,
            "ray_actor_options": {"num_cpus": share},
        },
    }


@contextmanager
def single_process(threads: int) -> Iterator[int]:
    proc, port = start_server(True, threads)
    try:
        yield port
    finally:
        stop_server(proc)


@contextmanager
def ray_app(nodes: int, cpus_per_node: int, threads: int) -> Iterator[int]:
    from ray import serve

    from service.ray_app import APP_NAME
    from service.ray_app.builder import build_app
    from service.ray_app.local_cluster import local_ray_cluster

    settings: dict[str, Any] = {"providers": "cpu", "log_level": "warning"}
    if threads > 0:
        settings["intra_op_threads"] = threads
    with local_ray_cluster(num_nodes=nodes, cpus_per_node=cpus_per_node) as lr:
        serve.run(
            build_app(settings, ray_options(nodes, cpus_per_node)),
            name=APP_NAME,
            route_prefix="/",
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if get(lr.port, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.25)
        else:
            raise SystemExit("Ray application not ready within 120 s")
        yield lr.port


def load(port: int, images: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    results: list[dict[str, Any]] = [{} for _ in range(clients)]
    t0 = time.perf_counter()
    stop = t0 + seconds
    run_clients(port, images, stop, results)
    elapsed = time.perf_counter() - t0
    lat = np.array([x for r in results for x in r["lat"]], np.float64)
    errors = sum(sum(r["errors"].values()) for r in results)
    return {
        "ok": int(lat.size),
        "images_per_s": lat.size / elapsed,
        "p50_ms": float(np.percentile(lat, 50) * 1000) if lat.size else float("nan"),
        "p99_ms": float(np.percentile(lat, 99) * 1000) if lat.size else float("nan"),
        "errors": errors,
    }


def sequential(port: int, images: list[bytes], n: int) -> float:
    """Median latency (ms) of ``n`` requests from one keep-alive client, nothing else running."""
    lat: list[float] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for k in range(n):
            t0 = time.perf_counter()
            data = images[k % len(images)]
            conn.request("POST", "/pose", body=data, headers={"Content-Type": "image/jpeg"})
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                lat.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return float(np.median(lat) * 1000) if lat else float("nan")


def run_phase(
    name: str,
    server: Callable[[], Any],
    images: list[bytes],
    args: argparse.Namespace,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    with server() as port:
        started = time.perf_counter() - t0
        load(port, images, args.clients, args.warmup)
        res = load(port, images, args.clients, args.duration)
        res["seq_p50_ms"] = sequential(port, images, args.seq_requests)
    res["phase"] = name
    res["startup_s"] = started
    print(
        f"  {name:7s} {res['images_per_s']:7.2f} img/s  p50 {res['p50_ms']:7.1f} ms  "
        f"p99 {res['p99_ms']:7.1f} ms  errors {res['errors']}  "
        f"unloaded p50 {res['seq_p50_ms']:6.1f} ms  startup {started:5.1f} s",
        flush=True,
    )
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phases", default="single,ray1,ray2", help="comma list of single,ray1,ray2")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of measured load")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before")
    ap.add_argument("--seq-requests", type=int, default=30, help="unloaded-latency requests")
    ap.add_argument("--images", type=int, default=16, help="coco-mini images cycled")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--cpus-per-node", type=int, default=1, help="logical CPUs per Ray node")
    args = ap.parse_args()
    for name, v in (("duration", args.duration), ("warmup", args.warmup)):
        if not 0 <= v <= 600:
            ap.error(f"--{name}: expected seconds in [0, 600], got {v}")
    if not 1 <= args.clients <= 256:
        ap.error(f"--clients: expected 1..256, got {args.clients}")
    if not 1 <= args.seq_requests <= 1000:
        ap.error(f"--seq-requests: expected 1..1000, got {args.seq_requests}")
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    known = {"single", "ray1", "ray2"}
    if not phases or set(phases) - known:
        ap.error(f"--phases: expected a comma list of {sorted(known)}, got {args.phases!r}")

    images = load_images(args.images)
    print(
        f"{args.clients} clients, {args.duration:g} s per phase (+{args.warmup:g} s warm-up), "
        f"{len(images)} images, {os.cpu_count()} cores, onnxruntime threads {args.threads}"
    )
    servers: dict[str, Callable[[], Any]] = {
        "single": lambda: single_process(args.threads),
        "ray1": lambda: ray_app(1, args.cpus_per_node, args.threads),
        "ray2": lambda: ray_app(2, args.cpus_per_node, args.threads),
    }
    results = {p: run_phase(p, servers[p], images, args) for p in phases}

    if "single" in results:
        base = results["single"]
        print("ratios to the single-process service (same load, this run):")
        for p, r in results.items():
            if p == "single":
                continue
            print(
                f"  {p}: throughput x{r['images_per_s'] / base['images_per_s']:.2f}, "
                f"p50 x{r['p50_ms'] / base['p50_ms']:.2f}, "
                f"overhead per request {r['seq_p50_ms'] - base['seq_p50_ms']:+.1f} ms "
                f"(unloaded p50 {r['seq_p50_ms']:.1f} vs {base['seq_p50_ms']:.1f} ms)"
            )
    if "ray1" in results and "ray2" in results:
        r1, r2 = results["ray1"], results["ray2"]
        print(f"  ray2 / ray1 throughput x{r2['images_per_s'] / r1['images_per_s']:.2f}")
    return 0 if all(r["errors"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
