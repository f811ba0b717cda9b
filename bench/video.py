"""Tracking benchmark: clips made from annotated stills, run through the video path.

    python bench/video.py --images DIR --ann COCO.json [--frames 30] [--limit N_IMAGES]
        [--ks 1,5,10] [--models pp_tinypose_256x192.onnx,pp_tinypose_128x96.onnx]
        [--videos ../shared/data/video]

For each of the first ``--limit`` images with annotated persons (sorted by id) two clips of
``--frames`` frames at 30 frames/s:

* **moving**: a smooth camera path — pan (up to 8 % of the width, 5 % of the height), zoom
  (up to 1.15×), rotation (up to ±4°), each frame JPEG-encoded at a quality drawn from 70–95;
  the same affine moves the ground-truth keypoints and boxes; identities are the annotation ids;
* **static**: the still re-encoded as JPEG at qualities drawn from 70–95 and shifted by up to
  ±1 px (sub-pixel), the ground truth shifted with it.

One line per configuration (pose model × detector interval k × smoothing), all in one run:

    <model> det every k=…  smooth=…: AP … frames/s … det_ms/frame … id_switches … jitter …

AP: COCO keypoint AP (pycocotools) over the moving clips' frames; frames/s over both kinds of
clip (decode excluded: frames are in memory); det_ms/frame: detector time per frame (and the
detector runs per frame, which do not depend on the machine's load);
id_switches: per 100 track-frames (a ground-truth person matched, by OKS ≥ 0.5, to a different
track id than on its previous matched frame) on the moving clips; jitter: on the static clips,
the mean frame-to-frame displacement of the matched persons' keypoints (ground-truth visible
ones) after removing the known shift, over the ground-truth box diagonal.  ``--videos DIR``
also tracks every video file of DIR (a smoke test: frames, persons per frame, tracks).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.machine import cpu_line  # noqa: E402
from darkpose.service.core.association import track_oks  # noqa: E402
from darkpose.service.core.pipeline import Pipeline  # noqa: E402
from darkpose.service.core.tracking import PoseTracker, TrackerConfig  # noqa: E402
from darkpose.service.core.types import COCO_SIGMAS  # noqa: E402
from darkpose.service.runtime.factory import build_pipeline  # noqa: E402
from darkpose.service.settings import Settings  # noqa: E402

FPS = 30.0
SIGMAS = np.asarray(COCO_SIGMAS, np.float64)


@dataclass
class Frame:
    image: np.ndarray  # BGR (H, W, 3)
    anns: list[dict[str, Any]]  # COCO annotations moved with the frame (ids = identities)
    shift: np.ndarray  # (2,) known shift of the static clips (zeros for moving clips)


def affine(w: int, h: int, pan: tuple[float, float], zoom: float, angle_deg: float) -> np.ndarray:
    """(2, 3) affine about the image centre: scale, rotate, then translate by ``pan`` px."""
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle_deg, zoom)
    m[:, 2] += pan
    return m


def move_ann(ann: dict[str, Any], m: np.ndarray, w: int, h: int) -> dict[str, Any] | None:
    """A COCO annotation moved by the affine ``m``; keypoints leaving the frame become
    unlabelled; None when no labelled keypoint is left in a non-crowd annotation."""
    out = dict(ann)
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    kp = np.asarray(ann.get("keypoints", [0] * 51), np.float64).reshape(-1, 3).copy()
    xy = kp[:, :2] @ m[:, :2].T + m[:, 2]
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1)
    vis = (kp[:, 2] > 0) & inside
    kp[:, :2] = np.where(vis[:, None], xy, 0)
    kp[:, 2] = np.where(vis, kp[:, 2], 0)
    x, y, bw, bh = ann["bbox"]
    corners = np.array([[x, y], [x + bw, y], [x, y + bh], [x + bw, y + bh]], np.float64)
    c = corners @ m[:, :2].T + m[:, 2]
    x0, y0 = np.clip(c.min(0), 0, [w - 1, h - 1])
    x1, y1 = np.clip(c.max(0), 0, [w - 1, h - 1])
    out["bbox"] = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
    out["keypoints"] = [float(v) for v in kp.reshape(-1)]
    out["num_keypoints"] = int(vis.sum())
    out["area"] = float(ann["area"]) * scale * scale
    if not ann.get("iscrowd") and out["num_keypoints"] == 0:
        return None
    return out


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, enc = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return np.asarray(cv2.imdecode(enc, cv2.IMREAD_COLOR), np.uint8)


def moving_clip(
    img: np.ndarray, anns: list[dict[str, Any]], n: int, rng: np.random.Generator
) -> list[Frame]:
    h, w = img.shape[:2]
    sx, sy = rng.choice([-1.0, 1.0], size=2)
    frames = []
    for t in range(n):
        s = t / max(n - 1, 1)
        ease = (1 - math.cos(math.pi * s)) / 2
        pan = (sx * 0.08 * w * ease, sy * 0.05 * h * ease)
        m = affine(w, h, pan, 1.0 + 0.15 * ease, 4.0 * math.sin(2 * math.pi * s))
        warped = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
        moved = [a for a in (move_ann(x, m, w, h) for x in anns) if a is not None]
        frames.append(Frame(jpeg(warped, int(rng.integers(70, 96))), moved, np.zeros(2)))
    return frames


def static_clip(
    img: np.ndarray, anns: list[dict[str, Any]], n: int, rng: np.random.Generator
) -> list[Frame]:
    h, w = img.shape[:2]
    frames = []
    for _ in range(n):
        shift = rng.uniform(-1.0, 1.0, size=2)
        m = affine(w, h, (float(shift[0]), float(shift[1])), 1.0, 0.0)
        warped = cv2.warpAffine(
            img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        moved = [a for a in (move_ann(x, m, w, h) for x in anns) if a is not None]
        frames.append(Frame(jpeg(warped, int(rng.integers(70, 96))), moved, shift))
    return frames


def match_gt(
    gt: list[dict[str, Any]],
    pred_kpts: np.ndarray,
    pred_ids: list[int] | None = None,
    previous: dict[int, int] | None = None,
) -> dict[int, int]:
    """GT annotation id → index of the predicted person (OKS ≥ 0.5).  As in the CLEAR MOT
    metrics, a GT person keeps the track of its previous match (``previous``: GT id → track id)
    while that track's person is still within the threshold; the rest by Hungarian matching."""
    people = [a for a in gt if not a.get("iscrowd") and a["num_keypoints"] > 0]
    if not people or pred_kpts.shape[0] == 0:
        return {}
    g = np.stack([np.asarray(a["keypoints"], np.float64).reshape(-1, 3) for a in people])
    g[:, :, 2] = (g[:, :, 2] > 0).astype(np.float64)  # labelled = "confident"
    p = pred_kpts.copy()
    p[:, :, 2] = 1.0  # every predicted keypoint counts; GT labelled ones decide
    areas = np.asarray([max(a["area"], 1.0) for a in people])
    oks = track_oks(g, areas, p, SIGMAS, threshold=0.5)
    out: dict[int, int] = {}
    if previous and pred_ids is not None:
        for r, a in enumerate(people):
            tid = previous.get(a["id"])
            if tid is not None and tid in pred_ids:
                c = pred_ids.index(tid)
                if oks[r, c] >= 0.5 and c not in out.values():
                    out[a["id"]] = c
                    oks[r, :] = -1.0
                    oks[:, c] = -1.0
    rows, cols = linear_sum_assignment(-oks)
    for r, c in zip(rows, cols, strict=True):
        if oks[r, c] >= 0.5:
            out[people[r]["id"]] = int(c)
    return out


