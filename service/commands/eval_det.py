"""``darkpose eval-det``: COCO person-box AP (and optionally keypoint AP) per detector config.

Example (docs/benchmarks.md, "Detectors")::

    darkpose eval-det --images ../shared/data/coco-mini/train2017 \\
        --ann ../shared/data/coco-mini/annotations/person_keypoints_train2017.json \\
        --detectors "yolox,chips(yolox),fused(yolox,yolox@chips)" --keypoints

Every configuration (grammar: :mod:`darkpose.service.runtime.detector_config`) runs over the images
of
the annotation file; its person boxes are scored with pycocotools (``iouType="bbox"``,
``catIds=[1]``); ``R@.5kp`` / ``R@.7kp`` are the share of annotated persons with keypoints (the
ones the pose stage is scored on) that some box covers at IoU >= 0.5 / 0.7.
``--keypoints`` also runs the pose model on each configuration's boxes and
reports the downstream keypoint AP (DARK decoding, no flip; as ``darkpose eval --boxes
detector`` with ``DARKPOSE_DETECTOR=<config>``).  ``ms/img`` is the detector's mean wall time
per image in this run (model loading and one warm-up image excluded).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pycocotools.coco import COCO

    from darkpose.service.core.types import Detector, PoseModel
    from darkpose.service.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_DETECTORS = "yolox,chips(yolox),fused(yolox,yolox@chips)"
BOX_METRICS: tuple[str, ...] = ("AP", "AP50", "AP75", "APS", "APM", "APL", "AR")
#: COCOeval ``stats`` indices of :data:`BOX_METRICS` (AR = AR@100)
_STATS_INDEX = (0, 1, 2, 3, 4, 5, 8)
#: IoUs of :func:`keypoint_person_recall`: a person the pose stage can use needs a box at IoU
#: >= 0.5 (COCO's box match), and >= 0.7 for a crop that holds the whole person.
RECALL_IOUS: tuple[float, ...] = (0.5, 0.7)


def recall_name(iou: float) -> str:
    """The metric key of recall at ``iou``: ``R@.5kp``, ``R@.7kp``."""
    return f"R@{iou:.1f}".replace("0.", ".") + "kp"


@dataclass
class DetRow:
    """One detector configuration: box metrics, speed and optionally keypoint AP."""

    detector: str
    metrics: dict[str, float]
    ms_per_image: float
    num_images: int
    num_boxes: int
    keypoint_ap: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"detector": self.detector, **self.metrics}
        out.update(ms_per_image=round(self.ms_per_image, 2), num_images=self.num_images,
                   num_boxes=self.num_boxes, keypoint_AP=self.keypoint_ap)  # fmt: skip
        return out


def coco_box_metrics(
    coco: COCO, results: list[dict[str, Any]], img_ids: list[int]
) -> dict[str, float]:  # noqa: E501
    """pycocotools person-box AP/AR of ``results`` (``category_id`` 1) on ``img_ids``."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return dict.fromkeys(BOX_METRICS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco.loadRes(results)
        ev = COCOeval(coco, dt, "bbox")
        ev.params.catIds = [1]
        ev.params.imgIds = sorted(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {m: max(0.0, float(ev.stats[i])) for m, i in zip(BOX_METRICS, _STATS_INDEX, strict=True)}


def _iou(a: Any, b: Any) -> Any:
    """IoU matrix (N, M) of xyxy boxes ``a`` (N, 4) and ``b`` (M, 4)."""
    import numpy as np

    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0.0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def keypoint_person_recall(
    coco: COCO, results: list[dict[str, Any]], img_ids: list[int]
) -> dict[str, float]:
    """Share of the annotated persons the pose stage needs (``num_keypoints > 0``, not crowd)
    that some box of ``results`` (COCO bbox results, any score) covers at IoU >= each of
    :data:`RECALL_IOUS`: ``{"R@.5kp": 0.99, "R@.7kp": 0.93}``."""
    import numpy as np

    by_image: dict[int, list[list[float]]] = {}
    for r in results:
        x, y, w, h = r["bbox"]
        by_image.setdefault(int(r["image_id"]), []).append([x, y, x + w, y + h])
    hits = np.zeros(len(RECALL_IOUS))
    total = 0
    for image_id in img_ids:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False))
        gt = np.asarray(
            [
                [
                    a["bbox"][0],
                    a["bbox"][1],
                    a["bbox"][0] + a["bbox"][2],
                    a["bbox"][1] + a["bbox"][3],
                ]
                for a in anns
                if a.get("num_keypoints", 0) > 0 and not a.get("iscrowd", 0)
            ],
            np.float64,
        ).reshape(-1, 4)
        total += len(gt)
        boxes = np.asarray(by_image.get(image_id, []), np.float64).reshape(-1, 4)
        if len(gt) == 0 or len(boxes) == 0:
            continue
        best = _iou(gt, boxes).max(axis=1)
        hits += [(best >= t).sum() for t in RECALL_IOUS]
    return {
        recall_name(t): float(h / max(total, 1)) for t, h in zip(RECALL_IOUS, hits, strict=True)
    }


