"""Decoding benchmark: argmax vs standard vs DARK on one batch, plus an mmpose-style loop.

Run: ``python bench/decode.py [--n 128] [--repeat 200] [--kernel 11]``

One run times, on the same (N, K, 64, 48) float32 batch of real-looking heatmaps (the golden
model heatmaps tiled to N instances, each jittered by a random sub-pixel-free roll and a little
noise):

* raw ``np.argmax`` over the flattened maps (the floor: one pass over the data),
* mmpose's ``get_heatmap_maximum`` on the whole batch (argmax + amax: two passes, no check),
* ``decode_heatmaps(method="argmax" | "standard" | "dark")``,
* a straightforward per-instance mmpose 1.3.2-style reimplementation of DARK (Python loop over
  instances and keypoints, cv2 blur per map) as the reference,

and prints persons/s, the ratios dark/argmax (vs our argmax decode, vs raw np.argmax and vs
mmpose's get_heatmap_maximum) and the speedup over the reference.  Candidates are timed
round-robin (``--repeat`` rounds); median and minimum are printed, ratios are within this one
run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from itertools import product
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import cpu_line  # noqa: E402
from darkpose.service.core.codec import DECODERS, decode_heatmaps  # noqa: E402

GOLDEN = ROOT.parent / "shared" / "golden" / "mmpose_decode_coco_mini_train.npz"


# ---------------------------------------------------------------------------------------------
# mmpose 1.3.2-style reference (per instance, per keypoint loops; float32 like mmpose)
# ---------------------------------------------------------------------------------------------


def mmpose_get_heatmap_maximum(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """heatmaps (K, H, W) or (B, K, H, W) -> locs (..., 2) float32 (-1 where max <= 0), vals
    (...,) float32, as mmpose 1.3.2's ``get_heatmap_maximum`` (an argmax pass plus an amax pass,
    no non-finite check)."""
    *lead, H, W = heatmaps.shape
    flat = heatmaps.reshape(-1, H * W)
    y, x = np.unravel_index(np.argmax(flat, axis=1), (H, W))
    locs = np.stack((x, y), axis=-1).astype(np.float32)
    vals = np.amax(flat, axis=1)
    locs[vals <= 0.0] = -1
    return locs.reshape(*lead, 2), vals.reshape(lead)


def mmpose_gaussian_blur(heatmaps: np.ndarray, kernel: int) -> np.ndarray:
    """In place, per map: zero pad, cv2.GaussianBlur, crop, rescale to the original max."""
    border = (kernel - 1) // 2
    K, H, W = heatmaps.shape
    for k in range(K):
        origin_max = np.max(heatmaps[k])
        dr = np.zeros((H + 2 * border, W + 2 * border), dtype=np.float32)
        dr[border : border + H, border : border + W] = heatmaps[k].copy()
        dr = cv2.GaussianBlur(dr, (kernel, kernel), 0)
        heatmaps[k] = dr[border : border + H, border : border + W].copy()
        heatmaps[k] *= origin_max / np.max(heatmaps[k])
    return heatmaps


def mmpose_refine_dark(keypoints: np.ndarray, heatmaps: np.ndarray, kernel: int) -> np.ndarray:
    """keypoints (N, K, 2) float32 in place; heatmaps (K, H, W)."""
    N, K = keypoints.shape[:2]
    H, W = heatmaps.shape[1:]
    heatmaps = mmpose_gaussian_blur(heatmaps, kernel)
    np.maximum(heatmaps, 1e-10, out=heatmaps)
    np.log(heatmaps, out=heatmaps)
    for n, k in product(range(N), range(K)):
        x, y = keypoints[n, k, :2].astype(int)
        if 1 < x < W - 2 and 1 < y < H - 2:
            hm = heatmaps[k]
            dx = 0.5 * (hm[y, x + 1] - hm[y, x - 1])
            dy = 0.5 * (hm[y + 1, x] - hm[y - 1, x])
            dxx = 0.25 * (hm[y, x + 2] - 2 * hm[y, x] + hm[y, x - 2])
            dxy = 0.25 * (hm[y + 1, x + 1] - hm[y - 1, x + 1] - hm[y + 1, x - 1] + hm[y - 1, x - 1])
            dyy = 0.25 * (hm[y + 2, x] - 2 * hm[y, x] + hm[y - 2, x])
            if dxx * dyy - dxy**2 != 0:
                hessian = np.array([[dxx, dxy], [dxy, dyy]])
                offset = -np.linalg.inv(hessian) @ np.array([dx, dy])
                keypoints[n, k, :2] += offset
    return keypoints


def mmpose_refine_standard(keypoints: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    N, K = keypoints.shape[:2]
    H, W = heatmaps.shape[1:]
    for n, k in product(range(N), range(K)):
        x, y = keypoints[n, k, :2].astype(int)
        dx = heatmaps[k, y, x + 1] - heatmaps[k, y, x - 1] if 1 < x < W - 1 and 0 < y < H else 0.0
        dy = heatmaps[k, y + 1, x] - heatmaps[k, y - 1, x] if 1 < y < H - 1 and 0 < x < W else 0.0
        keypoints[n, k] += np.sign([dx, dy], dtype=np.float32) * 0.25
    return keypoints


def mmpose_decode_loop(
    heatmaps: np.ndarray, method: str = "dark", kernel: int = 11
) -> tuple[np.ndarray, np.ndarray]:
    """heatmaps (N, K, H, W) -> coords (N, K, 2), scores (N, K): one instance at a time, as
    mmpose's MSRAHeatmap.decode is called per instance."""
    coords = np.zeros(heatmaps.shape[:2] + (2,), np.float32)
    scores = np.zeros(heatmaps.shape[:2], np.float32)
    for i in range(heatmaps.shape[0]):
        hm = heatmaps[i].astype(np.float32, copy=True)
        locs, vals = mmpose_get_heatmap_maximum(hm)
        kp = locs[None]
        if method == "dark":
            kp = mmpose_refine_dark(kp, hm, kernel)
        elif method == "standard":
            kp = mmpose_refine_standard(kp, hm)
        coords[i] = kp[0]
        scores[i] = vals
    return coords, scores


