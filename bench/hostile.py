"""Hostile clients against a real ``darkpose serve``, one attack after another.

Starts the server (default settings, CPU, 127.0.0.1:<free port>) unless ``--url``/``--pid``
name a running one, then runs each attack for a few seconds while

* a prober requests ``/healthz`` every 50 ms (its p50 and worst latency during the attack),
* a sampler reads the server's CPU seconds and RSS every 50 ms (CPU used during the attack,
  RSS peak above the value at its start),
* one real request (a coco-mini photo) is sent in the middle of the attack (its status).

Payloads are generated (tests/hostile_payloads.py); nothing is read from disk but the photo.
An attack that needs settings of its own (``hangup``: 2 requests in flight per client) gets a
server of its own.  ``everything`` and ``hangup`` also print the figures of their own requests
(server CPU seconds and RSS peak of the one request, refusals at the per-client cap).

    python bench/hostile.py                       # all attacks, ~2 minutes
    python bench/hostile.py --only bomb,slow_upload --json out.json
    python bench/hostile.py --only keys,header_stream,auth_flood,log_forge   # the edge attacks

The edge attacks (keys, header_stream, auth_flood, log_forge) run against a second server
with 1,000 API keys in a file, 5 requests/s (burst 10) and 2 in flight per key, logging at
INFO to a file that ``log_forge`` and ``auth_flood`` read.  ``DARKPOSE_BENCH_SERVER_DIR``
names the checkout whose code the started servers run (e.g. a worktree at main, with
``PYTHONPATH`` pointing at it too), for before/after figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.load import cpu_seconds, free_port, rss_mb  # noqa: E402
from bench.machine import cpu_line  # noqa: E402
from tests import hostile_payloads as hp  # noqa: E402

PHOTO = REPO.parent / "shared" / "data" / "coco-mini" / "train2017" / "000000129648.jpg"


@dataclass
class Result:
    name: str
    answers: Counter[str] = field(default_factory=Counter)
    cpu_s: float = 0.0
    rss_growth_mb: float = 0.0
    healthz_p50_ms: float = 0.0
    healthz_max_ms: float = 0.0
    real_status: str = "-"
    real_ms: float = 0.0
    seconds: float = 0.0
    note: str = ""


class Server:
    def __init__(
        self,
        url: str | None,
        pid: int | None,
        env: dict[str, str],
        log: Path | None = None,
        auth: dict[str, str] | None = None,
    ) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = log
        self.auth = auth or {}  # headers of the real request (an API key)
        if url is not None:
            if pid is None:
                raise SystemExit("--url needs --pid (the server's process id, for CPU and RSS)")
            self.base, self.pid = url.rstrip("/"), pid
        else:
            port = free_port()
            full = {
                **os.environ,
                "DARKPOSE_HOST": "127.0.0.1",
                "DARKPOSE_PORT": str(port),
                "DARKPOSE_PROVIDERS": "cpu",
                **env,
            }
            level = "INFO" if log is not None else "WARNING"
            out = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "darkpose.service.cli", "--log-level", level, "serve"],
                cwd=full.get("DARKPOSE_BENCH_SERVER_DIR", str(REPO)),
                env=full,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            self.base, self.pid = f"http://127.0.0.1:{port}", self.proc.pid
        host, _, port_s = self.base.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port_s or 80)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}")
            time.sleep(0.2)
        raise SystemExit("server not ready within 180 s")

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# --- measuring ----------------------------------------------------------------------------------
class Monitor:
    """CPU/RSS sampler and /healthz prober for the duration of one attack."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.stop = threading.Event()
        self.rss: list[float] = []
        self.healthz: list[float] = []
        self.threads = [
            threading.Thread(target=self._sample, daemon=True),
            threading.Thread(target=self._probe, daemon=True),
        ]

    def __enter__(self) -> Monitor:
        self.cpu0 = cpu_seconds(self.srv.pid)
        self.rss0 = rss_mb(self.srv.pid)
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)
        self.cpu_s = cpu_seconds(self.srv.pid) - self.cpu0

    def _sample(self) -> None:
        while not self.stop.is_set():
            try:
                self.rss.append(rss_mb(self.srv.pid))
            except OSError:
                return
            time.sleep(0.05)

    def _probe(self) -> None:
        with httpx.Client(timeout=30) as c:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    c.get(self.srv.base + "/healthz")
                self.healthz.append(time.perf_counter() - t0)
                time.sleep(0.05)


