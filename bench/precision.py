"""Speed/accuracy table of the shipped models at each precision (docs/benchmarks.md).

One run measures, on coco-mini and this CPU (1 thread per session unless ``--threads``):

1. **Accuracy** — every shipped pose model × precision variant × flip (off/on) × box source
   (GT boxes; each detector's boxes at the COCO-protocol threshold): keypoint AP, DARK decode.
   Variants: onnxruntime fp32 (the reference), OpenVINO bf16 (when the CPU has native bf16) and
   each ``--int8`` file (from ``darkpose quantize``) on OpenVINO, plus every detector at
   fp32 / bf16 (person-box AP).  OpenVINO fp32 is timed but not re-evaluated (its heatmaps are
   onnxruntime's within 1e-3, tests/runtime/test_openvino.py); int8 on onnxruntime neither (its
   parity is in the file's card).
2. **Pose speed** — ms/crop of every variant at batch 1 and batch 8, interleaved rounds (each
   round times every variant once, so load changes hit all of them alike); reported as the
   median ms and the median of the per-round speed-ups against onnxruntime fp32.
3. **Detector speed** — ms/image per detector at fp32 / bf16, interleaved the same way.
4. **Pipeline images/s** — detector + pose (no HTTP) per pose variant with the default
   detector, images back to back (the "models' own ceiling" of bench/load.py).
5. **Session options** — onnxruntime options tried on the default pose model at batch 8:
   graph optimisation level, a saved optimised model, threads, the memory arena.

    python bench/precision.py                              # everything (~10 min on 2 cores)
    python bench/precision.py --int8 /tmp/tp.int8.onnx --rounds 9 --json /tmp/precision.json
    python bench/precision.py --skip accuracy,options      # speed only

Absolute times move with the machine's load; compare the ratios measured within one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_line  # noqa: E402
from darkpose.service.core.pipeline import Pipeline, PipelineOptions  # noqa: E402
from darkpose.service.core.transforms import boxes_to_center_scale, warp_crops  # noqa: E402
from darkpose.service.evaluation import evaluate, expand_configs, load_coco  # noqa: E402
from darkpose.service.quantize import annotated_image_ids, calibration_crops  # noqa: E402
from darkpose.service.runtime.detector_build import build_detector_from_config  # noqa: E402
from darkpose.service.runtime.pose import OnnxPoseModel  # noqa: E402
from darkpose.service.settings import Settings  # noqa: E402

logger = logging.getLogger("bench.precision")

COCO_MINI = REPO.parent / "shared" / "data" / "coco-mini"
IMAGES = COCO_MINI / "train2017"
ANN = COCO_MINI / "annotations" / "person_keypoints_train2017.json"
POSE_MODELS = ("pose_simplepose_256x192.onnx", "pp_tinypose_256x192.onnx")
DETECTORS = ("yolox", "picodet")


@dataclass(frozen=True)
class Variant:
    """A pose model file at one backend/precision."""

    model: str
    backend: str
    precision: str
    label: str

    def build(self, settings: Settings, threads: int, max_batch: int | None = 0) -> OnnxPoseModel:
        return OnnxPoseModel(
            settings.resolve_model(self.model),
            providers="cpu",
            intra_op_threads=threads,
            backend=self.backend,
            precision=self.precision,
            max_batch=max_batch,
        )


def variants(int8_files: list[str], bf16: bool, openvino: bool) -> list[Variant]:
    out: list[Variant] = []
    for m in POSE_MODELS:
        out.append(Variant(m, "onnxruntime", "fp32", "ort fp32"))
        if openvino:
            out.append(Variant(m, "openvino", "fp32", "ov fp32"))
            if bf16:
                out.append(Variant(m, "openvino", "bf16", "ov bf16"))
    for f in int8_files:
        for backend in ("onnxruntime", "openvino") if openvino else ("onnxruntime",):
            out.append(Variant(f, backend, "fp32", f"{'ov' if backend == 'openvino' else 'ort'} "
                               f"int8 ({Path(f).stem})"))  # fmt: skip
    return out


def interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int, reps: int
) -> dict[str, list[float]]:
    """Seconds per call of every function, ``rounds`` rounds of ``reps`` calls each, the
    functions interleaved within each round (one warm-up call each first)."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            times[k].append((time.perf_counter() - t0) / reps)
    return times


