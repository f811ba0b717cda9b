"""Overload bench for per-client fair use: a greedy client against a polite one.

One ``darkpose serve`` per mode (uvicorn subprocess on 127.0.0.1, API keys ``greedy`` and
``polite``).  The polite client sends one request at a time; the greedy one keeps
``--greedy`` connections busy and, when refused (429), retries after ``--greedy-backoff-ms``.

1. ``alone``: the polite client by itself (its baseline latency, same server as 3.).
2. ``no cap``: greedy + polite, ``DARKPOSE_MAX_INFLIGHT_PER_CLIENT`` unset (today's behaviour:
   the greedy client holds as many slots as it has connections).
3. ``cap N``: greedy + polite with ``DARKPOSE_MAX_INFLIGHT_PER_CLIENT=N``.

Prints per phase the polite client's images/s, p50/p99 latency and errors, the greedy
client's images/s and 429 count, and the polite p50 ratio to its baseline.

    python bench/fair_use.py                     # 32 greedy connections, cap 4, 15 s phases
    python bench/fair_use.py --duration 8 --greedy 16 --cap 2

All numbers are measured in one run on this machine; compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.load import (  # noqa: E402
    add_load_arguments,
    load_images,
    start_server,
    stop_server,
    summarize,
)
from bench.load import client_loop as load_client_loop  # noqa: E402
from bench.machine import cpu_line  # noqa: E402

GREEDY_KEY = "bench-greedy-key-0123456789"
POLITE_KEY = "bench-polite-key-9876543210"


def client_loop(
    port: int,
    key: str,
    images: list[bytes],
    stop_at: float,
    offset: int,
    backoff_s: float,
    out: dict[str, Any],
) -> None:
    """:func:`bench.load.client_loop` with ``key``; a 429 waits ``backoff_s`` and retries."""
    load_client_loop(
        port, images, stop_at, offset, out, key=key, backoff_429_s=backoff_s, timeout_s=120.0
    )


def run_phase(
    port: int, images: list[bytes], greedy: int, duration: float, backoff_s: float
) -> dict[str, Any]:
    stop = time.perf_counter() + duration
    polite: dict[str, Any] = {}
    greedy_out: list[dict[str, Any]] = [{} for _ in range(greedy)]
    threads = [
        threading.Thread(
            target=client_loop, args=(port, GREEDY_KEY, images, stop, 7 * k, backoff_s, o)
        )
        for k, o in enumerate(greedy_out)
    ]
    for t in threads:
        t.start()
    if greedy:
        time.sleep(min(1.0, duration / 4))  # the greedy client is there first
    t0 = time.perf_counter()
    client_loop(port, POLITE_KEY, images, stop, 3, backoff_s, polite)
    polite_elapsed = time.perf_counter() - t0
    for t in threads:
        t.join()
    pol, gre = summarize([polite], polite_elapsed), summarize(greedy_out, duration)
    return {
        "polite_ok": pol["ok"],
        "polite_images_per_s": pol["images_per_s"],
        "polite_p50_ms": pol["p50_ms"],
        "polite_p99_ms": pol["p99_ms"],
        "polite_refused": polite["refused"],
        "polite_errors": pol["errors"],
        "greedy_ok": gre["ok"],
        "greedy_images_per_s": gre["images_per_s"],
        "greedy_refused": sum(o["refused"] for o in greedy_out),
        "greedy_errors": sum(gre["errors"].values()),
    }


def with_server(
    cap: int, threads: int, fn: Any, images: list[bytes], warmup: float
) -> list[dict[str, Any]]:
    env = {"DARKPOSE_API_KEYS": f"{GREEDY_KEY},{POLITE_KEY}"}
    if cap:
        env["DARKPOSE_MAX_INFLIGHT_PER_CLIENT"] = str(cap)
    proc, port = start_server(True, threads, env)
    try:
        warm: dict[str, Any] = {}
        client_loop(port, POLITE_KEY, images, time.perf_counter() + warmup, 0, 0.0, warm)
        return list(fn(port))
    finally:
        stop_server(proc)


def _fmt(tag: str, r: dict[str, Any], base_p50: float) -> str:
    return (
        f"{tag:>8}: polite {r['polite_images_per_s']:.2f} images/s, p50 "
        f"{r['polite_p50_ms']:.0f} ms ({r['polite_p50_ms'] / base_p50:.1f}x alone), p99 "
        f"{r['polite_p99_ms']:.0f} ms, refused {r['polite_refused']}, errors "
        f"{r['polite_errors'] or 0} | greedy {r['greedy_images_per_s']:.2f} images/s, "
        f"refused {r['greedy_refused']} (429), errors {r['greedy_errors']}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_arguments(ap, duration=15.0, per="phase", warmup=2.0, images=40)
    ap.add_argument("--greedy", type=int, default=32, help="greedy client's connections")
    ap.add_argument("--cap", type=int, default=4, help="DARKPOSE_MAX_INFLIGHT_PER_CLIENT")
    ap.add_argument("--greedy-backoff-ms", type=float, default=20.0, help="wait after a 429")
    args = ap.parse_args()
    images = load_images(args.images)
    backoff = args.greedy_backoff_ms / 1000.0
    print(f"# CPU: {cpu_line()}; load average {os.getloadavg()}")

    def capped(port: int) -> Any:
        yield run_phase(port, images, 0, args.duration, backoff)
        yield run_phase(port, images, args.greedy, args.duration, backoff)

    def uncapped(port: int) -> Any:
        yield run_phase(port, images, args.greedy, args.duration, backoff)

    alone, cap_on = with_server(args.cap, args.threads, capped, images, args.warmup)
    (cap_off,) = with_server(0, args.threads, uncapped, images, args.warmup)
    base = alone["polite_p50_ms"]
    print(_fmt("alone", alone, base))
    print(_fmt("no cap", cap_off, base))
    print(_fmt(f"cap {args.cap}", cap_on, base))
    p50_ratio = cap_on["polite_p50_ms"] / cap_off["polite_p50_ms"]
    rate_ratio = cap_on["polite_images_per_s"] / max(cap_off["polite_images_per_s"], 1e-9)
    print(
        f"polite p50 with the cap / without: {p50_ratio:.2f}; "
        f"polite images/s with the cap / without: {rate_ratio:.1f}"
    )
    print(f"load average after: {os.getloadavg()}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"alone": alone, "no_cap": cap_off, "cap": cap_on, **vars(args)}, default=str
            )
        )
    failed = cap_on["polite_ok"] == 0 or cap_on["polite_errors"] or cap_on["polite_refused"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
