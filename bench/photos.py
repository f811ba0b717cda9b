"""12 MP photos at full and at working resolution (``DARKPOSE_WORKING_SIDE``).

Builds 12 MP mosaics (4032×3024, JPEG quality 92) of coco-val-dev images pasted at their
native resolution (shelf-packed, about 6×6 per canvas, the ground truth moved with them), so
persons are as small in the big photo as in COCO, and prints in one run:

1. decode ms of a 12 MP JPEG: full size and each working side (PIL, as the service decodes),
   with OpenCV's full and ``IMREAD_REDUCED_COLOR_2/4`` decodes for reference;
2. end-to-end server ms (``timings_ms.total`` of ``POST /pose``: decode + pipeline) of the
   12 MP mosaics and of the same photos at 3 MP (2016×1512), and their ratio;
3. peak request memory of one 12 MP request: the server process's RSS growth (peak RSS reset
   before the request, a fresh process per configuration), the memory the admission reserved
   for it (before decoding, then grown by the persons the detector found) and the bound it
   refuses at (413: the request with ``max_persons`` persons, read from the service's own 413
   under a budget just above the query's own part);
4. COCO keypoint AP on the mosaics (detector at the evaluation threshold, and GT boxes),
   full resolution against each working side, with the number of annotated persons.

    nice -n 10 python bench/photos.py                       # 8 canvases, the default side
    nice -n 10 python bench/photos.py --canvases 2 --sides 1280,2016
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.machine import cpu_line  # noqa: E402
from darkpose.service.api.work import MB  # noqa: E402
from darkpose.service.settings import Settings  # noqa: E402

VAL = REPO.parent / "shared" / "data" / "coco-val-dev"
CANVAS = (4032, 3024)
SMALL = (2016, 1512)
QUALITY = 92
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")


def encode_jpeg(image: np.ndarray) -> bytes:
    ok, enc = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    if not ok:
        raise SystemExit("cv2.imencode failed")
    return bytes(enc.tobytes())


def make_mosaics(n: int) -> tuple[list[bytes], list[bytes], dict[str, Any]]:
    """``n`` mosaics: (12 MP JPEGs, the same at 3 MP, COCO keypoint annotations moved onto
    them: image ids 1…n)."""
    src = json.loads((VAL / "annotations" / "person_keypoints.json").read_text())
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in src["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    infos = sorted(src["images"], key=lambda i: i["id"])
    big, small, images, anns = [], [], [], []
    k = 0
    for cid in range(1, n + 1):
        canvas = np.full((CANVAS[1], CANVAS[0], 3), 114, np.uint8)
        x = y = row = 0
        while k < len(infos):
            info = infos[k]
            w, h = info["width"], info["height"]
            if x + w > CANVAS[0]:
                x, y, row = 0, y + row, 0
            if y + h > CANVAS[1]:
                break
            img = cv2.imread(str(VAL / "images" / info["file_name"]), cv2.IMREAD_COLOR)
            canvas[y : y + h, x : x + w] = img
            for a in by_image.get(info["id"], []):
                kp = np.asarray(a["keypoints"], np.float64).reshape(-1, 3)
                kp[kp[:, 2] > 0, :2] += (x, y)
                bx, by, bw, bh = a["bbox"]
                anns.append(
                    {
                        **a,
                        "id": len(anns) + 1,
                        "image_id": cid,
                        "bbox": [bx + x, by + y, bw, bh],
                        "keypoints": kp.reshape(-1).tolist(),
                        "segmentation": [],
                    }
                )
            x, row, k = x + w, max(row, h), k + 1
        images.append({"id": cid, "width": CANVAS[0], "height": CANVAS[1], "file_name": ""})
        big.append(encode_jpeg(canvas))
        small.append(encode_jpeg(cv2.resize(canvas, SMALL, interpolation=cv2.INTER_AREA)))
        if k >= len(infos):
            break
    coco = {"images": images, "annotations": anns, "categories": src["categories"]}
    return big, small, coco


def best_ms(fn: Callable[[], Any], repeat: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1000 * best


def decode_table(data: list[bytes], sides: list[int]) -> dict[str, float]:
    """Median over the mosaics of the best of 3 decodes, ms."""
    from darkpose.service.core.io import decode_working

    limits = Settings().image_limits
    out: dict[str, float] = {}
    for side in [0, *sides]:
        times = [
            best_ms(lambda d=d, s=side: decode_working(d, working_side=s, **limits)) for d in data
        ]
        out[f"pil side {side or 'full'}"] = statistics.median(times)
    for name, flag in (
        ("cv2 full", cv2.IMREAD_COLOR),
        ("cv2 reduced 1/2", cv2.IMREAD_REDUCED_COLOR_2),
        ("cv2 reduced 1/4", cv2.IMREAD_REDUCED_COLOR_4),
    ):
        times = [
            best_ms(lambda d=d, f=flag: cv2.imdecode(np.frombuffer(d, np.uint8), f)) for d in data
        ]
        out[name] = statistics.median(times)
    return out


def app_client(**overrides: Any) -> Any:
    from fastapi.testclient import TestClient

    from darkpose.service.api import create_app

    base: dict[str, Any] = {"providers": "cpu", "log_level": "warning"}
    client = TestClient(create_app(Settings(**{**base, **overrides})))
    client.__enter__()
    deadline = time.monotonic() + 120
    while client.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise SystemExit("app not ready within 120 s")
        time.sleep(0.1)
    return client


def server_ms(big: list[bytes], small: list[bytes], side: int) -> dict[str, float]:
    """Per photo, the 12 MP and the 3 MP version posted in turn (4 posts each, the first of each
    a warm-up; best of the other 3): ``timings_ms.total`` (wall) and the process CPU ms of the
    post (every thread: robust to other load on a shared machine), medians over the photos; and
    the median of the per-photo CPU ratios, over all photos and over those whose two versions
    gave the same number of persons (the pose model's work then is the same: what is left is
    the cost of the pixels)."""
    client = app_client(working_side=side)

    def post(data: bytes) -> tuple[float, float, int]:
        c0 = time.process_time()
        r = client.post("/pose", content=data, headers={"Content-Type": "image/jpeg"})
        cpu = 1000 * (time.process_time() - c0)
        if r.status_code != 200:
            raise SystemExit(f"POST /pose: expected 200, got {r.status_code} {r.text}")
        body = r.json()
        return float(body["timings_ms"]["total"]), cpu, len(body["persons"])

    try:
        rows = []
        for photo12, photo3 in zip(big, small, strict=True):
            best = {"12MP": [float("inf")] * 2, "3MP": [float("inf")] * 2}
            persons = {}
            for i in range(4):
                for name, data in (("12MP", photo12), ("3MP", photo3)):
                    wall, cpu, n = post(data)
                    persons[name] = n
                    if i:
                        best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
            rows.append((best, persons))
        out: dict[str, float] = {}
        for name in ("12MP", "3MP"):
            out[name] = statistics.median(b[name][0] for b, _ in rows)
            out[f"{name} cpu"] = statistics.median(b[name][1] for b, _ in rows)
        ratios = [b["12MP"][1] / b["3MP"][1] for b, _ in rows]
        same = [r for r, (_, n) in zip(ratios, rows, strict=True) if n["12MP"] == n["3MP"]]
        out["ratio"] = statistics.median(ratios)
        out["ratio same"] = statistics.median(same) if same else float("nan")
        out["same"] = len(same)
        return out
    finally:
        client.__exit__(None, None, None)


def _status_kb(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else -1


def memory_child(path: Path, side: int) -> None:
    """In a fresh process: RSS growth of one request for ``path``, the memory the admission
    reserved for it and the bound (max_persons) of its 413."""
    data = path.read_bytes()
    warm = next(iter(sorted((VAL / "images").glob("*.jpg")))).read_bytes()
    client = app_client(working_side=side)
    state = client.app.state.service
    headers = {"Content-Type": "image/jpeg"}
    for _ in range(2):
        client.post("/pose", content=warm, headers=headers)
    reserved = [0]
    reserve = state.memory.reserve

    def counting(nbytes: int) -> None:
        reserve(nbytes)
        reserved[0] = max(reserved[0], state.memory.used)

    state.memory.reserve = counting
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM)
    rss0 = _status_kb("VmRSS")
    r = client.post("/pose", content=data, headers=headers)
    peak = _status_kb("VmHWM")
    if r.status_code != 200:
        raise SystemExit(f"POST /pose: expected 200, got {r.status_code}")
    persons = len(r.json()["persons"])
    # a budget just above the query's own part (crops, heatmaps, detector, base): the image's
    # size then decides, and the 413 names the whole bound
    query_mb = -(
        -state.request_cost(state.pipeline, state.pipeline.options, False).without_image // MB
    )
    tight = app_client(working_side=side, memory_budget_mb=query_mb + 1)
    r = tight.post("/pose", content=data, headers=headers)
    tight.__exit__(None, None, None)
    m = re.search(r"got (\d+) MB", r.text)
    bound = int(m.group(1)) if r.status_code == 413 and m else -1
    client.__exit__(None, None, None)
    out = {
        "rss_growth_mb": (peak - rss0) / 1024,
        "reserved_mb": reserved[0] / MB,
        "bound_mb": bound,
        "persons": persons,
    }
    print(json.dumps(out))


def memory(path: Path, side: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(path), "--sides", str(side)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def mosaic_ap(big: list[bytes], coco_json: dict[str, Any], sides: list[int]) -> dict[str, Any]:
    """AP per (box source, side) on the mosaics through the service's own path:
    ``decode_working`` → pipeline → ``to_original``."""
    from pycocotools.coco import COCO

    from darkpose.service.core.io import decode_working
    from darkpose.service.core.pipeline import Pipeline, PipelineOptions, to_original
    from darkpose.service.evaluation import coco_keypoint_metrics, gt_boxes
    from darkpose.service.runtime.factory import build_detector, build_pose_models

    settings = Settings(providers="cpu")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = coco_json
        coco.createIndex()
    opts = PipelineOptions.from_settings(
        settings,
        max_persons=settings.max_persons,
        det_score_threshold=settings.eval_det_score_threshold,
    )
    pipeline = Pipeline(build_detector(settings), build_pose_models(settings), opts)
    opts = pipeline.resolve_options(opts)
    table: dict[str, Any] = {}
    limits = settings.image_limits
    for side in [0, *sides]:
        res: dict[str, list[dict[str, Any]]] = {"detector": [], "gt": []}
        for cid, data in enumerate(big, start=1):
            d = decode_working(data, working_side=side, **limits)
            sx, sy = d.scale
            result = pipeline(d.image, opts, image_id=cid)
            res["detector"] += to_original(result, d.scale, d.original_size).to_coco(cid)
            boxes, scores = gt_boxes(coco, cid)
            wb = ((boxes.reshape(-1, 2, 2) + 0.5) / np.float32((sx, sy)) - 0.5).reshape(-1, 4)
            gt_opts = opts.replace(max_persons=max(opts.max_persons, len(boxes)))
            result = pipeline(d.image, gt_opts, wb, scores, image_id=cid)
            res["gt"] += to_original(result, d.scale, d.original_size).to_coco(cid)
        size = (int(d.image.shape[1]), int(d.image.shape[0]))  # the working image's (W, H)
        for source, rows in res.items():
            table[f"{source} side {side or 'full'} {size[0]}x{size[1]}"] = coco_keypoint_metrics(
                coco, rows
            )["AP"]
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--canvases", type=int, default=8, help="12 MP mosaics (default 8)")
    ap.add_argument("--sides", default="", help="working sides (default: the setting's)")
    ap.add_argument("--memory-child", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--parts", default="decode,server,memory,ap", help="what to measure (default: all)"
    )
    args = ap.parse_args()
    default_side = int(Settings.model_fields["working_side"].default)
    sides = [int(s) for s in args.sides.split(",") if s.strip()] or [default_side]
    if args.memory_child is not None:
        memory_child(args.memory_child, sides[0])
        return 0
    print(f"# CPU: {cpu_line()}")
    print(f"date: {time.strftime('%Y-%m-%d')}  load average: {os.getloadavg()}")
    big, small, coco = make_mosaics(args.canvases)
    persons = sum(1 for a in coco["annotations"] if a.get("num_keypoints", 0) > 0)
    print(
        f"{len(big)} mosaics {CANVAS[0]}x{CANVAS[1]} JPEG q{QUALITY} "
        f"({statistics.mean(len(b) for b in big) / 1e6:.2f} MB each), "
        f"{persons} persons with keypoints"
    )
    parts = set(args.parts.split(","))
    if "decode" in parts:
        print("\n1. decode ms of a 12 MP JPEG (median over the mosaics, best of 3)")
        for name, ms in decode_table(big, sides).items():
            print(f"   {name:<22} {ms:7.1f}")
    if "server" in parts:
        server_part(big, small, sides)
    if "memory" in parts:
        memory_part(big[0], sides)
    if "ap" in parts:
        print(f"\n4. keypoint AP on the mosaics ({persons} persons)  [target: within 0.005]")
        table = mosaic_ap(big, coco, sides)
        for name, value in table.items():
            print(f"   {name:<34} AP {value:.3f}")
    return 0


def server_part(big: list[bytes], small: list[bytes], sides: list[int]) -> None:
    print(
        "\n2. server ms per photo (median of best-of-3): wall = timings_ms.total, CPU = process "
        "CPU time of the request; 12 MP / 3 MP  [target <= 1.3]"
    )
    for side in [0, *sides]:
        t = server_ms(big, small, side)
        print(
            f"   side {side or 'full':<6} wall 12MP {t['12MP']:6.1f}  3MP {t['3MP']:6.1f}  "
            f"ratio {t['12MP'] / t['3MP']:.2f} | CPU 12MP {t['12MP cpu']:6.1f}  "
            f"3MP {t['3MP cpu']:6.1f}  ratio {t['12MP cpu'] / t['3MP cpu']:.2f} | per-photo "
            f"CPU ratio {t['ratio']:.2f}, with the same persons found {t['ratio same']:.2f} "
            f"({t['same']:.0f} of {len(big)} photos)"
        )


def memory_part(photo: bytes, sides: list[int]) -> None:
    print("\n3. peak request memory of one 12 MP request, MB  [target >= 3x less]")
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"darkpose-photo-{os.getpid()}.jpg"
    tmp.write_bytes(photo)
    try:
        mem = {side: memory(tmp, side) for side in [0, *sides]}
    finally:
        tmp.unlink()
    for side, m in mem.items():
        full = mem[0]
        print(
            f"   side {side or 'full':<6} RSS growth {m['rss_growth_mb']:7.1f}  "
            f"admission reserved {m['reserved_mb']:6.1f} ({m['persons']} persons)  "
            f"413 bound {m['bound_mb']:5.0f}  (full/this: "
            f"{full['rss_growth_mb'] / max(m['rss_growth_mb'], 1e-9):.1f}x, "
            f"{full['reserved_mb'] / max(m['reserved_mb'], 1e-9):.1f}x, "
            f"{full['bound_mb'] / max(m['bound_mb'], 1e-9):.1f}x)"
        )


if __name__ == "__main__":
    sys.exit(main())