# ---------------------------------------------------------------------------------------------


def make_batch(n: int, seed: int = 0) -> np.ndarray:
    """(n, 17, 64, 48) float32: golden heatmaps tiled, rolled by a few px, plus noise."""
    rng = np.random.default_rng(seed)
    base = np.load(GOLDEN)["heatmaps"]
    picks = base[rng.integers(0, base.shape[0], n)]
    out = np.empty_like(picks)
    for i in range(n):  # batch construction only, not timed
        out[i] = np.roll(picks[i], (rng.integers(-3, 4), rng.integers(-3, 4)), axis=(1, 2))
    out += rng.normal(0.0, 2e-3, out.shape).astype(np.float32)
    return np.ascontiguousarray(out)


def interleaved(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, np.ndarray]:
    """Seconds per call of each fn, measured round-robin so that load from other processes
    hits every candidate alike (this machine is shared)."""
    for fn in fns.values():
        fn()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            ts[name].append(time.perf_counter() - t0)
    return {k: np.asarray(v) for k, v in ts.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--kernel", type=int, default=11)
    ap.add_argument("--ref-repeat", type=int, default=3)
    args = ap.parse_args(argv)

    hm = make_batch(args.n)
    N, K, H, W = hm.shape
    flat = hm.reshape(N * K, H * W)
    fns: dict[str, Callable[[], object]] = {
        "raw np.argmax": partial(flat.argmax, axis=1),
        "mmpose get_heatmap_maximum": partial(mmpose_get_heatmap_maximum, hm),
    }
    for m in DECODERS:  # the decoder table
        fns[f"decode_heatmaps({m})"] = partial(decode_heatmaps, hm, m, args.kernel)
    ts = interleaved(fns, args.repeat)
    ts["mmpose-style loop (dark)"] = interleaved(
        {"ref": partial(mmpose_decode_loop, hm, "dark", args.kernel)}, args.ref_repeat
    )["ref"]
    ours, _ = decode_heatmaps(hm, "dark", args.kernel)
    ref, _ = mmpose_decode_loop(hm, "dark", args.kernel)

    print(f"# CPU: {cpu_line()}")
    print(f"batch (N, K, H, W) = {hm.shape} float32, blur kernel {args.kernel}, {args.repeat} runs")
    print(f"{'':28s} {'median ms':>10s} {'min ms':>8s} {'persons/s (median)':>19s}")
    for name, v in ts.items():
        med = float(np.median(v))
        print(f"{name:28s} {med * 1e3:10.3f} {v.min() * 1e3:8.3f} {N / med:19.0f}")
    for stat, f in (("median", np.median), ("min", np.min)):
        d, a = f(ts["decode_heatmaps(dark)"]), f(ts["decode_heatmaps(argmax)"])
        raw, std = f(ts["raw np.argmax"]), f(ts["decode_heatmaps(standard)"])
        mm = f(ts["mmpose get_heatmap_maximum"])
        print(
            f"[{stat:6s}] dark/decode(argmax) {d / a:.2f}   dark/raw np.argmax {d / raw:.2f}   "
            f"dark/mmpose get_heatmap_maximum {d / mm:.2f}   standard/raw {std / raw:.2f}   "
            f"decode(argmax)/raw {a / raw:.2f}"
        )
    speedup = np.median(ts["mmpose-style loop (dark)"]) / np.median(ts["decode_heatmaps(dark)"])
    print(f"speedup of decode_heatmaps(dark) over the mmpose-style loop: {speedup:.0f}x")
    print(f"max |ours - loop| (dark): {np.abs(ours - ref).max():.2e} px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