def ratio_table(times: dict[str, list[float]], ref: str, per: float = 1.0) -> list[dict[str, Any]]:
    """Median ms (÷ ``per``), min ms and the median per-round speed-up against ``ref``."""
    base = np.asarray(times[ref])
    rows = []
    for k, v in times.items():
        a = np.asarray(v)
        rows.append(
            {
                "config": k,
                "median_ms": round(1000 * float(np.median(a)) / per, 2),
                "min_ms": round(1000 * float(a.min()) / per, 2),
                "speedup_median": round(float(np.median(base / a)), 2),
                "speedup_min": round(float(base.min() / a.min()), 2),
            }
        )
    return rows


def backend_for(precision: str) -> str:
    """fp32 runs on onnxruntime, reduced precisions on OpenVINO."""
    return "onnxruntime" if precision == "fp32" else "openvino"


def detector_at(config: str, settings: Settings, precision: str, threads: int) -> Any:
    """Detector ``config`` at ``precision`` on the backend :func:`backend_for` picks."""
    s = settings.model_copy(
        update={
            "detector_backend": backend_for(precision),
            "detector_precision": precision,
            "intra_op_threads": threads,
        }  # fmt: skip
    )
    return build_detector_from_config(config, s)


def accuracy(
    vs: list[Variant], settings: Settings, threads: int, det_precisions: list[str]
) -> dict[str, Any]:
    coco = load_coco(ANN)
    eval_s = settings.model_copy(update={"det_score_threshold": settings.eval_det_score_threshold})
    base = PipelineOptions.from_settings(eval_s, max_persons=settings.max_persons)
    gt_cfgs = expand_configs(["gt"], ["dark"], [False, True], [True])
    det_cfgs = expand_configs(["detector"], ["dark"], [False, True], [True])
    detectors = {
        d: build_detector_from_config(d, eval_s.model_copy(update={"intra_op_threads": threads}))
        for d in DETECTORS
    }
    rows: list[dict[str, Any]] = []
    for v in vs:
        if v.label == "ov fp32" or (v.model not in POSE_MODELS and v.backend == "onnxruntime"):
            continue  # = onnxruntime fp32 within 1e-4 (tests); int8 AP: on its int8 runtime
        pose = v.build(settings, threads, max_batch=None)
        row: dict[str, Any] = {"model": Path(v.model).name, "variant": v.label}
        res, _ = evaluate(Pipeline(None, [pose], base), IMAGES, coco, gt_cfgs, base, progress=False)
        row["gt_AP"] = [round(r.metrics["AP"], 4) for r in res]  # flip off, on
        for d, det in detectors.items():
            res, _ = evaluate(
                Pipeline(det, [pose], base), IMAGES, coco, det_cfgs, base, progress=False
            )
            row[f"{d}_AP"] = [round(r.metrics["AP"], 4) for r in res]
        logger.info("accuracy %s", row)
        rows.append(row)
    from darkpose.service.commands.eval_det import (
        coco_box_metrics,
        image_ids_with_files,
        run_detector,
    )

    ids = image_ids_with_files(coco, IMAGES)
    det_rows = []
    for d in DETECTORS:
        for p in det_precisions:
            det = detector_at(d, eval_s, p, threads)
            results, _ = run_detector(det, coco, IMAGES, ids)
            det_rows.append(
                {
                    "detector": d,
                    "precision": f"{backend_for(p)} {p}",
                    "person_AP": round(coco_box_metrics(coco, results, ids)["AP"], 4),
                }  # fmt: skip
            )
            logger.info("detector accuracy %s", det_rows[-1])
    return {"pose": rows, "detectors": det_rows}


