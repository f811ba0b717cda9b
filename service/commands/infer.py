"""``darkpose infer IMAGE_OR_DIR [--out results.json] [--vis OUT_DIR]``, or
``darkpose infer VIDEO [--out annotated.mp4] [--json frames.ndjson] [--fps N]``.

Runs the pipeline on one image or every image of a directory (jpg/jpeg/png/webp/bmp) and writes
the COCO keypoint results (a JSON list) to ``--out``, or to stdout without it (logs and the
progress bar go to stderr).  Each result carries ``file_name`` (the source file's name) next to
``image_id``, which is the numeric file stem when there is one (COCO file names), else the index
of the file in sorted order.  EXIF orientation is applied (coordinates refer to the upright
photo) unless ``--exif-orientation off``.  With ``--vis`` an overlay PNG (boxes + skeletons) is
written per image.  Unreadable images are reported and skipped; the exit status is 1 when any
image failed.

A video file (.mp4 .m4v .mov .mkv .webm) is tracked instead (docs/video.md): one NDJSON line per
frame (frame, timestamp, detected, persons with ``track_id``; the lines ``POST /pose/video``
streams) to ``--json`` or stdout, and with ``--out`` the annotated video (H.264 MP4, or by the
suffix's container).  ``--fps`` samples, ``--det-every`` / ``--smooth`` override the settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from darkpose.service.core.choices import PROVIDERS
    from darkpose.service.core.codec import DECODERS

    parser.add_argument(
        "input", type=Path, metavar="IMAGE_OR_DIR", help="an image, a directory or a video file"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="COCO results JSON to write (default: stdout); for a video: the annotated video",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="video: per-frame NDJSON (default: stdout)"
    )
    parser.add_argument("--fps", type=float, default=None, help="video: frames/s to sample")
    parser.add_argument(
        "--det-every", type=int, default=None, help="video: run the detector every N frames"
    )
    parser.add_argument(
        "--smooth", choices=("on", "off"), default=None, help="video: One-Euro smoothing"
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
    from darkpose.service.core.pipeline import too_small_for_person
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
    from darkpose.service.core.video import VIDEO_SUFFIXES

    if args.input.is_file() and args.input.suffix.lower() in VIDEO_SUFFIXES:
        return run_video(args, settings, _options(args, settings))
    images = list_images(args.input)
    if not images:
        logger.error(
            "input: expected image files (%s) in %s, got none", " ".join(IMAGE_SUFFIXES), args.input
        )
        return 2
    options = _options(args, settings)
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


def _options(args: argparse.Namespace, settings: Any) -> Any:
    """The pipeline options of the settings with the command line's overrides."""
    from darkpose.service.core.options import PipelineOptions, given

    flip = None if args.flip is None else args.flip == "on"
    return PipelineOptions.from_settings(
        settings,
        **given(
            decode=args.decode,
            flip=flip,
            det_score_threshold=args.det_threshold,
            max_persons=args.max_persons,
        ),
    )


def run_video(args: argparse.Namespace, settings: Any, options: Any) -> int:
    """Track a video file: NDJSON lines to ``--json`` (or stdout), the overlay to ``--out``."""
    from tqdm import tqdm

    from darkpose.service.api.tracking import frame_json
    from darkpose.service.core.errors import DarkPoseError
    from darkpose.service.core.options import given
    from darkpose.service.core.tracking import PoseTracker, TrackerConfig
    from darkpose.service.core.video import VideoWriter, check_fps, open_video
    from darkpose.service.core.visualize import draw_poses
    from darkpose.service.runtime.factory import build_pipeline

    smooth = None if args.smooth is None else args.smooth == "on"
    try:
        fps = check_fps(args.fps)
        config = TrackerConfig.from_settings(
            settings, **given(det_every=args.det_every, smoothing=smooth)
        )
        reader = open_video(args.input, **settings.video_limits)
    except DarkPoseError as exc:
        logger.error("%s: %s", args.input, exc.message)
        return 2
    pipeline = build_pipeline(settings)
    tracker = PoseTracker(pipeline, config, options, min_side=settings.min_image_side)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
    sink = args.json.open("w", encoding="utf-8") if args.json is not None else sys.stdout
    writer = None
    failed = False
    total = reader.info.frames or None
    if fps and reader.info.fps and total:
        total = min(total, int(reader.info.duration_s * fps) + 1)
    bar = tqdm(total=total, desc="track", unit="frame", file=sys.stderr, disable=args.no_progress)
    try:
        with reader:
            for vf in reader.frames(fps=fps):
                frame = tracker.process(vf.image, vf.timestamp, index=vf.index)
                sink.write(json.dumps(frame_json(frame), separators=(",", ":")) + "\n")
                if args.out is not None:
                    if writer is None:
                        h, w = vf.image.shape[:2]
                        writer = VideoWriter(args.out, w, h, fps or reader.info.rate)
                    writer.write(draw_poses(vf.image, frame.poses))
                bar.update(1)
    except DarkPoseError as exc:
        logger.error("%s: %s (the frames before it were written)", args.input, exc.message)
        failed = True
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        if sink is not sys.stdout:
            sink.close()
        else:
            sys.stdout.flush()
    logger.info(
        "%d frames, %d detector runs, %d tracks → %s%s",
        tracker.frames,
        tracker.detections,
        tracker.tracker.ids_issued,
        args.json if args.json is not None else "stdout",
        f", {args.out}" if args.out is not None else "",
    )
    return 1 if failed else 0