def real_request(srv: Server, out: Result) -> None:
    t0 = time.perf_counter()
    try:
        r = httpx.post(
            srv.base + "/pose",
            content=PHOTO.read_bytes(),
            headers={"Content-Type": "image/jpeg", **srv.auth},
            timeout=60,
        )
        out.real_status = str(r.status_code)
    except httpx.HTTPError as exc:
        out.real_status = type(exc).__name__
    out.real_ms = 1000 * (time.perf_counter() - t0)


# --- attack building blocks -------------------------------------------------------------------
def connect(srv: Server, timeout: float = 30.0, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect((srv.host, srv.port))
    return s


def head(srv: Server, length: int | None, ctype: str = "image/jpeg", query: str = "") -> bytes:
    chunked = "Transfer-Encoding: chunked\r\n"
    size = f"Content-Length: {length}\r\n" if length is not None else chunked
    return (
        f"POST /pose{query} HTTP/1.1\r\nHost: {srv.host}\r\nContent-Type: {ctype}\r\n"
        f"{size}Connection: close\r\n\r\n"
    ).encode()


def status_of(data: bytes) -> str:
    if not data:
        return "closed"
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "garbage"


def read_status(s: socket.socket) -> str:
    data = b""
    try:
        while len(data) < 32:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return status_of(data)


def post_many(srv: Server, payloads: list[tuple[bytes, str, str]], answers: Counter[str]) -> None:
    """POST each (body, content type, query) from its own thread; count the statuses."""

    def one(body: bytes, ctype: str, query: str) -> None:
        try:
            url = srv.base + "/pose" + query
            r = httpx.post(url, content=body, headers={"Content-Type": ctype}, timeout=120)
            answers[str(r.status_code)] += 1
        except httpx.HTTPError as exc:
            answers[type(exc).__name__] += 1

    threads = [threading.Thread(target=one, args=p) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# --- the attacks ----------------------------------------------------------------------------------
Payloads = dict[str, Any]
#: The lowest ``score_threshold`` the service accepts by default (``min_score_threshold``); the
#: pose-heavy attacks ask for it (lower is refused with 422 at once).
LOWEST_THRESHOLD = "0.05"
#: Attack 1: a 268-byte 8×8 noise PNG asking for everything.
EVERYTHING = "?max_persons=100&score_threshold=0&flip=true"
#: Attack 2: heavy requests (16 MP decoded from ~200 bytes, 100 persons with flip) one client
#: sends and hangs up on 50 ms later; the server it runs on caps 2 in flight per client.
HANGUP_QUERY = f"?max_persons=100&score_threshold={LOWEST_THRESHOLD}&flip=true"
HANGUP_ENV = {"DARKPOSE_MAX_INFLIGHT_PER_CLIENT": "2"}


def measure(srv: Server, fn: Callable[[], str]) -> tuple[str, float, float, float]:
    """Run ``fn`` (one request; returns its status) while sampling the server every 10 ms:
    (status, wall ms, server CPU seconds, server RSS peak above the start in MB)."""
    stop = threading.Event()
    rss0 = rss_mb(srv.pid)
    peak = [rss0]

    def sample() -> None:
        while not stop.is_set():
            peak.append(rss_mb(srv.pid))
            time.sleep(0.01)

    t = threading.Thread(target=sample, daemon=True)
    cpu0, t0 = cpu_seconds(srv.pid), time.perf_counter()
    t.start()
    try:
        status = fn()
    finally:
        stop.set()
        t.join()
    return status, 1000 * (time.perf_counter() - t0), cpu_seconds(srv.pid) - cpu0, max(peak) - rss0


def _post_status(srv: Server, body: bytes, ctype: str, query: str) -> str:
    try:
        r = httpx.post(
            srv.base + "/pose" + query, content=body, headers={"Content-Type": ctype}, timeout=120
        )
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return str(r.status_code) if r.status_code < 400 else f"{r.status_code} {r.text[:160]}"


def attack_everything(srv: Server, res: Result, p: Payloads) -> None:
    """Attack 1: the 268-byte 8×8 noise PNG with max_persons=100&score_threshold=0&flip=true;
    refused, the same at the lowest threshold the server accepts."""
    png = p["png"]
    status, ms, cpu, rss = measure(srv, lambda: _post_status(srv, png, "image/png", EVERYTHING))
    res.answers[status.split(" ", 1)[0]] += 1
    res.note = f"{len(png)} B PNG{EVERYTHING}: {status[:3]}, {cpu:.2f} CPU-s, RSS +{rss:.0f} MB"
    floor = re.search(r"(?:greater than or equal to|at least) ([0-9.]+)", status)
    if status.startswith("422") and floor:
        q = EVERYTHING.replace("score_threshold=0", f"score_threshold={floor.group(1)}")
        status, ms, cpu, rss = measure(srv, lambda: _post_status(srv, png, "image/png", q))
        res.answers[status.split(" ", 1)[0]] += 1
        res.note += f"; {q}: {status[:3]}, {cpu:.2f} CPU-s, RSS +{rss:.0f} MB"


def _metric(srv: Server, name: str) -> float:
    text = httpx.get(srv.base + "/metrics", timeout=10).text
    return sum(
        float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    )


def _until_idle(srv: Server, timeout: float = 120.0) -> None:
    """Wait until the server has used < 20 ms of CPU in 0.5 s (its abandoned work is done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c0 = cpu_seconds(srv.pid)
        time.sleep(0.5)
        if cpu_seconds(srv.pid) - c0 < 0.02:
            return


def attack_hangup(srv: Server, res: Result, p: Payloads) -> None:
    """Attack 2: one client (2 in flight allowed) sends 10 heavy requests (lossless WebP
    4000², 100 persons with flip), each closed 50 ms after sending; then until the server is
    idle.  Compare the RSS peak with one honest request's (its cap's worth: 2 of them)."""
    body, throttled = p["webp"], "darkpose_client_throttled_total"
    _, _, _, one = measure(srv, lambda: _post_status(srv, body, "image/webp", HANGUP_QUERY))
    before = _metric(srv, throttled)
    for _ in range(10):
        s = connect(srv)
        s.sendall(head(srv, len(body), "image/webp", HANGUP_QUERY) + body)
        time.sleep(0.05)
        s.close()
        res.answers["abandoned"] += 1
    _until_idle(srv)
    refused = _metric(srv, throttled) - before
    res.note = f"one honest request: RSS +{one:.0f} MB; refused at the cap: {refused:.0f} of 10"


def attack_bomb(srv: Server, res: Result, p: Payloads) -> None:
    """8 progressive JPEGs of ~60 KB declaring 4096² with 1000 scans each."""
    post_many(srv, [(p["bomb"], "image/jpeg", "")] * 8, res.answers)


def attack_abandon(srv: Server, res: Result, p: Payloads) -> None:
    """4 clients ask for a pose-heavy answer (the photo with max_persons=60, score_threshold=0.05,
    flip=true: ~120 crops each, ~1.5 s of CPU), leave after 0.3 s; then 10 s (the work a
    server does not cancel ends within the window)."""
    photo = p["photo"]
    q = f"?max_persons=60&score_threshold={LOWEST_THRESHOLD}&flip=true"
    socks = []
    for _ in range(4):
        s = connect(srv)
        s.sendall(head(srv, len(photo), query=q) + photo)
        socks.append(s)
    time.sleep(0.3)
    for s in socks:
        s.close()
        res.answers["abandoned"] += 1
    time.sleep(10.0)


def attack_memory(srv: Server, res: Result, p: Payloads) -> None:
    """2 × 16-bit grey PNG 6000², 2 × lossless WebP 6000², 16 photos with max_persons=100,
    score_threshold=0.05, flip=true, all at once."""
    png16, webp, photo = p["png16"], p["webp"], p["photo"]
    q = f"?max_persons=100&score_threshold={LOWEST_THRESHOLD}&flip=true"
    payloads = [(png16, "image/png", "")] * 2 + [(webp, "image/webp", "")] * 2
    payloads += [(photo, "image/jpeg", q)] * 16
    post_many(srv, payloads, res.answers)


def attack_slow_upload(srv: Server, res: Result, p: Payloads) -> None:
    """64 connections send headers and 2 body bytes, then wait 6 s."""
    photo = PHOTO.read_bytes()
    socks = []
    for _ in range(64):
        s = connect(srv)
        s.sendall(head(srv, len(photo)) + photo[:2])
        socks.append(s)
    time.sleep(6.0)
    for s in socks:
        s.close()
    res.answers["held"] += len(socks)


def attack_slow_reader(srv: Server, res: Result, p: Payloads) -> None:
    """10 clients ask render=true&render_format=png for a 2.5 MB noisy JPEG and read nothing
    for 8 s."""
    noisy = p["noisy"]
    socks = []
    for _ in range(10):
        s = connect(srv, rcvbuf=4096)
        s.sendall(head(srv, len(noisy), query="?render=true&render_format=png") + noisy)
        socks.append(s)
    time.sleep(8.0)
    for s in socks:
        res.answers[read_status(s)] += 1
        s.close()


def attack_multipart(srv: Server, res: Result, p: Payloads) -> None:
    """8 multipart uploads of 19 MB of near-boundary bytes at once."""
    body, ctype = p["multipart"]
    post_many(srv, [(body, ctype, "")] * 8, res.answers)


def attack_chunks(srv: Server, res: Result, p: Payloads) -> None:
    """4 clients upload in 1-byte chunks for 6 s."""
    stop = time.monotonic() + 6.0

    def one() -> None:
        s = connect(srv, timeout=10)
        try:
            s.sendall(head(srv, None))
            while time.monotonic() < stop:
                s.sendall(b"1\r\nx\r\n" * 200)
            s.sendall(b"0\r\n\r\n")
            res.answers[read_status(s)] += 1
        except OSError:
            res.answers["cut"] += 1
        finally:
            s.close()

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def attack_idle(srv: Server, res: Result, p: Payloads) -> None:
    """1500 connections that send nothing, held for 12 s (header timeout 10 s)."""
    socks = []
    for _ in range(1500):
        try:
            socks.append(connect(srv, timeout=2))
        except OSError:
            res.answers["connect failed"] += 1
    time.sleep(12.0)
    for s in socks:
        s.settimeout(0.01)
        try:
            res.answers["closed by server" if s.recv(1) == b"" else "open"] += 1
        except TimeoutError:
            res.answers["open"] += 1
        except OSError:
            res.answers["closed by server"] += 1
        s.close()


def attack_corrupt(srv: Server, res: Result, p: Payloads) -> None:
    """Corrupt and costly encodings: truncated + EOI, header-only 6324², RLE BMP, PNG of
    1.6 M chunks, negative-width BMP (4 each)."""
    post_many(srv, p["corrupt"] * 4, res.answers)


def attack_worst(srv: Server, res: Result, p: Payloads) -> None:
    """One worst-case legitimate request: a 6324×6324 photo-sized JPEG (40 MP, the pixel limit)
    with max_persons=100, flip=true, render=true&render_format=png."""
    q = (
        f"?max_persons=100&score_threshold={LOWEST_THRESHOLD}&flip=true&render=true"
        "&render_format=png"
    )
    post_many(srv, [(p["big"], "image/jpeg", q)], res.answers)


def _noise_png() -> bytes:
    from io import BytesIO

    import numpy as np
    from PIL import Image

    buf = BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "PNG")
    return buf.getvalue()


#: Settings of the server an attack needs on top of the defaults (started for it alone).
ATTACK_ENV: dict[str, dict[str, str]] = {"hangup": HANGUP_ENV}


def _corrupt() -> list[tuple[bytes, str, str]]:
    photo = PHOTO.read_bytes()
    return [
        (hp.truncated_jpeg_with_eoi(photo), "image/jpeg", ""),
        (hp.jpeg_header_only(6324), "image/jpeg", ""),
        (hp.bmp_rle8(2048), "image/bmp", ""),
        (hp.png_many_chunks(1_600_000), "image/png", ""),
        (hp.bmp_negative_width(), "image/bmp", ""),
    ]


#: Payloads per attack, generated before its measurement starts (the generator's CPU and GIL
#: would otherwise distort the /healthz figures of this process).
PREPARE: dict[str, Callable[[], Payloads]] = {
    "everything": lambda: {"png": _noise_png()},
    "hangup": lambda: {"webp": hp.webp_lossless(4000)},
    "worst": lambda: {"big": hp.smooth_jpeg(6324, 6324)},
    "bomb": lambda: {"bomb": hp.jpeg_scan_bomb(4096, 1000)},
    "abandon": lambda: {"photo": PHOTO.read_bytes()},
    "memory": lambda: {
        "png16": hp.png16_gray(6000),
        "webp": hp.webp_lossless(6000),
        "photo": PHOTO.read_bytes(),
    },
    "slow_reader": lambda: {"noisy": hp.noisy_jpeg(2400, 1600)},
    "multipart": lambda: {"multipart": hp.near_boundary_multipart(19 * 1024 * 1024)},
    "corrupt": lambda: {"corrupt": _corrupt()},
}

ATTACKS: dict[str, Callable[[Server, Result, Payloads], None]] = {
    "everything": attack_everything,
    "hangup": attack_hangup,
    "worst": attack_worst,
    "bomb": attack_bomb,
    "abandon": attack_abandon,
    "memory": attack_memory,
    "slow_upload": attack_slow_upload,
    "slow_reader": attack_slow_reader,
    "multipart": attack_multipart,
    "chunks": attack_chunks,
    "idle": attack_idle,
    "corrupt": attack_corrupt,
}


# --- edge attacks: keys, request heads, 401 flood, log forging (keyed server) ------------------
#: The keyed server of the edge attacks: 1,000 keys in a file, 5 requests/s (burst 10) and two
#: in flight per key.
EDGE_KEYS = [f"bench-edge-key-{i:05d}-0123456789abcdef" for i in range(1000)]
EDGE_ENV = {
    "DARKPOSE_RATE_LIMIT": "5",
    "DARKPOSE_RATE_BURST": "10",
    "DARKPOSE_MAX_INFLIGHT_PER_CLIENT": "2",
    "DARKPOSE_KEY_ID_SECRET": "bench-hostile-key-id-secret",
}
FORGED = "2026-12-06 18:00:00,000 CRITICAL forged by bench/hostile.py"


def _get_head(target: str, headers: list[tuple[str, str]], close: bool = False) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    end = "Connection: close\r\n" if close else ""
    return f"GET {target} HTTP/1.1\r\nHost: x\r\n{lines}{end}\r\n".encode()


def attack_keys(srv: Server, res: Result, p: Payloads) -> None:
    """5 rounds of 10 pipelined GET /v1/models, each with 20,000 X-API-Key headers (1 MB)."""
    one = _get_head(
        "/v1/models", [("X-API-Key", f"guess-{i:06d}-{'x' * 32}") for i in range(20_000)]
    )
    for _ in range(5):
        s = _connect_from(srv, "127.0.0.5")
        try:
            s.sendall(one * 10)
            res.answers[read_status(s)] += 1
        except OSError as exc:
            res.answers[type(exc).__name__] += 1
        finally:
            s.close()


def attack_header_stream(srv: Server, res: Result, p: Payloads) -> None:
    """One connection at a time streams a header value of up to 150 MB (64 kB writes) until
    the server answers or cuts it, then reconnects, for 6 s."""
    deadline = time.monotonic() + 6.0
    total = 0
    chunk = b"s" * 65536
    while time.monotonic() < deadline:
        s = _connect_from(srv, "127.0.0.4")
        sent = 0
        try:
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Stream: ")
            while time.monotonic() < deadline and sent < 150 * 1024 * 1024:
                if select.select([s], [], [], 0)[0]:  # answered (or closed)
                    res.answers[read_status(s)] += 1
                    break
                s.sendall(chunk)
                sent += len(chunk)
            else:
                res.answers["no answer"] += 1
        except OSError as exc:
            res.answers[type(exc).__name__] += 1
        finally:
            s.close()
            total += sent
    res.answers[f"{total / (1024 * 1024):.1f} MB sent"] += 1


def _connect_from(srv: Server, source: str) -> socket.socket:
    """A connection from another loopback address (a client of its own)."""
    return socket.create_connection((srv.host, srv.port), timeout=30, source_address=(source, 0))


def attack_auth_flood(srv: Server, res: Result, p: Payloads) -> None:
    """One keep-alive connection sends wrong keys as fast as it can for 4 s."""
    deadline = time.monotonic() + 4.0
    s = _connect_from(srv, "127.0.0.2")
    try:
        f = s.makefile("rb")
        while time.monotonic() < deadline:
            s.sendall(_get_head("/v1/models", [("X-API-Key", "wrong-key-0123456789abcdef")]))
            status = f.readline().split(b" ")[1].decode()
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            f.read(length)
            res.answers[status] += 1
    except (OSError, IndexError):
        res.answers["closed"] += 1
    finally:
        s.close()


def attack_log_forge(srv: Server, res: Result, p: Payloads) -> None:
    """A 401 whose path carries CR/LF and ANSI escapes (a fake CRITICAL line)."""
    target = "/v1/models%0d%0a" + FORGED.replace(" ", "%20") + "%1b%5b2J"
    for _ in range(3):
        s = _connect_from(srv, "127.0.0.3")
        try:
            s.sendall(_get_head(target, [("X-API-Key", "wrong-key-0123456789abcdef")], True))
            res.answers[read_status(s)] += 1
        finally:
            s.close()


EDGE_ATTACKS: dict[str, Callable[[Server, Result, Payloads], None]] = {
    "keys": attack_keys,
    "header_stream": attack_header_stream,
    "auth_flood": attack_auth_flood,
    "log_forge": attack_log_forge,
}


def edge_server(args: argparse.Namespace, workdir: Path) -> Server:
    """The keyed server of the edge attacks (or ``--edge-url``/``--edge-pid``)."""
    keyfile = workdir / "api_keys"
    keyfile.write_text("\n".join(EDGE_KEYS) + "\n")
    env = {**EDGE_ENV, "DARKPOSE_API_KEYS_FILE": str(keyfile)}
    auth = {"X-API-Key": EDGE_KEYS[-1]}
    return Server(args.edge_url, args.edge_pid, env, log=workdir / "server.log", auth=auth)


def edge_notes(srv: Server, res: Result) -> None:
    """Log evidence: forged lines standing as lines of their own, 401 lines written."""
    if srv.log is None or not srv.log.exists():
        return
    lines = srv.log.read_text(errors="replace").splitlines()
    if res.name == "log_forge":
        forged = sum(line.startswith(FORGED[:23]) for line in lines)
        res.answers[f"forged lines as their own: {forged}"] += 1
    if res.name == "auth_flood":
        res.answers[f"401 log lines: {sum(' 401 ' in line for line in lines)}"] += 1
        res.answers[f"log bytes: {srv.log.stat().st_size}"] += 1


def run_attack(srv: Server, name: str) -> Result:
    res = Result(name)
    payloads = PREPARE.get(name, dict)()
    t0 = time.perf_counter()
    with Monitor(srv) as mon:
        attack = ATTACKS.get(name) or EDGE_ATTACKS[name]
        worker = threading.Thread(target=attack, args=(srv, res, payloads))
        worker.start()
        time.sleep(1.0)
        real_request(srv, res)
        worker.join()
        time.sleep(0.5)
    res.seconds = time.perf_counter() - t0
    res.cpu_s = mon.cpu_s
    res.rss_growth_mb = max(mon.rss, default=mon.rss0) - mon.rss0
    lat = mon.healthz or [0.0]
    res.healthz_p50_ms = 1000 * statistics.median(lat)
    res.healthz_max_ms = 1000 * max(lat)
    return res


def report(res: Result) -> None:
    answers = ", ".join(f"{k}×{v}" for k, v in sorted(res.answers.items()))
    print(
        f"{res.name:13s} cpu {res.cpu_s:6.1f} s | rss +{res.rss_growth_mb:6.0f} MB | "
        f"/healthz p50 {res.healthz_p50_ms:6.0f} ms max {res.healthz_max_ms:6.0f} ms | "
        f"real request {res.real_status} in {res.real_ms:5.0f} ms | {res.seconds:4.1f} s | "
        f"answers: {answers}" + (f" | {res.note}" if res.note else ""),
        flush=True,
    )


def run_all(srv: Server, names: list[str]) -> list[Result]:
    results = []
    try:
        httpx.post(  # warm the pipeline once
            srv.base + "/pose",
            content=PHOTO.read_bytes(),
            headers={"Content-Type": "image/jpeg", **srv.auth},
            timeout=60,
        )
        for name in names:
            if name in EDGE_ATTACKS:
                time.sleep(1.0)  # earlier attacks' buckets refill
            res = run_attack(srv, name)
            edge_notes(srv, res)
            results.append(res)
            report(res)
    finally:
        srv.close()
    return results


def main() -> int:
    every = [*ATTACKS, *EDGE_ATTACKS]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default="", help=f"comma list of: {','.join(every)}")
    ap.add_argument("--url", default=None, help="a running server (default: start one)")
    ap.add_argument("--pid", type=int, default=None, help="its process id (with --url)")
    ap.add_argument("--edge-url", default=None, help="a running keyed server for the edge attacks")
    ap.add_argument("--edge-pid", type=int, default=None, help="its process id (with --edge-url)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or every
    unknown = set(names) - set(every)
    if unknown:
        raise SystemExit(f"--only: expected names from {', '.join(every)}, got {sorted(unknown)}")
    print(f"# CPU: {cpu_line()}")
    results = []
    # an attack that needs settings of its own (ATTACK_ENV) gets a server of its own
    plain = [n for n in names if n in ATTACKS and (args.url or n not in ATTACK_ENV)]
    edge = [n for n in names if n in EDGE_ATTACKS]
    if plain:
        results += run_all(Server(args.url, args.pid, {}), plain)
    if not args.url:
        for n in [n for n in names if n in ATTACK_ENV]:
            results += run_all(Server(None, None, ATTACK_ENV[n]), [n])
    if edge:
        with tempfile.TemporaryDirectory() as tmp:
            results += run_all(edge_server(args, Path(tmp)), edge)
    if args.json:
        Path(args.json).write_text(
            json.dumps([{**r.__dict__, "answers": dict(r.answers)} for r in results], indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
