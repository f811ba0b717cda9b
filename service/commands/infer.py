"""``darkpose infer IMAGE_OR_DIR [--out results.json] [--vis OUT_DIR]``.

Runs the pipeline on one image or every image of a directory (jpg/jpeg/png/webp/bmp) and writes
the COCO keypoint results (a JSON list) to ``--out``, or to stdout without it (logs and the
progress bar go to stderr).  Each result carries ``file_name`` (the source file's name) next to
``image_id``, which is the numeric file stem when there is one (COCO file names), else the index
of the file in sorted order.  EXIF orientation is applied (coordinates refer to the upright
photo) unless ``--exif-orientation off``.  With ``--vis`` an overlay PNG (boxes + skeletons) is
written per image.  Unreadable images are reported and skipped; the exit status is 1 when any
image failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from darkpose.service.core.choices import PROVIDERS
    from darkpose.service.core.codec import DECODERS

    parser.add_argument("input", type=Path, metavar="IMAGE_OR_DIR", help="an image or a directory")
    parser.add_argument(
        "--out", type=Path, default=None, help="COCO results JSON to write (default: stdout)"
    )
    parser.add_argument("--vis", type=Path, default=None, help="directory for overlay PNGs")
    parser.add_argument(
        "--decode", choices=tuple(DECODERS), default=None, help="decoder (default: the card's)"
    )
    parser.add_argument("--flip", choices=("on", "off"), default=None, help="flip test")
    parser.add_argument(
        "--det-threshold", type=float, default=None, help="detector score threshold"
    )
    parser.add_argument("--max-persons", type=int, default=None, help="at most this many persons")
    parser.add_argument(
        "--providers", choices=PROVIDERS, default=None, help="onnxruntime providers"
    )
    parser.add_argument(
        "--exif-orientation",
        choices=("on", "off"),
        default="on",
        help="turn photos upright per their EXIF orientation before inference (default: on); "
        "off = pixels as stored (COCO convention)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def list_images(path: Path) -> list[Path]:
    """``path`` itself, or the image files directly inside the directory ``path`` (sorted)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [path]


def image_id_for(path: Path, index: int) -> int:
    return int(path.stem) if path.stem.isdigit() else index


def run(args: argparse.Namespace) -> int:
    import cv2
    from tqdm import tqdm

    from darkpose.service.core.errors import DarkPoseError
    from darkpose.service.core.io import read_image_file
    from darkpose.service.core.pipeline import PipelineOptions, too_small_for_person
    from darkpose.service.core.visualize import draw_poses
    from darkpose.service.runtime.factory import build_pipeline
    from darkpose.service.settings import Settings

    overrides: dict[str, object] = {}
    if args.providers is not None:
        overrides["providers"] = args.providers
    settings = Settings(**overrides)  # type: ignore[arg-type]
    if not args.input.exists():
        logger.error("input: expected an image file or a directory, got %s (missing)", args.input)
        return 2
    images = list_images(args.input)
    if not images:
        logger.error(
            "input: expected image files (%s) in %s, got none", " ".join(IMAGE_SUFFIXES), args.input
        )
        return 2
    opt_overrides: dict[str, object] = {}
    if args.decode is not None:
        opt_overrides["decode"] = args.decode
    if args.flip is not None:
        opt_overrides["flip"] = args.flip == "on"
    if args.det_threshold is not None:
        opt_overrides["det_score_threshold"] = args.det_threshold
    if args.max_persons is not None:
        opt_overrides["max_persons"] = args.max_persons
    options = PipelineOptions.from_settings(settings, **opt_overrides)
    pipeline = build_pipeline(settings)
    if args.vis is not None:
        args.vis.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, object]] = []
    failed = 0
    persons = 0
    bar = tqdm(images, desc="infer", unit="img", file=sys.stderr, disable=args.no_progress)
    for index, path in enumerate(bar):
        image_id = image_id_for(path, index)
        try:
            image = read_image_file(
                path, **settings.image_limits, exif_orientation=args.exif_orientation == "on"
            )
            if too_small_for_person(image, settings.min_image_side):
                logger.info("%s: %dx%d, too small for a person", path.name, *image.shape[1::-1])
                continue
            result = pipeline(image, options, image_id=image_id)
        except DarkPoseError as exc:
            failed += 1
            logger.error("%s: %s", path, exc.message)
            continue
        results.extend({**r, "file_name": path.name} for r in result.to_coco(image_id))
        persons += len(result)
        timings = " ".join(f"{k}={1000 * v:.1f}ms" for k, v in result.timings.items())
        logger.debug("%s: %d persons, %s", path.name, len(result), timings)
        if args.vis is not None:
            overlay = draw_poses(image, result)
            cv2.imwrite(str(args.vis / f"{path.stem}.png"), overlay)
    if args.out is None:
        sys.stdout.write(json.dumps(results) + "\n")
        sys.stdout.flush()
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results))
    logger.info(
        "%d images, %d persons, %d failed → %s",
        len(images) - failed,
        persons,
        failed,
        args.out if args.out is not None else "stdout",
    )
    return 1 if failed else 0
