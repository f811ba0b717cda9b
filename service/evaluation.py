"""COCO keypoint evaluation of the pipeline (pycocotools), one row per configuration.

For every image the network runs **once per box source** (with the mirrored crops in the same
call when any flip configuration is asked for); the resulting heatmaps are then decoded with
every requested method and flip variant (:meth:`Pipeline.finish`), so a table of 3 decoders ×
2 flip settings costs one network pass, not six.

Box sources: ``gt`` = the annotated persons with ``num_keypoints > 0`` and ``iscrowd == 0``,
box score 1 (the paper's "ground-truth boxes" setting); ``detector`` = the pipeline's detector.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from darkpose.service.core.errors import InvalidParameter
from darkpose.service.core.pipeline import Pipeline, PipelineOptions
from darkpose.service.core.transforms import xywh_to_xyxy
from darkpose.service.core.types import F32

logger = logging.getLogger(__name__)

BOX_SOURCES: tuple[str, ...] = ("gt", "detector")
METRICS: tuple[str, ...] = ("AP", "AP50", "AP75", "APM", "APL", "AR")
#: (image, options, boxes, scores, image id) of an image waiting for its pose-model call
_Pending = tuple[npt.NDArray[np.uint8], PipelineOptions, F32, F32, int]
#: Crops of consecutive images gathered into one pose-model call by :func:`evaluate`.
DEFAULT_BATCH_CROPS = 16


@dataclass(frozen=True)
class EvalConfig:
    """One evaluated configuration (a table row)."""

    boxes: str
    decode: str
    flip: bool
    flip_shift: bool

    @property
    def label(self) -> str:
        flip = ("on" + ("" if self.flip_shift else " (no shift)")) if self.flip else "off"
        return f"{self.boxes}/{self.decode}/flip {flip}"


@dataclass
class EvalRow:
    """A configuration and its metrics (AP, AP50, AP75, APM, APL, AR) + counts."""

    config: EvalConfig
    metrics: dict[str, float]
    num_results: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.config), **self.metrics, "num_results": self.num_results}


def load_coco(ann_file: str | Path) -> COCO:
    """pycocotools COCO index of ``ann_file`` (its stdout chatter suppressed)."""
    path = Path(ann_file)
    if not path.is_file():
        raise InvalidParameter(f"--ann: expected a COCO keypoint annotation file, got {path}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def check_evaluable(coco: COCO, images_dir: str | Path) -> None:
    """:class:`InvalidParameter` (CLI exit 2) unless ``coco`` has keypoint annotations and at
    least one of its images is a file under ``images_dir`` (an all-zero table is no result)."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InvalidParameter(f"--images: expected a directory, got {images_dir}")
    anns = coco.loadAnns(coco.getAnnIds())
    if not any(a.get("num_keypoints", 0) > 0 for a in anns):
        raise InvalidParameter(
            f"--ann: expected COCO keypoint annotations (num_keypoints > 0), got "
            f"{len(anns)} annotations without keypoints (a detection file?)"
        )
    infos = coco.loadImgs(coco.getImgIds())
    if not any((images_dir / info["file_name"]).is_file() for info in infos):
        example = infos[0]["file_name"] if infos else "?"
        raise InvalidParameter(
            f"--images: expected the annotated images (e.g. {example}) in {images_dir}, "
            f"got none of the {len(infos)}"
        )


def gt_boxes(coco: COCO, image_id: int) -> tuple[F32, F32]:
    """GT person boxes of ``image_id`` (``num_keypoints > 0``, not crowd): (M, 4) xyxy, scores
    (M,) = 1."""
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False))
    xywh = [
        a["bbox"]
        for a in anns
        if a.get("num_keypoints", 0) > 0 and not a.get("iscrowd", 0) and a["bbox"][2] > 0
    ]
    if not xywh:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    boxes = xywh_to_xyxy(np.asarray(xywh, np.float64))
    return boxes, np.ones((boxes.shape[0],), np.float32)


