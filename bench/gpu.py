"""GPU check in one short script: CUDA-EP figures for docs/benchmarks.md on a machine with a GPU.

Prints, on onnxruntime's CUDA execution provider:

1. pose models: ms/crop at batch 1 / 8 / 32 (median of ``--repeats`` runs after warm-up);
2. detectors: ms/image (YOLOX-nano, PicoDet-S);
3. DARK decode on the same heatmaps (the pose model's, batch 32): in-graph ONNX decode on CUDA
   (``exporters.export_decoder``, needs the ``export`` extra) vs the numpy codec on the CPU;
4. micro-batching gain: served images/s with batching on vs off under 16 clients
   (``DARKPOSE_PROVIDERS=cuda bench/load.py``, ``--load-seconds`` each; skipped with ``--no-load``).

Where onnxruntime has no CUDA provider, or a CUDA session cannot run, it prints why and exits
0 (nothing to measure here is not a failure)::

    python bench/gpu.py                  # ~2 min with a GPU
    python bench/gpu.py --no-load        # model figures only
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_line  # noqa: E402

MODELS = REPO.parent / "shared" / "models"
POSE = ("pose_simplepose_256x192.onnx", "pp_tinypose_256x192.onnx")
DETECTORS = ("yolox", "picodet")


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def cuda_ready() -> str | None:
    """``None`` when a CUDA session runs here, else the reason it does not."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return f"onnxruntime is not installed ({exc})"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (
            f"this onnxruntime ({ort.__version__}) has no CUDAExecutionProvider "
            f"(providers: {ort.get_available_providers()}); install onnxruntime-gpu on a GPU "
            "machine"
        )
    from darkpose.service.core.errors import ModelError
    from darkpose.service.runtime.pose import OnnxPoseModel

    try:
        pose = OnnxPoseModel(MODELS / POSE[0], providers="cuda")
        pose.infer(np.zeros((1, 3, 256, 192), np.float32))
    except ModelError as exc:
        return f"a CUDA session does not run here: {exc.message}"
    if pose.providers[0] != "CUDAExecutionProvider":
        return f"onnxruntime fell back to {pose.providers} (no usable GPU)"
    return None


def pose_section(repeats: int) -> np.ndarray:
    from darkpose.service.runtime.pose import OnnxPoseModel

    heatmaps = np.zeros((0,), np.float32)
    print(f"# CPU: {cpu_line()}")
    print("pose models, CUDA EP, ms/crop (median)")
    for name in POSE:
        pose = OnnxPoseModel(MODELS / name, providers="cuda", max_batch=0)
        row = []
        for bs in (1, 8, 32):
            x = np.random.default_rng(0).normal(size=(bs, 3, 256, 192)).astype(np.float32)
            row.append(f"batch {bs}: {median_ms(lambda p=pose, x=x: p.infer(x), repeats) / bs:.3f}")
            if bs == 32 and name == POSE[1]:
                heatmaps = pose.infer(x)
        print(f"  {name:32s} " + "  ".join(row))
    return heatmaps


def detector_section(repeats: int) -> None:
    import cv2

    from darkpose.service.runtime.detector_build import build_detector_from_config
    from darkpose.service.settings import Settings

    image = cv2.imread(str(sorted((MODELS.parent / "data/coco-mini/train2017").glob("*.jpg"))[0]))
    s = Settings(providers="cuda")  # type: ignore[call-arg]
    print("detectors, CUDA EP, ms/image (median, pre/post-processing included)")
    for d in DETECTORS:
        det = build_detector_from_config(d, s)
        print(f"  {d:10s} {median_ms(lambda det=det: det.detect(image), repeats):.3f}")


def decode_section(heatmaps: np.ndarray, repeats: int) -> None:
    from darkpose.service.core.codec import decode_heatmaps

    print(f"DARK decode of the same {len(heatmaps)} heatmaps (PP-TinyPose output)")
    t_np = median_ms(lambda: decode_heatmaps(heatmaps, "dark", 11), repeats)
    print(f"  numpy codec (CPU):        {t_np:.3f} ms")
    try:
        from darkpose.exporters import export_decoder
    except ImportError as exc:
        print(f"  in-graph decode skipped: needs the export extra (torch): {exc}")
        return
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = export_decoder(
            Path(tmp) / "dark.onnx", heatmaps.shape[1], (heatmaps.shape[3], heatmaps.shape[2])
        )
        sess = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    name = sess.get_inputs()[0].name
    kp = sess.run(None, {name: heatmaps})[0]
    coords, _ = decode_heatmaps(heatmaps, "dark", 11)
    t_graph = median_ms(lambda: sess.run(None, {name: heatmaps}), repeats)
    print(
        f"  in-graph ONNX (CUDA EP):  {t_graph:.3f} ms (incl. copies)  ratio {t_graph / t_np:.2f}"
    )
    print(f"  max |xy| in-graph vs numpy: {np.abs(kp[..., :2] - coords).max():.2e} heatmap px")


def load_section(seconds: float) -> None:
    print(
        f"micro-batching, 16 clients, {seconds:.0f} s per mode "
        "(DARKPOSE_PROVIDERS=cuda bench/load.py; its ceiling line is CPU)"
    )
    cmd = [sys.executable, str(REPO / "bench" / "load.py"), "--clients", "16",
           "--duration", str(seconds), "--modes", "on,off"]  # fmt: skip
    env = {**os.environ, "DARKPOSE_PROVIDERS": "cuda"}  # the server's models on CUDA
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30 * seconds + 300, env=env)
    print("  " + "\n  ".join((out.stdout or out.stderr).strip().splitlines()[-12:]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--load-seconds", type=float, default=15.0)
    ap.add_argument("--no-load", action="store_true", help="skip the served images/s part")
    args = ap.parse_args()
    reason = cuda_ready()
    if reason is not None:
        print(f"bench/gpu.py: no GPU to measure: {reason}")
        return 0
    heatmaps = pose_section(args.repeats)
    detector_section(args.repeats)
    decode_section(heatmaps, args.repeats)
    if not args.no_load:
        load_section(args.load_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
