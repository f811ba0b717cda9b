"""The profile table of docs/accuracy.md in one run: per profile (fast, balanced, accurate; plus
"today", the configuration shipped before profiles existed, frozen here for reference), keypoint
AP on coco-val-dev with ground-truth boxes and end to end (DARK, the profile's own flip), each
with a bootstrap 95% CI over images, and the speed on one CPU thread.

    python bench/profiles.py [--profiles today,fast,balanced,accurate] [--limit N]
        [--timing-images 40] [--boot 1000] [--speed-only] [--json out.json]

AP: pycocotools COCOeval (keypoints) over the whole set; detector boxes down to the profile's
``eval_det_score_threshold``.  CI: COCOeval matches each image's detections once; a bootstrap
sample draws the images with replacement (the same draws for every row) and recomputes AP from
those images' matches with COCOeval's own accumulation (101 recall points, 10 OKS thresholds),
so 1000 resamples cost seconds, not 1000 COCOeval runs.  "Δ today" is the paired difference:
its CI comes from the same draws for both rows, which is narrower than comparing two CIs.

Speed: ``--timing-images`` images (the first of the set), the serving options of the profile
(``det_score_threshold``, ``default_max_persons``), one intra-op thread, one warm-up image, the
profiles interleaved image by image; ms per image (mean), ms per person (total time / persons
returned) and images/s.  Prints the CPU
model and flags.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pycocotools.cocoeval import COCOeval  # noqa: E402

from bench.machine import cpu_line  # noqa: E402
from darkpose.service.core.pipeline import Pipeline, PipelineOptions  # noqa: E402
from darkpose.service.core.profiles import profile_names  # noqa: E402
from darkpose.service.evaluation import gt_boxes, load_coco  # noqa: E402
from darkpose.service.runtime.factory import build_detector, build_pose_models  # noqa: E402
from darkpose.service.settings import Settings  # noqa: E402

VAL_DEV = REPO.parent / "shared" / "data" / "coco-val-dev"
#: The configuration shipped when profiles were introduced, frozen for the comparison
#: (PP-TinyPose 256x192, YOLOX-nano, no flip, evaluation threshold 0.05, NMS IoU 0.65,
#: detector cap 100, the card's blur kernel, OKS-NMS 0.9 without soft OKS-NMS, one padding).
TODAY: dict[str, Any] = {
    "pose_models": ["pp_tinypose_256x192.onnx"],
    "detector": "yolox",
    "flip": False,
    "eval_det_score_threshold": 0.05,
    "det_score_threshold": 0.3,
    "det_nms_iou": 0.65,
    "det_max_detections": 100,
    "oks_nms_threshold": 0.9,
    "soft_nms_sigma": 0.0,
    "box_padding": 1.25,
    "test_paddings": [],
}
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
#: COCO keypoint AP scores at most this many detections per image (COCOeval maxDets): the
#: end-to-end AP runs keep the highest-scoring 20 boxes, which also bounds the pose work.
COCO_MAX_DETS = 20


def settings_for(name: str) -> Settings:
    common: dict[str, Any] = {"providers": "cpu", "intra_op_threads": 1, "inter_op_threads": 1}
    if name == "today":
        return Settings(**common, **TODAY)
    return Settings(profile=name, **common)


class Matches:
    """Per-image COCOeval matches of one result set (area "all", the last maxDets)."""

    def __init__(self, coco: Any, results: list[dict[str, Any]], img_ids: list[int]) -> None:
        self.per_image: list[tuple[Any, Any, Any, int] | None] = []
        if not results:
            self.ap = 0.0
            self.per_image = [None] * len(img_ids)
            return
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(coco, coco.loadRes(results), "keypoints")
            ev.params.imgIds = img_ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        self.ap = max(0.0, float(ev.stats[0]))
        for i in range(len(img_ids)):  # evalImgs: [cat][area][image]; cat 0, area "all" first
            e = ev.evalImgs[i]
            if e is None:
                self.per_image.append(None)
                continue
            self.per_image.append(
                (
                    np.asarray(e["dtScores"]),
                    np.asarray(e["dtMatches"]),
                    np.asarray(e["dtIgnore"]),
                    int((np.asarray(e["gtIgnore"]) == 0).sum()),
                )
            )

    def ap_of(self, sample: np.ndarray) -> float:
        """AP of the images ``sample`` (indices, repeats allowed), as COCOeval accumulates."""
        parts = [self.per_image[i] for i in sample]
        kept = [p for p in parts if p is not None]
        npig = sum(p[3] for p in kept)
        if npig == 0 or not kept:
            return 0.0
        scores = np.concatenate([p[0] for p in kept])
        order = np.argsort(-scores, kind="mergesort")
        dtm = np.concatenate([p[1] for p in kept], axis=1)[:, order]
        ign = np.concatenate([p[2] for p in kept], axis=1)[:, order].astype(bool)
        tps = np.cumsum((dtm != 0) & ~ign, axis=1).astype(np.float64)
        fps = np.cumsum((dtm == 0) & ~ign, axis=1).astype(np.float64)
        aps = []
        for tp, fp in zip(tps, fps, strict=True):
            if tp.size == 0:
                aps.append(0.0)
                continue
            rc = tp / npig
            pr = tp / np.maximum(tp + fp, np.spacing(1))
            pr = np.maximum.accumulate(pr[::-1])[::-1]
            inds = np.searchsorted(rc, RECALL_POINTS, side="left")
            q = np.where(inds < pr.size, pr[np.minimum(inds, pr.size - 1)], 0.0)
            aps.append(float(q.mean()))
        return float(np.mean(aps))


def bootstrap(m: Matches, samples: np.ndarray) -> np.ndarray:
    return np.array([m.ap_of(s) for s in samples])


def evaluate_profile(
    name: str, coco: Any, images: Path, img_ids: list[int]
) -> tuple[Settings, dict[str, list[dict[str, Any]]]]:
    """COCO results with GT boxes and end to end for profile ``name``."""
    s = settings_for(name)
    pipeline = Pipeline(build_detector(s), build_pose_models(s), None, s.pose_model_weights)
    opts = pipeline.resolve_options(
        PipelineOptions.from_settings(
            s, max_persons=COCO_MAX_DETS, det_score_threshold=s.eval_det_score_threshold
        )
    )
    out: dict[str, list[dict[str, Any]]] = {"gt": [], "e2e": []}
    for image_id in img_ids:
        image = read(images, coco, image_id)
        boxes, scores = gt_boxes(coco, image_id)
        gt_opts = opts.replace(max_persons=max(opts.max_persons, len(boxes)))
        out["gt"] += pipeline(image, gt_opts, boxes, scores).to_coco(image_id)
        out["e2e"] += pipeline(image, opts).to_coco(image_id)
    return s, out


def read(images: Path, coco: Any, image_id: int) -> np.ndarray:
    path = images / coco.imgs[image_id]["file_name"]
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise SystemExit(f"expected a readable image, got nothing at {path}")
    return image


def time_profiles(
    names: list[str], coco: Any, images: Path, img_ids: list[int]
) -> dict[str, dict[str, float]]:
    """Serving options, one thread: ms/image, ms/person, images/s of each profile over
    ``img_ids``, interleaved (image by image, every profile in turn) so that a busy machine
    slows every profile alike and the ratios hold."""
    runs = {}
    frames = [read(images, coco, i) for i in img_ids]
    for n in names:
        s = settings_for(n)
        pipeline = Pipeline(build_detector(s), build_pose_models(s), None, s.pose_model_weights)
        opts = pipeline.resolve_options(PipelineOptions.from_settings(s))
        pipeline(frames[0], opts)  # warm-up
        runs[n] = (pipeline, opts)
    spent = dict.fromkeys(names, 0.0)
    persons = dict.fromkeys(names, 0)
    for frame in frames:
        for n, (pipeline, opts) in runs.items():
            t0 = time.perf_counter()
            persons[n] += len(pipeline(frame, opts).persons)
            spent[n] += time.perf_counter() - t0
    return {
        n: {
            "ms_per_image": 1000.0 * spent[n] / len(frames),
            "ms_per_person": 1000.0 * spent[n] / max(persons[n], 1),
            "images_per_s": len(frames) / spent[n],
            "persons_per_image": persons[n] / len(frames),
        }
        for n in names
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--profiles", default=",".join(["today", *profile_names()]))
    ap.add_argument("--data", type=Path, default=VAL_DEV)
    ap.add_argument("--limit", type=int, default=None, help="only the first N images")
    ap.add_argument("--timing-images", type=int, default=40)
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--speed-only", action="store_true", help="only the speed columns")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.profiles.split(",") if n.strip()]
    for n in names:
        if n != "today" and n not in profile_names():
            ap.error(f"--profiles: expected today or one of {profile_names()}, got {n!r}")
    coco = load_coco(args.data / "annotations" / "person_keypoints.json")
    images = args.data / "images"
    img_ids = sorted(coco.getImgIds())[: args.limit]
    rng = np.random.default_rng(0)
    samples = rng.integers(0, len(img_ids), size=(args.boot, len(img_ids)))
    print(f"# profiles on {args.data.name}: {len(img_ids)} images; {time.strftime('%Y-%m-%d')}")
    print(f"# CPU: {cpu_line()}")
    rows: dict[str, dict[str, Any]] = {}
    boots: dict[str, dict[str, np.ndarray]] = {}
    for n in names:
        if args.speed_only:
            s = settings_for(n)
            rows[n] = {"pose_models": ",".join(s.pose_models), "detector": s.detector,
                       "flip": s.pipeline.flip, "serving": s.pipeline.det_score_threshold,
                       "AP_gt": math.nan, "CI_gt": (math.nan, math.nan),
                       "AP_e2e": math.nan, "CI_e2e": (math.nan, math.nan)}  # fmt: skip
            boots[n] = {"gt": np.zeros(args.boot), "e2e": np.zeros(args.boot)}
            continue
        s, res = evaluate_profile(n, coco, images, img_ids)
        row: dict[str, Any] = {
            "pose_models": ",".join(s.pose_models),
            "detector": s.detector,
            "flip": s.pipeline.flip,
            "serving": s.pipeline.det_score_threshold,
        }
        boots[n] = {}
        for kind in ("gt", "e2e"):
            m = Matches(coco, res[kind], img_ids)
            b = bootstrap(m, samples)
            boots[n][kind] = b - m.ap  # centred: the paired difference uses the same draws
            row[f"AP_{kind}"] = m.ap
            row[f"CI_{kind}"] = (float(np.percentile(b, 2.5)), float(np.percentile(b, 97.5)))
        rows[n] = row
        print(f"# {n}: evaluated", file=sys.stderr, flush=True)
    for n, t in time_profiles(names, coco, images, img_ids[: args.timing_images]).items():
        rows[n].update(t)
    ref = "today" if "today" in rows else None
    print(
        "| profile | pose model | detector | flip | serving threshold | AP GT boxes [95% CI] | "
        "AP end to end [95% CI] | Δ today (e2e) [95% CI] | ms/image | ms/person | images/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, r in rows.items():
        delta = "—"
        if ref is not None and n != ref:
            d = r["AP_e2e"] - rows[ref]["AP_e2e"]
            db = d + boots[n]["e2e"] - boots[ref]["e2e"]
            delta = f"{d:+.3f} [{np.percentile(db, 2.5):+.3f}, {np.percentile(db, 97.5):+.3f}]"
            r["delta_today"] = d
        print(
            f"| {n} | {r['pose_models']} | {r['detector']} | {'on' if r['flip'] else 'off'} | "
            f"{r['serving']:g} | "
            f"{r['AP_gt']:.3f} [{r['CI_gt'][0]:.3f}, {r['CI_gt'][1]:.3f}] | "
            f"{r['AP_e2e']:.3f} [{r['CI_e2e'][0]:.3f}, {r['CI_e2e'][1]:.3f}] | {delta} | "
            f"{r['ms_per_image']:.0f} | {r['ms_per_person']:.1f} | {r['images_per_s']:.2f} |"
        )
    if "fast" in rows and "balanced" in rows:
        ratio = rows["fast"]["images_per_s"] / rows["balanced"]["images_per_s"]
        print(f"\nfast / balanced images/s (one thread, same run): {ratio:.2f}x")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
