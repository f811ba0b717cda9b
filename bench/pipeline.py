"""Pipeline benchmark on one crowded image (one run, ratios measured in that run).

    python bench/pipeline.py [--image PATH] [--rounds 15] [--threads 1] [--providers cpu]

Reports, with the configurations interleaved round by round in a shuffled order each round (the
shared CPU is noisy, so every figure is a median over rounds):

(a) persons/s of the batched pipeline vs a per-box loop (crop, one pose call and one decode per
    person, as rtmlib does), same detector, same decode, same post-processing;
(b) overhead = pipeline wall time / (detector session run + pose session runs alone on the same,
    pre-computed inputs), target <= 1.15;
(c) the pipeline's stage breakdown (detect, crop, pose, decode, postprocess);
plus the pose model alone: one run of all crops vs runs of ``CPU_MAX_BATCH`` vs one run per crop.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_line  # noqa: E402
from darkpose.service.core.cards import ZOO_DIR  # noqa: E402
from darkpose.service.core.codec import decode_heatmaps  # noqa: E402
from darkpose.service.core.nms import oks_nms, rescore  # noqa: E402
from darkpose.service.core.pipeline import Pipeline, PipelineOptions  # noqa: E402
from darkpose.service.core.transforms import (  # noqa: E402
    boxes_to_center_scale,
    heatmap_to_image,
    warp_crops,
)
from darkpose.service.core.types import COCO_SIGMAS  # noqa: E402
from darkpose.service.runtime.detectors import YoloxDetector  # noqa: E402
from darkpose.service.runtime.pose import CPU_MAX_BATCH, OnnxPoseModel  # noqa: E402

DEFAULT_IMAGE = REPO.parent / "shared" / "data" / "coco-mini" / "train2017" / "000000370162.jpg"


def per_box_loop(
    image: np.ndarray, det: YoloxDetector, pose: OnnxPoseModel, opts: PipelineOptions
) -> int:
    """rtmlib-style top-down: detect, then crop → pose → decode one person at a time."""
    dets = det.detect(image, score_threshold=opts.det_score_threshold)
    boxes, scores = dets.boxes[: opts.max_persons], dets.scores[: opts.max_persons]
    spec = pose.spec
    kpts = []
    for i in range(boxes.shape[0]):
        c, s = boxes_to_center_scale(boxes[i : i + 1], spec.aspect_ratio, opts.box_padding)
        crop = warp_crops(image, c, s, spec.input_size, spec=spec)
        hm = pose.session.run([pose.output_name], {pose.input_name: crop})[0]
        xy, sc = decode_heatmaps(
            hm, method=opts.decode or "dark", blur_kernel=opts.blur_kernel or 11
        )
        xy = heatmap_to_image(xy, c, s, spec.heatmap_size)
        kpts.append(np.concatenate([xy, sc[..., None]], axis=2)[0])
    if not kpts:
        return 0
    k = np.stack(kpts)
    r = rescore(scores, k[..., 2], threshold=opts.keypoint_score_threshold)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = oks_nms(k, r, areas, threshold=opts.oks_nms_threshold, sigmas=COCO_SIGMAS)
    return len(keep)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--providers", default="cpu", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--models", type=Path, default=ZOO_DIR)
    ap.add_argument(
        "--pose-model", default="pp_tinypose_256x192.onnx", help="pose model file (the default)"
    )
    args = ap.parse_args()

    loaded = cv2.imread(str(args.image))
    if loaded is None:
        print(f"cannot read {args.image}", file=sys.stderr)
        return 2
    image = np.asarray(loaded, dtype=np.uint8)
    kw = {"providers": args.providers, "intra_op_threads": args.threads}
    det = YoloxDetector(args.models / "yolox_nano_416.onnx", **kw)  # type: ignore[arg-type]
    pose = OnnxPoseModel(args.models / args.pose_model, **kw)  # type: ignore[arg-type]
    pose_one_run = OnnxPoseModel(
        args.models / args.pose_model,
        max_batch=0,
        **kw,  # type: ignore[arg-type]
    )
    pipe = Pipeline(det, pose, PipelineOptions(decode="dark", flip=False))
    opts = pipe.resolve_options()  # the blur kernel from the model card

    # the same inputs the pipeline feeds its models, for "inference alone"
    blob, _ = det.preprocess(image)
    boxes, _ = pipe.detect(image, opts)
    n = int(boxes.shape[0])
    c, s = boxes_to_center_scale(boxes, pose.spec.aspect_ratio, opts.box_padding)
    crops = warp_crops(image, c, s, pose.spec.input_size, spec=pose.spec)
    if n < 6:
        print(f"warning: only {n} persons detected; the brief asks for >= 6", file=sys.stderr)

    def models_alone() -> None:
        det.run(blob)
        pose.infer(crops)

    def pose_per_crop() -> None:
        for i in range(n):
            pose.session.run([pose.output_name], {pose.input_name: crops[i : i + 1]})

    runs: dict[str, Callable[[], object]] = {
        "pipeline (batched)": lambda: pipe(image, opts),
        "per-box loop": lambda: per_box_loop(image, det, pose, opts),
        "detector+pose alone": models_alone,
        f"pose: runs of {pose.max_batch}": lambda: pose.infer(crops),
        "pose: one run": lambda: pose_one_run.infer(crops),
        "pose: per crop": pose_per_crop,
    }
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    stages: dict[str, list[float]] = {}
    order = list(runs)
    rng = random.Random(0)
    for _ in range(args.rounds):
        rng.shuffle(order)  # no configuration always runs right after another one
        for name in order:
            fn = runs[name]
            if name == "pipeline (batched)":
                t0 = time.perf_counter()
                res = pipe(image, opts)
                times[name].append(time.perf_counter() - t0)
                for k, v in res.timings.items():
                    stages.setdefault(k, []).append(v)
            else:
                times[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"# CPU: {cpu_line()}")
    print(f"image {args.image.name}: {image.shape[1]}x{image.shape[0]}, {n} persons detected")
    print(
        f"onnxruntime providers={pose.providers} intra_op_threads={args.threads} "
        f"CPU_MAX_BATCH={CPU_MAX_BATCH['onnxruntime']} rounds={args.rounds} (medians)"
    )
    print(f"{'configuration':<24}{'ms/image':>10}{'persons/s':>11}")
    for k, v in med.items():
        print(f"{k:<24}{v * 1e3:>10.1f}{n / v:>11.1f}")
    print()
    print(
        f"(a) batched pipeline vs per-box loop: "
        f"{med['per-box loop'] / med['pipeline (batched)']:.2f}x persons/s"
    )
    overhead = med["pipeline (batched)"] / med["detector+pose alone"]
    print(f"(b) overhead = pipeline / (detector + pose inference alone) = {overhead:.3f}")
    print("(c) stage breakdown (median ms):")
    total = statistics.median(stages["total"])
    for k in ("detect", "crop", "pose", "decode", "postprocess", "total"):
        v = statistics.median(stages[k])
        print(f"    {k:<12}{v * 1e3:8.2f}  {100 * v / total:5.1f}%")
    print(
        f"pose alone: runs of {pose.max_batch} vs per crop "
        f"{med['pose: per crop'] / med[f'pose: runs of {pose.max_batch}']:.2f}x, "
        f"one run vs per crop {med['pose: per crop'] / med['pose: one run']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
