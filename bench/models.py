"""The measurements behind the shipped models' defaults, in one run on coco-mini.

    python bench/models.py [--threads 1] [--rounds 20] [--json out.json]

Tables (keypoint AP, pycocotools, DARK unless stated; "dev" / "held-back" = the annotated images
of coco-mini alternately, sorted by id, so a choice made on one half is checked on the other):

1. pose models with GT boxes (flip off/on) and PP-TinyPose's DARK blur kernel;
2. weighted ensembles PP-TinyPose + SimplePose (weights w / 1 - w), GT boxes;
3. end to end: detector configurations × detector score threshold, PP-TinyPose, with the
   detector's median ms/image in the same run;
4. speed on CPU, 1 intra-op thread: pose ms/crop at batch 1 and 8, detector ms/image (medians of
   interleaved rounds; ratios are what transfers between machines).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from darkpose.service.core.pipeline import Pipeline, PipelineOptions, PoseStage  # noqa: E402
from darkpose.service.evaluation import coco_keypoint_metrics, gt_boxes, load_coco  # noqa: E402
from darkpose.service.runtime.detector_build import build_detector_from_config  # noqa: E402
from darkpose.service.runtime.pose import OnnxPoseModel  # noqa: E402
from darkpose.service.settings import Settings  # noqa: E402

COCO_MINI = REPO.parent / "shared" / "data" / "coco-mini"
TINY = "pp_tinypose_256x192.onnx"
SIMPLE = "pose_simplepose_256x192.onnx"
DETECTORS = ("yolox", "picodet", "fused(picodet,yolox)", "chips(picodet)")
THRESHOLDS = (0.05, 0.1, 0.3)


def keypoint_ap(coco: Any, results: list[dict[str, Any]], img_ids: list[int]) -> float:
    """pycocotools keypoint AP of ``results`` on ``img_ids``."""
    return coco_keypoint_metrics(coco, results, img_ids)["AP"]


def splits(coco: Any) -> dict[str, list[int]]:
    annotated = sorted(
        {a["image_id"] for a in coco.loadAnns(coco.getAnnIds()) if a.get("num_keypoints", 0)}
    )
    return {"all": sorted(coco.getImgIds()), "dev": annotated[0::2], "held-back": annotated[1::2]}


def row(coco: Any, results: list[dict[str, Any]], parts: dict[str, list[int]]) -> str:
    return " | ".join(f"{keypoint_ap(coco, results, ids):.3f}" for ids in parts.values())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, default=COCO_MINI / "train2017")
    p.add_argument(
        "--ann", type=Path, default=COCO_MINI / "annotations" / "person_keypoints_train2017.json"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=20, help="speed rounds (interleaved)")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    print(f"# CPU: {cpu_line()}")
    settings = Settings(providers="cpu", intra_op_threads=args.threads)  # type: ignore[call-arg]
    coco = load_coco(args.ann)
    parts = splits(coco)
    images = {
        i: cv2.imread(
            str(args.images / coco.loadImgs([i])[0]["file_name"]),
            cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION,
        )
        for i in sorted(coco.getImgIds())
    }
    models = {
        name: OnnxPoseModel(settings.resolve_model(name), providers="cpu", intra_op_threads=1)
        for name in (TINY, SIMPLE)
    }
    out: dict[str, Any] = {"splits": {k: len(v) for k, v in parts.items()}}
    head = " | ".join(f"AP {k} ({len(v)} img)" for k, v in parts.items())
    base = PipelineOptions(max_persons=100)

    if not args.skip_accuracy:
        # 1. + 2. GT boxes: one network pass per model and image (flip crops in the same call)
        stages: dict[str, dict[int, PoseStage]] = {n: {} for n in models}
        for name, model in models.items():
            pipe = Pipeline(None, model, base)
            for i, img in images.items():
                boxes, scores = gt_boxes(coco, i)
                if len(boxes):
                    stages[name][i] = pipe.run_models(
                        img, base.replace(flip=True), boxes, scores, image_id=i
                    )
        print(f"\n### pose models, GT boxes\n| model | decode | flip | {head} |")
        print("|---|---|---|" + "---|" * len(parts))
        for name, model in models.items():
            pipe = Pipeline(None, model, base)
            kernels = (3, 5, 7, 9, 11) if name == TINY else (11,)
            for flip in (False, True):
                for k in kernels if not flip else (model.spec.blur_kernel,):
                    opts = base.replace(decode="dark", blur_kernel=k, flip=flip)
                    res = [r for s in stages[name].values() for r in pipe.finish(s, opts).to_coco()]
                    flag = "on" if flip else "off"
                    print(f"| {name} | dark k={k} | {flag} | {row(coco, res, parts)} |")
                    out[f"gt/{name}/k{k}/flip{int(flip)}"] = keypoint_ap(coco, res, parts["all"])
        print("\n### weighted ensembles (GT boxes, DARK, flip off)")
        print(f"| w(TinyPose) | w(SimplePose) | {head} |")
        print("|---|---|" + "---|" * len(parts))
        ens = Pipeline(None, [models[TINY], models[SIMPLE]], base)
        for w in (1.0, 0.9, 0.8, 0.7, 0.5):
            res = []
            for i, s in stages[TINY].items():
                t = stages[SIMPLE][i]
                mixed = dataclasses.replace(s, outputs=w * s.outputs + (1 - w) * t.outputs)
                res += ens.finish(mixed, base.replace(flip=False)).to_coco()
            print(f"| {w:g} | {1 - w:g} | {row(coco, res, parts)} |")
            out[f"ensemble/{w:g}"] = keypoint_ap(coco, res, parts["all"])

        # 3. end to end
        print("\n### end to end (PP-TinyPose, DARK, flip off)")
        print(f"| detector | threshold | {head} | det ms/img |")
        print("|---|---|" + "---|" * len(parts) + "---|")
        for config in DETECTORS:
            det = build_detector_from_config(config, settings)
            pipe = Pipeline(det, models[TINY], base)
            for thr in THRESHOLDS:
                opts = base.replace(det_score_threshold=thr)
                res, ms = [], []
                for i, img in images.items():
                    r = pipe(img, opts, image_id=i)
                    ms.append(1000 * r.timings["detect"])
                    res += r.to_coco()
                med = statistics.median(ms)
                print(f"| `{config}` | {thr:g} | {row(coco, res, parts)} | {med:.1f} |")
                out[f"e2e/{config}/{thr:g}"] = keypoint_ap(coco, res, parts["all"])

    if not args.skip_speed:
        # 4. speed: interleaved rounds, medians
        rng = np.random.default_rng(0)
        crop = rng.normal(size=(8, 3, 256, 192)).astype(np.float32)
        img = images[370162] if 370162 in images else next(iter(images.values()))
        dets = {c: build_detector_from_config(c, settings) for c in ("yolox", "picodet")}
        for m in models.values():
            m.infer(crop[:1])
        times: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, m in models.items():
                for n in (1, 8):
                    t0 = time.perf_counter()
                    m.infer(crop[:n])
                    times.setdefault(f"{name} b{n}", []).append((time.perf_counter() - t0) / n)
            for c, d in dets.items():
                t0 = time.perf_counter()
                d.detect(img)
                times.setdefault(c, []).append(time.perf_counter() - t0)
        print("\n### speed (CPU, 1 intra-op thread, medians)\n| what | ms |\n|---|---|")
        for k, v in times.items():
            unit = "ms/crop" if " b" in k else "ms/image"
            print(f"| {k} ({unit}) | {1000 * statistics.median(v):.1f} |")
            out[f"speed/{k}"] = 1000 * statistics.median(v)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