def image_ids_with_files(coco: COCO, images_dir: Path, limit: int | None = None) -> list[int]:
    """Ids of the annotation file's images that exist in ``images_dir`` (sorted; first
    ``limit``)."""
    from darkpose.service.core.errors import InvalidParameter

    if not images_dir.is_dir():
        raise InvalidParameter(f"--images: expected a directory, got {images_dir}")
    ids = [
        i for i in sorted(coco.getImgIds()) if (images_dir / coco.imgs[i]["file_name"]).is_file()
    ]
    if not ids:
        raise InvalidParameter(
            f"--images: expected the annotation file's images in {images_dir}, got none there"
        )
    return ids[:limit] if limit else ids


def run_detector(
    detector: Detector,
    coco: COCO,
    images_dir: Path,
    img_ids: list[int],
    progress: bool = False,
    desc: str = "detect",
) -> tuple[list[dict[str, Any]], float]:
    """Detect persons on every image → (COCO bbox results, mean ms per image).  The first
    image is run once more before timing (warm-up)."""
    import cv2
    from tqdm import tqdm

    def load(i: int) -> Any:
        # EXIF orientation is not applied, as in the service (service/core/io.py)
        flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
        return cv2.imread(str(images_dir / coco.imgs[i]["file_name"]), flags)

    detector.detect(load(img_ids[0]))  # warm-up (lazy allocations, thread pools)
    results: list[dict[str, Any]] = []
    elapsed = 0.0
    for image_id in tqdm(img_ids, desc=desc, unit="img", file=sys.stderr, disable=not progress):
        image = load(image_id)
        t0 = time.perf_counter()
        det = detector.detect(image)
        elapsed += time.perf_counter() - t0
        for (x1, y1, x2, y2), s in zip(det.boxes.tolist(), det.scores.tolist(), strict=True):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": 1,
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(s), 5),
                }
            )
    return results, 1000.0 * elapsed / max(1, len(img_ids))


def keypoint_ap(
    detector: Detector,
    settings: Settings,
    coco: COCO,
    images_dir: Path,
    limit: int | None,
    pose_models: Sequence[PoseModel] | None = None,
) -> float:
    """Downstream keypoint AP of the pose model on ``detector``'s boxes (DARK, no flip).

    ``pose_models``: already built models to reuse (default: built from ``settings``)."""
    from darkpose.service.core.pipeline import Pipeline, PipelineOptions
    from darkpose.service.evaluation import evaluate, expand_configs
    from darkpose.service.runtime.factory import build_pose_models

    base = PipelineOptions.from_settings(settings, max_persons=settings.max_persons)
    models = pose_models if pose_models is not None else build_pose_models(settings)
    pipeline = Pipeline(detector, models, base, settings.pose_model_weights)
    configs = expand_configs(["detector"], ["dark"], [False], [settings.pipeline.flip_shift])
    rows, _ = evaluate(pipeline, images_dir, coco, configs, base, progress=False, limit=limit)
    return float(rows[0].metrics["AP"])


