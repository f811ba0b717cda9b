"""Accuracy/latency trade-off of detector configurations (one run, ratios within that run).

    python bench/detectors.py [--detectors "yolox,chips(yolox),fused(yolox,yolox@chips)"]
                              [--limit 80] [--threads 1] [--htc] [--keypoints]

Every configuration (grammar: service/runtime/detector_config.py) runs on the same coco-mini
images; the configurations are interleaved image by image in a shuffled order (the shared CPU
is noisy), so the ms/image figures and their ratio to the first configuration come from the same
conditions.  Person-box AP is pycocotools' (iouType bbox, catIds [1]) on those images.

``--htc`` adds HTC R-50 (mmdet, random weights: latency only, its AP is meaningless) at the
config's test scale 1333x800 and at 800x480, when the mmdet extra is installed.
``--keypoints`` adds the downstream keypoint AP (pose model on each configuration's boxes).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_line  # noqa: E402
from darkpose.service.commands.eval_det import (  # noqa: E402
    DEFAULT_DETECTORS,
    coco_box_metrics,
    image_ids_with_files,
    keypoint_ap,
)
from darkpose.service.evaluation import load_coco  # noqa: E402
from darkpose.service.runtime.detector_build import build_detector_from_config  # noqa: E402
from darkpose.service.runtime.detector_config import split_configs  # noqa: E402
from darkpose.service.runtime.htc import mmdet_available  # noqa: E402
from darkpose.service.settings import Settings  # noqa: E402

COCO_MINI = REPO.parent / "shared" / "data" / "coco-mini"
HTC_CONFIGS = ("htc(random=1)", "htc(random=1, scale=800x480)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--detectors", default=DEFAULT_DETECTORS)
    p.add_argument("--images", type=Path, default=COCO_MINI / "train2017")
    p.add_argument(
        "--ann", type=Path, default=COCO_MINI / "annotations" / "person_keypoints_train2017.json"
    )
    p.add_argument("--limit", type=int, default=None, help="first N images (default all)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (onnxruntime/torch)")
    p.add_argument("--det-threshold", type=float, default=0.05)
    p.add_argument("--htc", action="store_true", help="add HTC (random weights) timings")
    p.add_argument("--htc-images", type=int, default=5, help="images timed for HTC")
    p.add_argument("--keypoints", action="store_true", help="add downstream keypoint AP")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    settings = Settings(  # type: ignore[call-arg]
        providers="cpu", intra_op_threads=args.threads, det_score_threshold=args.det_threshold
    )
    coco = load_coco(args.ann)
    img_ids = image_ids_with_files(coco, args.images, args.limit)
    configs = split_configs(args.detectors)
    detectors = {c: build_detector_from_config(c, settings) for c in configs}
    images = {
        i: np.asarray(
            cv2.imread(str(args.images / coco.imgs[i]["file_name"]), cv2.IMREAD_COLOR), np.uint8
        )
        for i in img_ids
    }
    for d in detectors.values():  # warm-up
        d.detect(images[img_ids[0]])

    rng = random.Random(args.seed)
    times: dict[str, list[float]] = {c: [] for c in configs}
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    for image_id in img_ids:
        order = list(configs)
        rng.shuffle(order)
        for c in order:
            t0 = time.perf_counter()
            det = detectors[c].detect(images[image_id])
            times[c].append(time.perf_counter() - t0)
            for (x1, y1, x2, y2), s in zip(det.boxes.tolist(), det.scores.tolist(), strict=True):
                results[c].append({"image_id": image_id, "category_id": 1,
                                   "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})  # fmt: skip

    print(f"# CPU: {cpu_line()}")
    print(f"{len(img_ids)} images, {args.threads} thread(s), det threshold {args.det_threshold}")
    head = f"{'detector':<34}{'ms/img med':>11}{'mean':>8}{'x base':>8}{'AP':>7}{'AP50':>7}"
    head += f"{'APS':>7}{'APM':>7}{'APL':>7}{'AR':>7}" + (
        f"{'kpt AP':>8}" if args.keypoints else ""
    )
    print(head)
    print("-" * len(head))
    base = statistics.median(times[configs[0]])
    for c in configs:
        med, mean = statistics.median(times[c]), statistics.fmean(times[c])
        m = coco_box_metrics(coco, results[c], img_ids)
        line = f"{c:<34}{1000 * med:>11.1f}{1000 * mean:>8.1f}{med / base:>8.2f}"
        line += "".join(f"{m[k]:>7.3f}" for k in ("AP", "AP50", "APS", "APM", "APL", "AR"))
        if args.keypoints:
            line += f"{keypoint_ap(detectors[c], settings, coco, args.images, args.limit):>8.3f}"
        print(line)

    if args.htc:
        if not mmdet_available():
            print("HTC: skipped (mmdet extra not installed: .ci/install_mmdet.sh)")
            return 0
        sub = img_ids[: args.htc_images]
        yolox = detectors.get("yolox") or build_detector_from_config("yolox", settings)
        for c in HTC_CONFIGS:
            htc = build_detector_from_config(c, settings)
            htc.detect(images[sub[0]])
            t_h, t_y = [], []
            for i in sub:
                t0 = time.perf_counter()
                htc.detect(images[i])
                t_h.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                yolox.detect(images[i])
                t_y.append(time.perf_counter() - t0)
            mh, my = statistics.median(t_h), statistics.median(t_y)
            print(f"{c:<34}{1000 * mh:>11.1f}{'':>8}{mh / my:>8.2f}  (x yolox in this loop; "
                  f"random weights: no AP)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
