"""Load test of the HTTP service against the models' own ceiling.

1. Ceiling: the same images through the detector and pose ONNX sessions back to back in this
   process (no HTTP, no JSON; crops prepared outside the timed region) → images/s, run by one
   thread, by one thread per usable core (independent single-thread pipelines: the ceiling
   the served images/s are held to, target ≥ 0.85) and by one thread per client (the CPU share
   a many-threaded process gets on a contended machine).
2. For batching on and off: start ``darkpose serve`` (uvicorn subprocess on 127.0.0.1), warm
   it, then ``--clients`` concurrent keep-alive clients POST images for ``--duration`` seconds.
   Prints throughput (images/s and the ratio to the ceiling, served/ceiling), the cores the
   server kept busy (its process CPU time / wall time, and that over the machine's cores),
   p50/p99 latency, the error count, the server's RSS growth and the mean pose batch size
   (from /metrics).

    python bench/load.py                      # 16 clients, 60 s per mode
    python bench/load.py --duration 15 --modes on

All numbers are measured in one run on this machine; compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_line, usable_cores  # noqa: E402
from darkpose.service.settings import Settings  # noqa: E402

IMAGES = REPO.parent / "shared" / "data" / "coco-mini" / "train2017"


def load_images(n: int) -> list[bytes]:
    paths = sorted(IMAGES.glob("*.jpg"))[:n]
    if not paths:
        raise SystemExit(f"expected images in {IMAGES}, got none")
    return [p.read_bytes() for p in paths]


def _threads_env(threads: int) -> dict[str, str]:
    return {"DARKPOSE_INTRA_OP_THREADS": str(threads)} if threads > 0 else {}


class Ceiling:
    """The models' own throughput: detector + pose sessions back to back, no HTTP, no JSON,
    crops prepared once outside the timed region (the crops the service runs: one per
    person and padding, twice with the flip test)."""

    def __init__(self, images: list[bytes], threads: int) -> None:
        from darkpose.service.core.io import decode_image
        from darkpose.service.core.pipeline import crop_geometry
        from darkpose.service.core.pose_stage import ModelPose, preprocess_key
        from darkpose.service.runtime.factory import build_detector, build_pose_models

        s = Settings(providers="cpu", intra_op_threads=threads)  # type: ignore[call-arg]
        self.detector = build_detector(s)
        self.pose = build_pose_models(s)[0]
        self.decoded = [decode_image(b) for b in images]
        stage, key = ModelPose(self.pose), preprocess_key(self.pose.spec)
        self.crops = []
        for img in self.decoded:
            det = self.detector.detect(img)
            keep = np.asarray(det.scores) >= s.pipeline.det_score_threshold
            boxes = np.asarray(det.boxes, np.float32)[keep][: s.pipeline.max_persons]
            # the network input the server's pose stage makes: each padding, mirrored with flip
            c, sc = crop_geometry(boxes, self.pose.spec.aspect_ratio, s.pipeline)
            self.crops.append(stage.inputs(img, c, sc, s.pipeline.flip)[key])
        for img, batch in zip(self.decoded[:3], self.crops[:3], strict=False):  # warm-up
            self.detector.detect(img)
            self.pose.infer(batch)

    def _worker(self, stop_at: float, offset: int, out: list[int]) -> None:
        n = len(self.decoded)
        i = offset
        while time.perf_counter() < stop_at:
            self.detector.detect(self.decoded[i % n])
            self.pose.infer(self.crops[i % n])
            out[0] += 1
            out[1] += int(self.crops[i % n].shape[0])
            i += 1

    def run(self, seconds: float, workers: int = 1) -> dict[str, float]:
        """``workers`` threads each run images back to back for ``seconds``."""
        counts = [[0, 0] for _ in range(workers)]
        cpu0, t0 = time.process_time(), time.perf_counter()
        stop = t0 + seconds
        ts = [
            threading.Thread(target=self._worker, args=(stop, 7 * k, counts[k]))
            for k in range(workers)
        ]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        done = sum(c[0] for c in counts)
        return {
            "workers": workers,
            "images_per_s": done / elapsed,
            "cpu_ms_per_image": 1000 * cpu / max(done, 1),
            "images": done,
            "crops_per_image": sum(c[1] for c in counts) / max(done, 1),
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) / 1024.0 if m else float("nan")


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def start_server(
    batching: bool, threads: int, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "DARKPOSE_HOST": "127.0.0.1",
        "DARKPOSE_PORT": str(port),
        "DARKPOSE_PROVIDERS": "cpu",
        "DARKPOSE_BATCHING": "true" if batching else "false",
        "DARKPOSE_LOG_LEVEL": "warning",
        **_threads_env(threads),
        **(extra_env or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "darkpose.service.cli", "--log-level", "WARNING", "serve"],
        cwd=REPO,
        env=env,
    )
    try:
        wait_ready(port, 120.0, proc)
    except SystemExit:
        proc.kill()
        raise
    return proc, port


def wait_ready(port: int, seconds: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``GET /readyz`` on 127.0.0.1:``port`` until 200; SystemExit after ``seconds`` or
    when ``proc`` (the server, if started here) exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if get(port, "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server on port {port} not ready within {seconds:g} s")


def client_loop(
    port: int,
    images: list[bytes],
    stop_at: float,
    offset: int,
    out: dict[str, Any],
    *,
    key: str | None = None,
    backoff_429_s: float | None = None,
    timeout_s: float = 60.0,
) -> None:
    """POST images back to back on one keep-alive connection until ``stop_at``.

    ``out`` gets ``lat`` (seconds of each 200), ``errors`` (count per status or exception) and
    ``refused`` (429s).  ``key``: sent as ``Authorization: Bearer``.  ``backoff_429_s``: a 429
    is a refusal, followed by that many seconds of waiting (None: an error like any status).
    """
    lat: list[float] = []
    refused = 0
    errors: dict[str, int] = {}
    headers = {"Content-Type": "image/jpeg"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    i = offset
    while time.perf_counter() < stop_at:
        data = images[i % len(images)]
        i += 1
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/pose", body=data, headers=headers)
            r = conn.getresponse()
            r.read()
            status = r.status
        except (OSError, http.client.HTTPException) as exc:
            status = -1
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
        if status == 200:
            lat.append(time.perf_counter() - t0)
        elif status == 429 and backoff_429_s is not None:
            refused += 1
            time.sleep(backoff_429_s)
        elif status != -1:
            errors[str(status)] = errors.get(str(status), 0) + 1
    conn.close()
    out.update(lat=lat, refused=refused, errors=errors)


def metric_mean(text: str, name: str) -> float:
    s = re.search(rf"^{name}_sum ([0-9.e+-]+)$", text, re.M)
    c = re.search(rf"^{name}_count ([0-9.e+-]+)$", text, re.M)
    if not s or not c or float(c.group(1)) == 0:
        return float("nan")
    return float(s.group(1)) / float(c.group(1))


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait up to 60 s for the graceful shutdown, then kill."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_clients(port: int, images: list[bytes], stop: float, results: list[dict[str, Any]]) -> None:
    """One thread per entry of ``results`` runs :func:`client_loop` until ``stop``."""
    ts = [
        threading.Thread(target=client_loop, args=(port, images, stop, k * 7, results[k]))
        for k in range(len(results))
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def summarize(results: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    """The :func:`client_loop` outputs of one run of ``elapsed`` seconds → ``ok`` (200s),
    ``images_per_s``, ``p50_ms``, ``p99_ms`` (NaN without a 200) and ``errors`` (summed kinds)."""
    lat = np.array([x for r in results for x in r["lat"]], np.float64)
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "ok": int(lat.size),
        "images_per_s": lat.size / elapsed,
        "p50_ms": float(np.percentile(lat, 50) * 1000) if lat.size else float("nan"),
        "p99_ms": float(np.percentile(lat, 99) * 1000) if lat.size else float("nan"),
        "errors": errors,
    }


def run_mode(
    batching: bool,
    images: list[bytes],
    clients: int,
    duration: float,
    warmup: float,
    threads: int,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One server (``extra_env``: more of its environment, e.g. ``DARKPOSE_BATCH_WORKERS``)
    under ``clients`` clients for ``duration`` s after ``warmup`` s: throughput, CPU, cores
    used, latency, errors, RSS and batching figures."""
    proc, port = start_server(batching, threads, extra_env)
    try:
        warm: list[dict[str, Any]] = [{} for _ in range(clients)]
        stop = time.perf_counter() + warmup
        run_clients(port, images, stop, warm)
        rss0 = rss_mb(proc.pid)
        _, before = get(port, "/metrics")
        cpu0 = cpu_seconds(proc.pid)
        results: list[dict[str, Any]] = [{} for _ in range(clients)]
        t_start = time.perf_counter()
        stop = t_start + duration
        run_clients(port, images, stop, results)
        elapsed = time.perf_counter() - t_start
        cpu1 = cpu_seconds(proc.pid)
        rss1 = rss_mb(proc.pid)
        _, after = get(port, "/metrics")
    finally:
        stop_server(proc)
    summary = summarize(results, elapsed)
    errors = summary["errors"]
    after_text = after.decode()
    return {
        "batching": batching,
        "ok": summary["ok"],
        "images_per_s": summary["images_per_s"],
        "cpu_ms_per_image": 1000 * (cpu1 - cpu0) / max(summary["ok"], 1),
        # process CPU time / wall time: how many cores the server kept busy
        "cores_used": (cpu1 - cpu0) / elapsed,
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "rss_start_mb": rss0,
        "rss_end_mb": rss1,
        "rss_growth_mb": rss1 - rss0,
        "mean_batch_size": metric_mean(after_text, "darkpose_batch_size"),
        "mean_queue_wait_ms": 1000 * metric_mean(after_text, "darkpose_queue_wait_seconds"),
        "metrics_bytes_before": len(before),
    }


