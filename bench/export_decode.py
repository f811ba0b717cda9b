"""In-graph DARK decode (ONNX, onnxruntime CPU) vs the numpy codec, on the golden heatmaps.

Prints the agreement with mmpose's ``dark_k11`` and the per-batch decode latency of both, as
ratios measured in this one run (no thresholds).  Usage::

    python bench/export_decode.py [--batch 32] [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import cpu_line  # noqa: E402
from darkpose.exporters import export_decoder  # noqa: E402

GOLDEN = REPO.parent / "shared/golden/mmpose_decode_coco_mini_train.npz"


def _time(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    g = np.load(GOLDEN)
    hm = g["heatmaps"]
    hm = np.concatenate([hm] * (args.batch // len(hm) + 1))[: args.batch]
    with tempfile.TemporaryDirectory() as tmp:
        path = export_decoder(Path(tmp) / "dark.onnx", 17, (48, 64))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    kp = sess.run(None, {"heatmaps": g["heatmaps"]})[0]
    diff = np.abs(kp[..., :2] - g["dark_k11"]).max()
    print(f"# CPU: {cpu_line()}")
    print(f"onnx DARK vs mmpose dark_k11: max |xy| diff {diff:.2e} px")
    t_onnx = _time(lambda: sess.run(None, {"heatmaps": hm}), args.repeats)
    print(f"onnx decode, batch {args.batch}: {t_onnx * 1e3:.2f} ms")
    try:
        from darkpose.service.core.codec import decode_heatmaps
    except ImportError:
        print("darkpose.service.core.codec not available: numpy comparison skipped")
        return
    coords, _ = decode_heatmaps(g["heatmaps"], method="dark", blur_kernel=11)
    print(
        f"onnx DARK vs numpy codec:     max |xy| diff {np.abs(kp[..., :2] - coords).max():.2e} px"
    )
    t_np = _time(lambda: decode_heatmaps(hm, method="dark", blur_kernel=11), args.repeats)
    print(f"numpy codec decode, batch {args.batch}: {t_np * 1e3:.2f} ms")
    print(f"ratio onnx / numpy: {t_onnx / t_np:.2f}")


if __name__ == "__main__":
    main()