def pose_speed(
    vs: list[Variant], settings: Settings, threads: int, rounds: int
) -> dict[str, list[dict[str, Any]]]:
    coco = load_coco(ANN)
    crops = calibration_crops(
        Variant(POSE_MODELS[1], "onnxruntime", "fp32", "").build(settings, threads).spec,
        IMAGES,
        coco,
        annotated_image_ids(coco)[:6],
    )
    out = {}
    for model in POSE_MODELS:
        # the --int8 files are quantised from the default model: timed with it
        mine = [
            v
            for v in vs
            if v.model == model or (model == POSE_MODELS[1] and v.model not in POSE_MODELS)
        ]
        poses = {v.label: v.build(settings, threads) for v in mine}
        for bs in (1, 8):
            x = np.ascontiguousarray(np.resize(crops, (bs, *crops.shape[1:])))
            fns = {k: (lambda p=p, x=x: p.infer(x)) for k, p in poses.items()}
            times = interleaved(fns, rounds, reps=max(1, 8 // bs))
            key = f"{Path(model).stem} batch {bs}"
            out[key] = ratio_table(times, "ort fp32", per=bs)
            logger.info("pose speed %s: %s", key, out[key])
    return out


def detector_speed(
    settings: Settings, threads: int, rounds: int, det_precisions: list[str]
) -> dict[str, list[dict[str, Any]]]:
    import cv2

    images = [cv2.imread(str(p)) for p in sorted(IMAGES.glob("*.jpg"))[:8]]
    out = {}
    for d in DETECTORS:
        dets = {}
        for p in det_precisions:
            dets[f"{'ort' if p == 'fp32' else 'ov'} {p}"] = detector_at(d, settings, p, threads)
        fns = {k: (lambda det=det: [det.detect(im) for im in images]) for k, det in dets.items()}
        times = interleaved(fns, rounds, reps=1)
        out[d] = ratio_table(times, "ort fp32", per=len(images))
        logger.info("detector speed %s: %s", d, out[d])
    return out


def pipeline_speed(
    vs: list[Variant], settings: Settings, threads: int, rounds: int, detector: str
) -> list[dict[str, Any]]:
    """Detector + pose back to back per image (crops prepared outside the timed region)."""
    import cv2

    det = build_detector_from_config(
        detector, settings.model_copy(update={"intra_op_threads": threads})
    )
    images = [cv2.imread(str(p)) for p in sorted(IMAGES.glob("*.jpg"))[:12]]
    fns = {}
    for v in vs:
        pose = v.build(settings, threads, max_batch=None)
        spec = pose.spec
        crops = []
        for im in images:
            b = det.detect(im).boxes[: settings.pipeline.max_persons]
            c, s = boxes_to_center_scale(b, spec.aspect_ratio, settings.pipeline.box_padding)
            crops.append(warp_crops(im, c, s, spec.input_size, spec=spec))

        def run(pose: OnnxPoseModel = pose, crops: list[Any] = crops) -> None:
            for im, cr in zip(images, crops, strict=True):
                det.detect(im)
                pose.infer(cr)

        fns[f"{Path(v.model).stem} {v.label}"] = run
    times = interleaved(fns, rounds, reps=1)
    rows = []
    for k, t in times.items():
        rows.append({"config": k, "images_per_s": round(len(images) / float(np.median(t)), 2)})
    logger.info("pipeline %s", rows)
    return rows


def session_options(settings: Settings, rounds: int) -> list[dict[str, Any]]:
    """onnxruntime session options on the default pose model, batch 8, interleaved."""
    import onnxruntime as ort

    path = settings.resolve_model(POSE_MODELS[1])
    coco = load_coco(ANN)
    spec = OnnxPoseModel(path, providers="cpu", intra_op_threads=1).spec
    x = np.resize(calibration_crops(spec, IMAGES, coco, annotated_image_ids(coco)[:4]),
                  (8, 3, spec.input_size[1], spec.input_size[0])).astype(np.float32)  # fmt: skip
    tmp = Path(tempfile.mkdtemp()) / "optimised.onnx"
    G = ort.GraphOptimizationLevel

    def make(level: Any = G.ORT_ENABLE_ALL, threads: int = 1, arena: bool = True,
             save: bool = False, model: Path = path) -> Callable[[], Any]:  # fmt: skip
        o = ort.SessionOptions()
        o.graph_optimization_level = level
        o.intra_op_num_threads = threads
        o.enable_cpu_mem_arena = arena
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if save:
            o.optimized_model_filepath = str(tmp)
        sess = ort.InferenceSession(str(model), o, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda: sess.run(None, {name: x})

    fns = {
        "ENABLE_ALL, 1 thread, arena (service default)": make(),
        "ENABLE_EXTENDED": make(G.ORT_ENABLE_EXTENDED),
        "ENABLE_BASIC": make(G.ORT_ENABLE_BASIC),
        "DISABLE_ALL": make(G.ORT_DISABLE_ALL),
        "no memory arena": make(arena=False),
        "2 threads": make(threads=2),
    }
    make(save=True)  # writes the optimised model
    fns["saved optimised model, reloaded (DISABLE_ALL)"] = make(G.ORT_DISABLE_ALL, model=tmp)
    times = interleaved(fns, rounds, reps=1)
    rows = ratio_table(times, "ENABLE_ALL, 1 thread, arena (service default)", per=8)
    logger.info("session options %s", rows)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--int8", action="append", default=[], help="int8 pose model file(s)")
    ap.add_argument("--threads", type=int, default=1, help="threads per session")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    ap.add_argument("--detector", default="yolox", help="detector of the pipeline images/s")
    ap.add_argument("--skip", default="", help="comma list of accuracy,pose,detector,pipeline,"
                    "options")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("service").setLevel(logging.WARNING)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    settings = Settings(providers="cpu")  # type: ignore[call-arg]
    try:
        from darkpose.service.runtime.openvino import has_native_bf16

        bf16, openvino = has_native_bf16(), True
    except Exception:  # no openvino extra
        bf16 = openvino = False
    logger.info("CPU: %s", cpu_line())
    logger.info("openvino: %s, native bf16: %s", openvino, bf16)
    vs = variants(args.int8, bf16, openvino)
    det_precisions = ["fp32"] + (["bf16"] if bf16 else [])
    out: dict[str, Any] = {"variants": [v.__dict__ for v in vs], "threads": args.threads}
    default_pose = [v for v in vs if v.model == POSE_MODELS[1] or v.model in args.int8]
    sections: dict[str, Callable[[], Any]] = {
        "pose_speed": lambda: pose_speed(vs, settings, args.threads, args.rounds),
        "detector_speed": lambda: detector_speed(
            settings, args.threads, args.rounds, det_precisions
        ),
        "pipeline": lambda: pipeline_speed(
            default_pose, settings, args.threads, max(3, args.rounds // 2), args.detector
        ),
        "session_options": lambda: session_options(settings, args.rounds),
        "accuracy": lambda: accuracy(vs, settings, args.threads, det_precisions),
    }
    names = {"pose_speed": "pose", "detector_speed": "detector", "session_options": "options"}
    for key, run in sections.items():
        if names.get(key, key) in skip:
            continue
        out[key] = run()
        if args.json:  # after every section: a long run stopped half-way keeps what it measured
            args.json.write_text(json.dumps(out, indent=1))
    print(markdown(out))
    return 0


def _md(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


SPEED_HEAD = ["median ms", "min ms", "speed-up (median of round ratios)", "speed-up (minima)"]


def _speed(rows: list[dict[str, Any]]) -> list[list[Any]]:
    keys = ("config", "median_ms", "min_ms", "speedup_median", "speedup_min")
    return [[r[k] for k in keys] for r in rows]


def markdown(out: dict[str, Any]) -> str:
    """The docs/benchmarks.md tables of one run's results."""
    parts = []
    for key, rows in out.get("pose_speed", {}).items():
        parts.append(f"pose ms/crop, {key}, {out['threads']} thread(s)")
        parts.append(_md(["variant", *SPEED_HEAD], _speed(rows)))
    for key, rows in out.get("detector_speed", {}).items():
        parts.append(f"detector {key}, ms/image")
        parts.append(_md(["precision", *SPEED_HEAD], _speed(rows)))
    if "pipeline" in out:
        parts.append("pipeline images/s (detector + pose, in process, no HTTP)")
        rows = [[r["config"], r["images_per_s"]] for r in out["pipeline"]]
        parts.append(_md(["config", "images/s"], rows))
    if "session_options" in out:
        parts.append("onnxruntime session options, PP-TinyPose batch 8, ms/crop")
        parts.append(_md(["options", *SPEED_HEAD], _speed(out["session_options"])))
    acc = out.get("accuracy")
    if acc:
        parts.append("keypoint AP on coco-mini (DARK; flip off / on)")
        keys = ["gt_AP"] + [f"{d}_AP" for d in DETECTORS]
        head = ["model", "variant", "GT boxes"] + [f"{d} boxes" for d in DETECTORS]
        rows = [
            [r["model"], r["variant"]] + [f"{r[k][0]:.3f} / {r[k][1]:.3f}" for k in keys]
            for r in acc["pose"]
        ]
        parts.append(_md(head, rows))
        parts.append("person-box AP on coco-mini")
        rows = [[r["detector"], r["precision"], f"{r['person_AP']:.3f}"] for r in acc["detectors"]]
        parts.append(_md(["detector", "precision", "person AP"], rows))
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