def _fmt_ceiling(tag: str, c: dict[str, float]) -> str:
    return (
        f"ceiling {tag} ({int(c['workers'])} thread(s), sessions back to back, no HTTP): "
        f"{c['images_per_s']:.2f} images/s, {c['cpu_ms_per_image']:.1f} CPU-ms/image "
        f"({int(c['images'])} images, {c['crops_per_image']:.2f} crops/image)"
    )


def add_load_arguments(
    ap: argparse.ArgumentParser, *, duration: float, per: str, warmup: float, images: int
) -> None:
    """The options of every HTTP load benchmark here: ``--duration`` (seconds ``per``
    mode/phase), ``--warmup``, ``--images`` (coco-mini images cycled), ``--threads`` and
    ``--json``, with these defaults."""
    ap.add_argument(
        "--duration", type=float, default=duration, help=f"seconds per {per} (default {duration:g})"
    )
    ap.add_argument("--warmup", type=float, default=warmup, help="seconds of load before measuring")
    ap.add_argument("--images", type=int, default=images, help="coco-mini images to cycle through")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0=auto)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_arguments(ap, duration=60.0, per="mode", warmup=3.0, images=80)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--modes", default="on,off", help="batching modes to run: on,off")
    ap.add_argument("--ceiling-seconds", type=float, default=0.0, help="default: min(duration, 20)")
    args = ap.parse_args()

    images = load_images(args.images)
    ceiling_s = args.ceiling_seconds or min(args.duration, 20.0)
    print(f"# CPU: {cpu_line()}; load average {os.getloadavg()}")
    ceiling = Ceiling(images, args.threads)
    cores = usable_cores()
    # Measured before and after the HTTP runs (their mean is used) to even out the drift of a
    # shared machine: one thread (the models back to back), one per core (independent
    # single-thread pipelines, the target's ceiling) and one per client.
    workers = sorted({1, cores, args.clients})

    def ceilings(tag: str) -> list[dict[str, float]]:
        out = [ceiling.run(ceiling_s, w) for w in workers]
        for c in out:
            print(_fmt_ceiling(tag, c))
        return out

    runs = ceilings("before")
    rows = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        res = run_mode(mode == "on", images, args.clients, args.duration, args.warmup, args.threads)
        rows.append(res)
        print(
            f"batching {mode:>3}: {res['images_per_s']:.2f} images/s, "
            f"{res['cpu_ms_per_image']:.1f} server CPU-ms/image, "
            f"{res['cores_used']:.2f} of {cores} cores used "
            f"({res['cores_used'] / cores:.2f}) [target >= 0.85] | "
            f"p50 {res['p50_ms']:.0f} ms p99 {res['p99_ms']:.0f} ms | "
            f"errors {res['errors']} {res['error_kinds'] or ''}| "
            f"RSS {res['rss_start_mb']:.0f} -> {res['rss_end_mb']:.0f} MB "
            f"({res['rss_growth_mb']:+.1f}) | mean batch {res['mean_batch_size']:.2f} crops, "
            f"queue wait {res['mean_queue_wait_ms']:.2f} ms"
        )
    after = ceilings("after")
    per_workers = {
        w: 0.5 * (b["images_per_s"] + a["images_per_s"])
        for w, b, a in zip(workers, runs, after, strict=True)
    }
    seq, per_core, par = per_workers[1], per_workers[cores], per_workers[args.clients]
    cpu = 0.5 * (runs[0]["cpu_ms_per_image"] + after[0]["cpu_ms_per_image"])
    summary = {
        "ceiling_seq": seq,
        "ceiling_per_core": per_core,
        "ceiling_par": par,
        "ceiling_cpu_ms_per_image": cpu,
        "cores": cores,
    }
    print(
        f"ceiling (mean of before/after): {seq:.2f} images/s with 1 thread, {per_core:.2f} with "
        f"{cores} (one per core), {par:.2f} with {args.clients}; {cpu:.1f} CPU-ms/image"
    )
    for res in rows:
        res["ratio_to_ceiling"] = res["images_per_s"] / seq
        res["ratio_to_core_ceiling"] = res["images_per_s"] / per_core
        res["ratio_to_parallel_ceiling"] = res["images_per_s"] / par
        res["cpu_efficiency"] = cpu / res["cpu_ms_per_image"]
        print(
            f"batching {'on' if res['batching'] else 'off':>3}: served / ceiling "
            f"{res['ratio_to_core_ceiling']:.2f} ({cores} single-thread pipelines, one per core) "
            f"[target >= 0.85]; {res['ratio_to_ceiling']:.2f} (1 thread), "
            f"{res['ratio_to_parallel_ceiling']:.2f} ({args.clients} threads); "
            f"CPU efficiency (ceiling CPU-ms / server CPU-ms per image) "
            f"{res['cpu_efficiency']:.2f}"
        )
    if len(rows) == 2:
        ratio = rows[0]["images_per_s"] / rows[1]["images_per_s"]
        eff = rows[1]["cpu_ms_per_image"] / rows[0]["cpu_ms_per_image"]
        print(
            f"batching {'on' if rows[0]['batching'] else 'off'} / "
            f"{'on' if rows[1]['batching'] else 'off'}: throughput {ratio:.2f}, "
            f"CPU per image {1 / eff:.2f}"
        )
    print(f"load average after: {os.getloadavg()}")
    if args.json is not None:
        out = {"ceiling": {"before": runs, "after": after, **summary}, "modes": rows}
        args.json.write_text(json.dumps(out, indent=2))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