def evaluate_detectors(
    configs: list[str],
    settings: Settings,
    images_dir: Path,
    ann: Path,
    *,
    keypoints: bool = False,
    limit: int | None = None,
    progress: bool = False,
) -> list[DetRow]:
    """Build every detector config with ``settings`` and score it (one :class:`DetRow` each)."""
    from darkpose.service.core.errors import InvalidParameter
    from darkpose.service.evaluation import load_coco
    from darkpose.service.runtime.detector_build import build_detector_from_config
    from darkpose.service.runtime.factory import build_pose_models

    coco = load_coco(ann)
    if keypoints and not any("keypoints" in a for a in coco.anns.values()):
        raise InvalidParameter(
            f"--keypoints: expected a person_keypoints annotation file, got {ann.name} "
            "without keypoints"
        )
    img_ids = image_ids_with_files(coco, images_dir, limit)
    pose_models = build_pose_models(settings) if keypoints else None  # shared by every config
    rows = []
    for text in configs:
        t0 = time.perf_counter()
        detector = build_detector_from_config(text, settings)
        build_s = time.perf_counter() - t0
        results, ms = run_detector(detector, coco, images_dir, img_ids, progress, desc=text)
        metrics = coco_box_metrics(coco, results, img_ids)
        metrics.update(keypoint_person_recall(coco, results, img_ids))
        row = DetRow(text, metrics, ms, len(img_ids),
                     len(results), extra={"build_s": round(build_s, 2)})  # fmt: skip
        if keypoints:
            row.keypoint_ap = keypoint_ap(detector, settings, coco, images_dir, limit, pose_models)
        logger.info("%s: AP %.3f, %.1f ms/img", text, row.metrics["AP"], ms)
        rows.append(row)
    return rows


def format_table(rows: list[DetRow]) -> str:
    """Fixed-width table: detector, box AP metrics, ms/img, (keypoint AP)."""
    width = max([len("detector")] + [len(r.detector) for r in rows]) + 2
    kp = any(r.keypoint_ap is not None for r in rows)
    names = BOX_METRICS + tuple(recall_name(t) for t in RECALL_IOUS)
    head = f"{'detector':<{width}}" + "".join(f"{m:>7}" for m in names) + f"{'ms/img':>9}"
    head += f"{'kpt AP':>8}" if kp else ""
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r.detector:<{width}}" + "".join(
            f"{r.metrics[m]:>7.3f}" if m in r.metrics else f"{'-':>7}" for m in names
        )
        line += f"{r.ms_per_image:>9.1f}"
        if kp:
            line += f"{r.keypoint_ap:>8.3f}" if r.keypoint_ap is not None else f"{'-':>8}"
        lines.append(line)
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, required=True, help="image directory")
    parser.add_argument(
        "--ann",
        type=Path,
        required=True,
        help="COCO instances or person_keypoints annotation JSON (person = category 1)",
    )
    parser.add_argument(
        "--detectors",
        default=DEFAULT_DETECTORS,
        help=f"comma-separated detector configs (default {DEFAULT_DETECTORS!r})",
    )
    parser.add_argument(
        "--det-threshold",
        type=float,
        default=0.05,
        help="detector score threshold for every config (default 0.05; the service's own "
        "default is DARKPOSE_DET_SCORE_THRESHOLD)",
    )
    parser.add_argument(
        "--keypoints",
        action="store_true",
        help="also report downstream keypoint AP (needs a person_keypoints --ann)",
    )
    parser.add_argument(
        "--providers", choices=("auto", "cpu", "cuda"), default=None, help="onnxruntime providers"
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from darkpose.service.core.errors import InvalidParameter
    from darkpose.service.core.options import given
    from darkpose.service.runtime.detector_config import parse_detector_config, split_configs
    from darkpose.service.settings import Settings

    overrides = given(providers=args.providers, det_score_threshold=args.det_threshold)
    if args.limit is not None and args.limit < 1:
        raise InvalidParameter(f"--limit: expected >= 1, got {args.limit}")
    settings = Settings(**overrides)
    configs = split_configs(args.detectors)
    for c in configs:  # syntax errors before any model is loaded
        parse_detector_config(c)
    rows = evaluate_detectors(
        configs,
        settings,
        args.images,
        args.ann,
        keypoints=args.keypoints,
        limit=args.limit,
        progress=not args.no_progress,
    )
    if args.json:
        sys.stdout.write(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
    else:
        sys.stdout.write(format_table(rows) + "\n")
    return 0
