"""Thread and worker settings against one single-thread pipeline per core.

For a machine with many cores (the defaults were measured on few): the ceiling is the models'
own throughput with one single-thread pipeline (detector + pose sessions back to back, no HTTP)
per usable core, before and after the server runs (their mean is used); then ``darkpose serve``
runs under ``--clients`` keep-alive clients once per combination of onnxruntime intra-op threads
(``--threads-grid``, 0 = onnxruntime's default) and micro-batcher workers (``--workers-grid``,
``DARKPOSE_BATCH_WORKERS``).  Prints per combination: images/s, served / ceiling (target ≥
0.85), cores used, p50 / p99 and errors, with the CPU it ran on.

    python bench/threads.py                                  # grids 0,1 × 1,2,4
    python bench/threads.py --threads-grid 0,1,2 --workers-grid 2,4,8,16 --duration 15
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.load import Ceiling, load_images, run_mode  # noqa: E402
from bench.machine import cpu_line, usable_cores  # noqa: E402

#: served / ceiling the thread and worker defaults are held to.
TARGET = 0.85


def int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of integers, got {text!r}"
        ) from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected integers >= 0, got {text!r}")
    return values


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads-grid", type=int_list, default=[0, 1], help="intra-op threads")
    ap.add_argument("--workers-grid", type=int_list, default=[1, 2, 4], help="batcher workers")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per combination")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--ceiling-seconds", type=float, default=5.0)
    ap.add_argument("--images", type=int, default=80, help="coco-mini images cycled")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    if 0 in args.workers_grid:
        ap.error("--workers-grid: expected workers > 0, got 0")

    cores = usable_cores()
    images = load_images(args.images)
    print(f"# CPU: {cpu_line()}")
    print(f"{args.clients} clients, {args.duration:g} s per combination, {len(images)} images")
    ceiling = Ceiling(images, 1)
    before = ceiling.run(args.ceiling_seconds, cores)
    rows: list[dict[str, Any]] = []
    for threads in args.threads_grid:
        for workers in args.workers_grid:
            res = run_mode(
                True,
                images,
                args.clients,
                args.duration,
                args.warmup,
                threads,
                {"DARKPOSE_BATCH_WORKERS": str(workers)},
            )
            res.update(threads=threads, workers=workers)
            rows.append(res)
            print(
                f"threads {threads} workers {workers}: {res['images_per_s']:.2f} images/s, "
                f"{res['cores_used']:.2f} of {cores} cores, p50 {res['p50_ms']:.0f} ms p99 "
                f"{res['p99_ms']:.0f} ms, errors {res['errors']}",
                flush=True,
            )
    after = ceiling.run(args.ceiling_seconds, cores)
    top = 0.5 * (before["images_per_s"] + after["images_per_s"])
    print(
        f"ceiling: {cores} single-thread pipelines, one per core: {top:.2f} images/s "
        f"(before {before['images_per_s']:.2f}, after {after['images_per_s']:.2f})"
    )
    print(
        "| intra-op threads | batcher workers | images/s | served / ceiling | cores used "
        "| p50 / p99 ms | errors |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r["ratio_to_core_ceiling"] = r["images_per_s"] / top
        mark = "" if r["ratio_to_core_ceiling"] >= TARGET else " (below 0.85)"
        print(
            f"| {r['threads']} | {r['workers']} | {r['images_per_s']:.2f} | "
            f"{r['ratio_to_core_ceiling']:.2f}{mark} | {r['cores_used'] / cores:.2f} | "
            f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} | {r['errors']} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"ceiling": [before, after], "rows": rows}, indent=1))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