def run_clip(
    pipeline: Pipeline, frames: list[Frame], config: TrackerConfig
) -> tuple[list[Any], float, float, int]:
    """Track ``frames``: (tracked frames, seconds, detector seconds, detector runs)."""
    tracker = PoseTracker(pipeline, config)
    out, det, runs = [], 0.0, 0
    t0 = time.perf_counter()
    for i, f in enumerate(frames):
        tf = tracker.process(f.image, i / FPS, index=i)
        det += tf.timings.get("detect", 0.0) if tf.detected else 0.0
        runs += int(tf.detected)
        out.append(tf)
    return out, time.perf_counter() - t0, det, runs


def coco_ap(gt: dict[str, Any], results: list[dict[str, Any]]) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        dt = coco.loadRes(results)
        ev = COCOeval(coco, dt, "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


class Score:
    """The figures of one configuration, accumulated clip by clip."""

    def __init__(self, categories: list[dict[str, Any]]) -> None:
        self.gt: dict[str, Any] = {"images": [], "annotations": [], "categories": categories}
        self.results: list[dict[str, Any]] = []
        self.seconds = self.det_s = 0.0
        self.n_frames = self.runs = self.switches = self.track_frames = 0
        self.jitters: list[float] = []

    def add(
        self, kind: str, frames: list[Frame], tracked: list[Any], secs: float, det: float, runs: int
    ) -> None:
        self.runs += runs
        self.seconds += secs
        self.det_s += det
        self.n_frames += len(frames)
        last_track: dict[int, int] = {}
        prev: dict[int, np.ndarray] = {}
        for f, tf in zip(frames, tracked, strict=True):
            kpts = (
                np.stack([tp.person.keypoints for tp in tf.persons]).astype(np.float64)
                if (tf.persons)
                else np.zeros((0, 17, 3))
            )
            ids = [tp.track_id for tp in tf.persons]
            matches = match_gt(f.anns, kpts, ids, last_track)
            if kind == "moving":
                image_id = len(self.gt["images"]) + 1
                h, w = f.image.shape[:2]
                self.gt["images"].append({"id": image_id, "width": w, "height": h})
                for a in f.anns:
                    ann_id = len(self.gt["annotations"]) + 1
                    self.gt["annotations"].append({**a, "id": ann_id, "image_id": image_id})
                for tp in tf.persons:
                    self.results.append(tp.person.to_coco(image_id))
                for gid, j in matches.items():
                    tid = tf.persons[j].track_id
                    self.track_frames += 1
                    if gid in last_track and last_track[gid] != tid:
                        self.switches += 1
                    last_track[gid] = tid
            else:
                cur: dict[int, np.ndarray] = {}
                for a in f.anns:
                    if a["id"] not in matches:
                        continue
                    p = kpts[matches[a["id"]], :, :2] - f.shift
                    cur[a["id"]] = p
                    if a["id"] in prev:
                        g = np.asarray(a["keypoints"], np.float64).reshape(-1, 3)
                        vis = g[:, 2] > 0
                        x, y, bw, bh = a["bbox"]
                        diag = max(math.hypot(bw, bh), 1.0)
                        d = np.linalg.norm(p[vis] - prev[a["id"]][vis], axis=1)
                        if d.size:
                            self.jitters.append(float(d.mean()) / diag)
                prev = cur

    def figures(self) -> dict[str, float]:
        return {
            "ap": coco_ap(self.gt, self.results),
            "fps": self.n_frames / self.seconds if self.seconds else 0.0,
            "det_ms": 1000.0 * self.det_s / max(self.n_frames, 1),
            "det_runs": self.runs / max(self.n_frames, 1),
            "id_switches": 100.0 * self.switches / max(self.track_frames, 1),
            "jitter": float(np.mean(self.jitters)) if self.jitters else float("nan"),
        }


def evaluate(
    pipeline: Pipeline,
    clips: list[tuple[str, list[Frame]]],
    categories: list[dict[str, Any]],
    configs: list[TrackerConfig],
) -> list[dict[str, float]]:
    """The figures of each of ``configs``.  Each clip runs through every configuration before
    the next clip, so a change of the machine's load falls on all of them alike."""
    scores = [Score(categories) for _ in configs]
    for kind, frames in clips:
        for config, score in zip(configs, scores, strict=True):
            score.add(kind, frames, *run_clip(pipeline, frames, config))
    return [score.figures() for score in scores]


def smoke(videos: Path, settings: Settings) -> None:
    from darkpose.estimator import PoseEstimator
    from darkpose.service.core.video import VIDEO_SUFFIXES

    est = PoseEstimator(settings)
    for path in sorted(p for p in videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
        n = persons = dets = 0
        ids: set[int] = set()
        for tp in est.track(path):
            n += 1
            persons += len(tp)
            dets += int(tp.detected)
            ids.update(tp.track_ids)
        print(
            f"smoke {path.name}: {n} frames, {persons / max(n, 1):.1f} persons/frame, "
            f"{len(ids)} tracks, {dets} detector runs"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--ann", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--limit", type=int, default=10, help="images (each makes two clips)")
    ap.add_argument("--ks", default="1,5,10", help="detector intervals to compare")
    ap.add_argument("--models", default="pp_tinypose_256x192.onnx,pp_tinypose_128x96.onnx")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--betas", default="", help="also One-Euro betas to compare at the default k (comma list)"
    )
    ap.add_argument(
        "--keypoint-speeds",
        default="",
        help="also One-Euro keypoint_speed weights to compare at each k (comma list)",
    )
    ap.add_argument("--videos", type=Path, default=None, help="smoke-test the videos of DIR")
    args = ap.parse_args(argv)

    coco = json.loads(args.ann.read_text())
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    images = [
        im
        for im in sorted(coco["images"], key=lambda im: im["id"])
        if any(
            a.get("num_keypoints", 0) > 0 and not a.get("iscrowd")
            for a in by_image.get(im["id"], [])
        )
    ][: args.limit]
    rng = np.random.default_rng(args.seed)
    clips: list[tuple[str, list[Frame]]] = []
    for im in images:
        img = cv2.imread(str(args.images / im["file_name"]), cv2.IMREAD_COLOR)
        if img is None:
            print(f"skip {im['file_name']}: unreadable", file=sys.stderr)
            continue
        anns = by_image[im["id"]]
        clips.append(("moving", moving_clip(img, anns, args.frames, rng)))
        clips.append(("static", static_clip(img, anns, args.frames, rng)))
    ks = [int(k) for k in args.ks.split(",")]
    print(
        f"# bench/video.py: {len(images)} images x 2 clips x {args.frames} frames, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    print(f"# command: {' '.join(sys.argv)}")
    print(f"# CPU: {cpu_line()}")
    for model in args.models.split(","):
        settings = Settings(providers="cpu", pose_models=[model])
        pipeline = build_pipeline(settings)
        run_clip(pipeline, clips[0][1][:3], TrackerConfig.from_settings(settings))  # warm-up
        base = TrackerConfig.from_settings(settings)
        configs: list[tuple[int, bool, float, float]] = [
            (k, True, base.beta, base.keypoint_speed) for k in ks
        ]
        configs += [(ks[0], False, base.beta, 0.0), (base.det_every, False, base.beta, 0.0)]
        betas = [float(b) for b in args.betas.split(",") if b]
        configs += [(base.det_every, True, b, base.keypoint_speed) for b in betas]
        configs += [
            (k, True, base.beta, float(w)) for w in args.keypoint_speeds.split(",") if w for k in ks
        ]
        unique = list(dict.fromkeys(c if c[1] else (c[0], False, 0.0, 0.0) for c in configs))
        tracker_configs = [
            TrackerConfig.from_settings(
                settings, det_every=k, smoothing=smooth, beta=beta or base.beta, keypoint_speed=w
            )
            for k, smooth, beta, w in unique
        ]
        figures = evaluate(pipeline, clips, coco["categories"], tracker_configs)
        for (k, smooth, beta, w), r in zip(unique, figures, strict=True):
            smoothing = f"on (beta {beta:g}, keypoint_speed {w:g})" if smooth else "off"
            print(
                f"{model} det every k={k} smooth={smoothing}: AP {r['ap']:.3f} "
                f"frames/s {r['fps']:.1f} det_ms/frame {r['det_ms']:.1f} "
                f"(det runs/frame {r['det_runs']:.2f}) "
                f"id_switches {r['id_switches']:.2f}/100 track-frames jitter {r['jitter']:.4f}",
                flush=True,
            )
    if args.videos is not None:
        smoke(args.videos, Settings(providers="cpu"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
