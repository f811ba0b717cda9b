"""``darkpose eval``: COCO keypoint AP for every decode × flip × box-source combination.

Example (docs/benchmarks.md, "Keypoint accuracy")::

    darkpose eval --images ../shared/data/coco-mini/train2017 \\
        --ann ../shared/data/coco-mini/annotations/person_keypoints_train2017.json \\
        --boxes gt,detector --decode argmax,standard,dark --flip off,on

The network runs once per image and box source; every decoder and flip variant reuses those
heatmaps.  Prints one table (AP, AP50, AP75, APM, APL, AR) or, with ``--json``, a JSON list.

Protocol: detector boxes are kept down to ``DARKPOSE_EVAL_DET_SCORE_THRESHOLD`` (default 0.05,
as COCO keypoint evaluations keep low-scoring detections; the serving threshold
``DARKPOSE_DET_SCORE_THRESHOLD`` is a separate setting); ``--det-threshold`` overrides it.
``--decode`` defaults to every decoder of :data:`darkpose.service.core.codec.DECODERS` (a model that
decodes in its graph: its card's decode).  Exit status 2 with a message when the annotation
file has no keypoint annotations or none of its images is found under ``--images``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path


def _csv(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {', '.join(choices)}, got {text!r}"
            )
        return list(dict.fromkeys(items))

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from darkpose.service.core.codec import DECODERS

    parser.add_argument("--images", type=Path, required=True, help="image directory")
    parser.add_argument(
        "--ann", type=Path, required=True, help="COCO person_keypoints annotation JSON"
    )
    parser.add_argument(
        "--boxes",
        type=_csv(("gt", "detector")),
        default=["gt"],
        help="box sources: gt,detector (default gt)",
    )
    parser.add_argument(
        "--decode",
        type=_csv(tuple(DECODERS)),
        default=None,
        help=f"decoders: {','.join(DECODERS)} (default: all; an in-graph decode: the card's)",
    )
    parser.add_argument(
        "--flip", type=_csv(("off", "on")), default=["off"], help="flip test: off,on (default off)"
    )
    parser.add_argument(
        "--flip-shift",
        type=_csv(("on", "off")),
        default=None,
        help="with flip on: the 1-pixel shift, on,off to compare (default: DARKPOSE_FLIP_SHIFT)",
    )
    parser.add_argument(
        "--det-threshold",
        type=float,
        default=None,
        help="detector score threshold (default DARKPOSE_EVAL_DET_SCORE_THRESHOLD, 0.05)",
    )
    parser.add_argument(
        "--providers", choices=("auto", "cpu", "cuda"), default=None, help="onnxruntime providers"
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument(
        "--batch-crops",
        type=int,
        default=None,
        help="crops of consecutive images run in one pose-model call once they number at least "
        "this many (1 = one call per image; default darkpose.service.evaluation."
        "DEFAULT_BATCH_CROPS)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--results-dir", type=Path, default=None, help="write results per row")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from darkpose.service.core.codec import DECODERS
    from darkpose.service.core.options import given
    from darkpose.service.core.pipeline import Pipeline, PipelineOptions
    from darkpose.service.evaluation import (
        DEFAULT_BATCH_CROPS,
        check_evaluable,
        evaluate,
        expand_configs,
        format_table,
        load_coco,
    )
    from darkpose.service.runtime.factory import build_detector, build_pose_models
    from darkpose.service.settings import Settings

    settings = Settings(**given(providers=args.providers))
    shifts = (
        [s == "on" for s in args.flip_shift]
        if args.flip_shift is not None
        else [settings.pipeline.flip_shift]
    )
    threshold = (
        settings.eval_det_score_threshold if args.det_threshold is None else args.det_threshold
    )
    base = PipelineOptions.from_settings(
        settings, max_persons=settings.max_persons, det_score_threshold=threshold
    )
    coco = load_coco(args.ann)
    check_evaluable(coco, args.images)
    detector = build_detector(settings) if "detector" in args.boxes else None
    pipeline = Pipeline(detector, build_pose_models(settings), base, settings.pose_model_weights)
    decodes = args.decode
    if decodes is None:
        spec = pipeline.spec
        decodes = [spec.codec] if spec.decoded_output else list(DECODERS)
    configs = expand_configs(args.boxes, decodes, [f == "on" for f in args.flip], shifts)
    rows, results = evaluate(
        pipeline,
        args.images,
        coco,
        configs,
        base,
        progress=not args.no_progress,
        limit=args.limit,
        batch_crops=DEFAULT_BATCH_CROPS if args.batch_crops is None else args.batch_crops,
    )
    if args.results_dir is not None:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        for cfg, res in results.items():
            flip = ("on" if cfg.flip_shift else "on-noshift") if cfg.flip else "off"
            name = f"{cfg.boxes}_{cfg.decode}_flip-{flip}.json"
            (args.results_dir / name).write_text(json.dumps(res))
    if args.json:
        sys.stdout.write(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
    else:
        sys.stdout.write(format_table(rows) + "\n")
    return 0