def coco_keypoint_metrics(
    coco: COCO, results: list[dict[str, Any]], img_ids: Sequence[int] | None = None
) -> dict[str, float]:
    """pycocotools keypoint AP/AR of ``results`` against ``coco`` on ``img_ids`` (default: all
    its images; results on other images are left out)."""
    if img_ids is not None:
        keep = set(img_ids)
        results = [r for r in results if r["image_id"] in keep]
    if not results:
        return dict.fromkeys(METRICS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco.loadRes(results)
        ev = COCOeval(coco, dt, "keypoints")
        ev.params.imgIds = sorted(coco.getImgIds() if img_ids is None else img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [max(0.0, float(v)) for v in ev.stats[:6]]
    return dict(zip(METRICS, stats, strict=True))


def expand_configs(
    box_sources: Sequence[str],
    decodes: Sequence[str],
    flips: Sequence[bool],
    flip_shifts: Sequence[bool],
) -> list[EvalConfig]:
    """Every combination (flip shift only varies when flip is on)."""
    for b in box_sources:
        if b not in BOX_SOURCES:
            raise InvalidParameter(f"--boxes: expected gt or detector, got {b!r}")
    configs: list[EvalConfig] = []
    for b in box_sources:
        for flip in flips:
            for shift in flip_shifts if flip else flip_shifts[:1]:
                for d in decodes:
                    configs.append(EvalConfig(b, d, flip, shift if flip else flip_shifts[0]))
    return configs


def evaluate(
    pipeline: Pipeline,
    images_dir: str | Path,
    coco: COCO,
    configs: Sequence[EvalConfig],
    base_options: PipelineOptions | None = None,
    progress: bool = True,
    limit: int | None = None,
    batch_crops: int = DEFAULT_BATCH_CROPS,
) -> tuple[list[EvalRow], dict[EvalConfig, list[dict[str, Any]]]]:
    """Run ``pipeline`` over the images of ``coco`` and score every configuration.

    The persons' crops of consecutive images are batched into one pose-model call once they
    number at least ``batch_crops`` (1: one call per image), per box source.

    Returns the rows (in ``configs`` order) and the COCO results per configuration.
    """
    base = base_options or pipeline.options
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InvalidParameter(f"--images: expected a directory, got {images_dir}")
    img_ids = sorted(coco.getImgIds())[: limit if limit else None]
    results: dict[EvalConfig, list[dict[str, Any]]] = {c: [] for c in configs}
    sources = list(dict.fromkeys(c.boxes for c in configs))
    if "detector" in sources and pipeline.detector is None:
        raise InvalidParameter("--boxes detector: expected a pipeline with a detector, got none")
    any_flip = {s: any(c.flip for c in configs if c.boxes == s) for s in sources}
    missing = 0
    # per box source: (image, options, boxes, scores, image id) waiting for one pose call
    pending: dict[str, list[tuple[npt.NDArray[np.uint8], PipelineOptions, F32, F32, int]]] = {
        s: [] for s in sources
    }

    def flush(source: str) -> None:
        items = pending[source]
        if not items:
            return
        stages = pipeline.run_models_many(
            [it[0] for it in items],
            [it[1] for it in items],
            [it[2] for it in items],
            [it[3] for it in items],
            [it[4] for it in items],
        )
        for stage in stages:
            for cfg in configs:
                if cfg.boxes != source:
                    continue
                opts = base.replace(decode=cfg.decode, flip=cfg.flip, flip_shift=cfg.flip_shift)
                results[cfg].extend(pipeline.finish(stage, opts).to_coco(stage.image_id))
        items.clear()

    t0 = time.perf_counter()
    bar = tqdm(img_ids, desc="eval", unit="img", file=sys.stderr, disable=not progress)
    for image_id in bar:
        info = coco.loadImgs([image_id])[0]
        path = images_dir / info["file_name"]
        read = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if read is None:
            missing += 1
            logger.warning("image %s: expected a readable file, got nothing; skipped", path)
            continue
        image = np.asarray(read, np.uint8)
        for source in sources:
            run_opts = base.replace(flip=any_flip[source])
            if source == "gt":
                boxes, scores = gt_boxes(coco, image_id)
                # every GT box is evaluated: the per-request person cap does not apply here
                run_opts = run_opts.replace(max_persons=max(run_opts.max_persons, len(boxes)))
            else:
                boxes, scores = pipeline.person_boxes(image, run_opts)
            pending[source].append((image, run_opts, boxes, scores, image_id))
            if sum(len(b) * o.crops_per_person for _, o, b, _, _ in pending[source]) >= batch_crops:
                flush(source)
    for source in sources:
        flush(source)
    elapsed = time.perf_counter() - t0
    logger.info(
        "evaluated %d images (%d missing) × %d configurations in %.1f s (%.2f images/s)",
        len(img_ids) - missing,
        missing,
        len(configs),
        elapsed,
        (len(img_ids) - missing) / max(elapsed, 1e-9),
    )
    rows = [EvalRow(c, coco_keypoint_metrics(coco, results[c]), len(results[c])) for c in configs]
    return rows, results


def format_table(rows: Sequence[EvalRow]) -> str:
    """A fixed-width table like the paper's Table 1."""
    head = f"{'boxes':<9}{'decode':<10}{'flip':<14}" + "".join(f"{m:>7}" for m in METRICS)
    lines = [head, "-" * len(head)]
    for r in rows:
        c = r.config
        flip = ("on" + ("" if c.flip_shift else " no-shift")) if c.flip else "off"
        lines.append(
            f"{c.boxes:<9}{c.decode:<10}{flip:<14}"
            + "".join(f"{r.metrics[m]:>7.3f}" for m in METRICS)
        )
    return "\n".join(lines)
