"""``POST /pose`` body serialisation micro-benchmark (one run, ratios measured in that run).

    python bench/response_json.py [--persons 30] [--rounds 15] [--number 200]

Times building the JSON body of one response with ``--persons`` persons (17 keypoints) from a
:class:`~darkpose.service.core.poses.Poses`, configurations interleaved round by round in a
shuffled order (medians over rounds):

* ``schema``: what the service does — :meth:`PersonOut.rows` → ``PoseResponse.model_validate``
  → ``model_dump_json`` (pydantic's compiled serialiser; keypoints once, COCO's flat list);
* ``json.dumps flat``: the same body built as dicts and written by ``json.dumps``;
* ``json.dumps nested+flat``: the 0.1 body (each keypoint twice: ``keypoints`` K × [x, y, s]
  and ``keypoints_flat``) written by ``json.dumps``, as 0.1 served it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_line  # noqa: E402
from darkpose.service.api.schemas import PersonOut, PoseResponse  # noqa: E402
from darkpose.service.core.poses import Poses  # noqa: E402

MODEL = {
    "pose_models": ["pp_tinypose_256x192"],
    "detector": "picodet",
    "decode": "dark",
    "blur_kernel": 11,
    "decode_in_graph": False,
    "flip": True,
    "keypoint_names": [f"kp{i}" for i in range(17)],
    "input_size": [192, 256],
    "heatmap_size": [48, 64],
    "batching": True,
}
TIMINGS = dict.fromkeys(
    ("detect", "crop", "pose", "decode", "postprocess", "total", "image_decode"), 1.0
)


def make_poses(n: int, seed: int = 0) -> Poses:
    rng = np.random.default_rng(seed)
    lo = rng.uniform(0, 500, (n, 2)).astype(np.float32)
    kp = rng.uniform(0, 600, (n, 17, 3)).astype(np.float32)
    kp[..., 2] = rng.uniform(0, 1, (n, 17))
    s = rng.uniform(0, 1, n).astype(np.float32)
    return Poses(np.concatenate([lo, lo + 80], axis=1), s, kp, s, image_size=(640, 480))


def _head() -> dict[str, Any]:
    return {"request_id": "r", "image": {"width": 640, "height": 480}}


def schema(p: Poses) -> bytes:
    body = {**_head(), "persons": PersonOut.rows(p), "model": MODEL, "timings_ms": TIMINGS}
    return PoseResponse.model_validate(body).model_dump_json().encode()


def dumps_flat(p: Poses) -> bytes:
    body = {**_head(), "persons": PersonOut.rows(p), "model": MODEL, "timings_ms": TIMINGS}
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def dumps_nested_and_flat(p: Poses) -> bytes:
    persons = []
    for i in range(len(p)):  # the 0.1 per-person loop (nested + flat keypoints)
        kpts = np.nan_to_num(p.keypoints[i].astype(np.float64))
        persons.append(
            {
                "bbox": p.boxes[i].astype(np.float64).tolist(),
                "box_score": float(p.box_scores[i]),
                "score": float(p.scores[i]),
                "keypoints": kpts.tolist(),
                "keypoints_flat": kpts.reshape(-1).tolist(),
            }
        )
    body = {**_head(), "persons": persons, "model": MODEL, "timings_ms": TIMINGS}
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--persons", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--number", type=int, default=200, help="calls per timing")
    args = ap.parse_args()
    poses = make_poses(args.persons)
    configs: dict[str, Callable[[Poses], bytes]] = {
        "schema": schema,
        "json.dumps flat": dumps_flat,
        "json.dumps nested+flat": dumps_nested_and_flat,
    }
    if json.loads(schema(poses)) != json.loads(dumps_flat(poses)):
        print("schema and json.dumps bodies differ", file=sys.stderr)
        return 1
    times: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(args.rounds):
        order = list(configs)
        random.shuffle(order)
        for name in order:
            fn = configs[name]
            t0 = time.perf_counter()
            for _ in range(args.number):
                fn(poses)
            times[name].append((time.perf_counter() - t0) / args.number)
    base = statistics.median(times["json.dumps nested+flat"])
    print(f"# CPU: {cpu_line()}")
    print(f"{args.persons} persons, median of {args.rounds} rounds × {args.number} calls")
    print("| body | µs / response | bytes | vs 0.1 body |")
    print("|---|---:|---:|---:|")
    for name, fn in configs.items():
        t = statistics.median(times[name])
        print(f"| {name} | {1e6 * t:.0f} | {len(fn(poses))} | {base / t:.2f}× faster |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
