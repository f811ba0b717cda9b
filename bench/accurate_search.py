"""Search for the ``accurate`` profile on cached detector and pose outputs.

    python bench/accurate_search.py --cache /tmp/darkpose-cache \\
        --rows "picodet;fused(picodet,yolox);fused(picodet,yolox)|pad=1.15" [--ref picodet]
        [--analyse picodet] [--limit N] [--boot 1000]
    python bench/accurate_search.py --recall "picodet;wbf:picodet+yolox:iou=0.65:w=2/1"
    python bench/accurate_search.py --serving "fused(picodet,yolox,weights=2/1,iou=0.65)|pad=1.15"

A row is ``DETECTOR[|pad=P][|tp=P1+P2][|flip=0][|thr=T][|cap=N][|oks=T][|soft=S][|kpt=T]``:
a detector config (``DARKPOSE_DETECTOR`` text form, or ``gt`` for the ground-truth boxes), the
box padding (default 1.25), the further paddings of the multi-scale test (``test_paddings``,
default none), the flip test (default on), the evaluation threshold (default 0.05), the boxes
per image sent to the pose model (default 20, COCO's maxDets), the OKS-NMS threshold
(``oks_nms_threshold``, default the pipeline option's; ``oks=1`` = off), the soft OKS-NMS sigma
(``soft_nms_sigma``, default the pipeline option's; ``soft=0`` = the OKS-NMS drop only) and the
keypoint score threshold of the rescoring (``keypoint_score_threshold``, default the pipeline
option's).  ``oks``, ``soft`` and ``kpt`` act only in the post-processing (the pipeline's own
rescoring and OKS-NMS on the cached keypoints), so rows that differ only in them cost only
COCOeval.  Each detector runs once over the set at score 0.05 and its boxes are stored in
``--cache`` (one pickle per config); each pose crop (image, box, padding, flip) runs once and
its keypoints are stored too, so a row that reuses boxes costs only COCOeval.  Every row:
keypoint AP (pycocotools), bootstrap 95% CI over images
and the paired Δ against ``--ref`` (the first row by default), as in ``bench/profiles.py``.

``--analyse ROW`` splits the AP lost between ``gt`` and ROW: persons the detector missed (no
box at IoU >= 0.5), false positives (boxes matching no annotated person) and box quality, by
re-scoring ROW with oracle substitutions.  ``--recall``: box recall of the keypoint-annotated
persons by each detector's first 20 boxes.  ``--serving ROW``: persons returned and matched at
OKS >= 0.5 per serving threshold (the F1 that chooses a profile's ``det_score_threshold``).
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_line  # noqa: E402
from bench.profiles import COCO_MAX_DETS, VAL_DEV, Matches, bootstrap, read  # noqa: E402
from darkpose.service.core.options import PipelineOptions  # noqa: E402
from darkpose.service.core.pipeline import Pipeline, merge_passes  # noqa: E402
from darkpose.service.core.transforms import boxes_to_center_scale  # noqa: E402
from darkpose.service.core.types import Detections  # noqa: E402
from darkpose.service.evaluation import gt_boxes, load_coco  # noqa: E402
from darkpose.service.runtime.factory import build_detector, build_pose_models  # noqa: E402
from darkpose.service.runtime.fusion import fuse_detections  # noqa: E402
from darkpose.service.settings import Settings  # noqa: E402

POSE_MODEL = "pp_tinypose_256x192.onnx"
DET_THRESHOLD = 0.05
FLOAT_OPTS = ("pad", "thr", "flip", "cap", "oks", "kpt", "soft")


def slug(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def parse_row(row: str) -> dict[str, Any]:
    det, *opts = row.split("|")
    out: dict[str, Any] = {
        "det": det.strip(),
        "pad": 1.25,
        "flip": True,
        "thr": DET_THRESHOLD,
        "cap": COCO_MAX_DETS,
        "oks": PipelineOptions.model_fields["oks_nms_threshold"].default,
        "kpt": PipelineOptions.model_fields["keypoint_score_threshold"].default,
        "soft": PipelineOptions.model_fields["soft_nms_sigma"].default,
        "tp": (),
    }
    for o in opts:
        k, _, v = o.partition("=")
        out[k.strip()] = float(v) if k.strip() in FLOAT_OPTS else v.strip()
    if isinstance(out["tp"], str):
        out["tp"] = tuple(float(p) for p in out["tp"].split("+") if p)
    out["flip"] = bool(out["flip"])
    out["cap"] = int(out["cap"])
    return out


def settings(**kw: Any) -> Settings:
    return Settings(providers="cpu", intra_op_threads=1, inter_op_threads=1, **kw)


class Search:
    def __init__(self, cache: Path, coco: Any, images: Path, img_ids: list[int]) -> None:
        self.cache, self.coco, self.images, self.img_ids = cache, coco, images, img_ids
        cache.mkdir(parents=True, exist_ok=True)
        s = settings(pose_models=[POSE_MODEL], detector="picodet")
        self.pipeline = Pipeline(None, build_pose_models(s), None, s.pose_model_weights)
        self.base = self.pipeline.resolve_options(
            PipelineOptions.from_settings(s, max_persons=COCO_MAX_DETS)
        )
        self.pose_file = cache / "pose.pkl"
        self.pose: dict[tuple[Any, ...], np.ndarray] = (
            pickle.loads(self.pose_file.read_bytes()) if self.pose_file.exists() else {}
        )
        self._frames: dict[int, np.ndarray] = {}

    def frame(self, image_id: int) -> np.ndarray:
        if image_id not in self._frames:
            self._frames[image_id] = read(self.images, self.coco, image_id)
        return self._frames[image_id]

    def boxes(self, det: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image: boxes (M, 4) xyxy float32, scores (M,), score >= 0.05, sorted."""
        if det == "gt":
            return [gt_boxes(self.coco, i) for i in self.img_ids]
        if det.startswith("wbf:"):
            return self.fused(det)
        path = self.cache / f"det-{slug(det)}.pkl"
        done: dict[int, tuple[np.ndarray, np.ndarray]] = (
            pickle.loads(path.read_bytes()) if path.exists() else {}
        )
        todo = [i for i in self.img_ids if i not in done]
        if todo:
            detector = build_detector(settings(detector=det))
            t0 = time.perf_counter()
            for i in todo:
                d = detector.detect(self.frame(i), score_threshold=DET_THRESHOLD)
                b, s = np.asarray(d.boxes, np.float32), np.asarray(d.scores, np.float32)
                order = np.argsort(-s, kind="stable")
                done[i] = (b[order], s[order])
            print(f"# {det}: {len(todo)} images in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
            path.write_bytes(pickle.dumps(done))
        return [done[i] for i in self.img_ids]

    def fused(self, det: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """``wbf:A+B[:iou=0.55][:conf=avg][:w=1/1][:skip=0]``: weighted boxes fusion of the
        cached outputs of detectors A, B (as FusedDetector, without re-running them)."""
        _, members, *opts = det.split(":")
        kw: dict[str, Any] = {}
        for o in opts:
            k, _, v = o.partition("=")
            if k == "w":
                kw["weights"] = [float(x) for x in v.split("/")]
            elif k == "conf":
                kw["conf_type"] = v
            else:
                kw[{"iou": "iou_thr", "skip": "skip_box_thr"}[k]] = float(v)
        per = [self.boxes(m) for m in members.split("+")]
        out = []
        for n, i in enumerate(self.img_ids):
            info = self.coco.imgs[i]
            dets = [Detections(*p[n]) for p in per]
            f = fuse_detections(dets, (int(info["width"]), int(info["height"])), **kw)
            keep = f.scores >= DET_THRESHOLD
            out.append(
                (np.asarray(f.boxes[keep], np.float32), np.asarray(f.scores[keep], np.float32))
            )
        return out

    def recall(self, det: str, thr: float) -> str:
        """R@.5 / R@.7 of the keypoint-annotated persons by the top-20 boxes >= thr, boxes per
        image, and boxes >= 0.3 matching no person."""
        hits5 = hits7 = total = nb = fp = 0
        for i, (b, s) in zip(self.img_ids, self.boxes(det), strict=True):
            keep = s >= thr
            b, s = b[keep][:COCO_MAX_DETS], s[keep][:COCO_MAX_DETS]
            g = gt_boxes(self.coco, i)[0]
            nb += b.shape[0]
            total += g.shape[0]
            if g.shape[0] and b.shape[0]:
                m = iou(g, b).max(axis=1)
                hits5 += int((m >= 0.5).sum())
                hits7 += int((m >= 0.7).sum())
            allp = all_person_boxes(self.coco, i)
            strong = b[s >= 0.3]
            if strong.shape[0]:
                fp += int(
                    strong.shape[0]
                    if allp.shape[0] == 0
                    else (iou(strong, allp).max(axis=1) < 0.5).sum()
                )
        n = len(self.img_ids)
        return f"| {det} | {hits5 / total:.3f} | {hits7 / total:.3f} | {nb / n:.1f} | {fp} |"

    def keypoints(self, image_id: int, b: np.ndarray, pad: float, flip: bool) -> np.ndarray:
        """(M, 17, 3) keypoints of boxes ``b`` (cached per box)."""
        keys = [(image_id, pad, flip, *np.round(x, 2).tolist()) for x in b]
        miss = [k for k, key in enumerate(keys) if key not in self.pose]
        if miss:
            opts = self.base.replace(flip=flip, box_padding=pad)
            bm = b[miss]
            c, sc = boxes_to_center_scale(bm, self.pipeline.spec.aspect_ratio, pad)
            kp, _ = self.pipeline.pose.keypoints(self.frame(image_id), c, sc, opts)
            for k, row in zip(miss, np.asarray(kp), strict=True):
                self.pose[keys[k]] = row
        return np.stack([self.pose[k] for k in keys]) if keys else np.zeros((0, 17, 3))

    def save(self) -> None:
        self.pose_file.write_bytes(pickle.dumps(self.pose))

    def results(self, row: dict[str, Any], subst: Any = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        boxes = self.boxes(row["det"])
        opts = self.base.replace(
            flip=row["flip"],
            box_padding=row["pad"],
            oks_nms_threshold=row["oks"],
            keypoint_score_threshold=row["kpt"],
            soft_nms_sigma=row["soft"],
        )
        t0 = time.perf_counter()
        for n, (i, (b, s)) in enumerate(zip(self.img_ids, boxes, strict=True)):
            keep = s >= row["thr"]
            b, s = b[keep][: row["cap"]], s[keep][: row["cap"]]
            if subst is not None:
                b, s = subst(i, b, s)
            if b.shape[0] == 0:
                continue
            passes = [self.keypoints(i, b, p, row["flip"]) for p in (row["pad"], *row["tp"])]
            kp = merge_passes(np.concatenate(passes).astype(np.float32), b.shape[0])
            poses = self.pipeline._postprocess(b.astype(np.float32), s.astype(np.float32), kp, opts)
            out += poses.to_coco(i)
            if n % 40 == 39:
                self.save()
        if time.perf_counter() - t0 > 5:
            print(f"# pose {row}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        self.save()
        return out


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (N, M) of xyxy boxes."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    aa = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    ab = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(aa[:, None] + ab[None, :] - inter, 1e-9)


def all_person_boxes(coco: Any, image_id: int) -> np.ndarray:
    """Every annotated person (keypoints or not, crowd included) (M, 4) xyxy."""
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    xywh = np.asarray([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", default="", help="';'-separated rows")
    ap.add_argument("--ref", default=None)
    ap.add_argument("--analyse", default=None)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/darkpose-accurate-cache"))
    ap.add_argument("--data", type=Path, default=VAL_DEV)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--serving", default=None, help="row: F1 of persons per serving threshold")
    ap.add_argument("--recall", default=None, help="';'-separated detectors: box recall only")
    args = ap.parse_args(argv)
    coco = load_coco(args.data / "annotations" / "person_keypoints.json")
    img_ids = sorted(coco.getImgIds())[: args.limit]
    search = Search(args.cache, coco, args.data / "images", img_ids)
    rng = np.random.default_rng(0)
    samples = rng.integers(0, len(img_ids), size=(args.boot, len(img_ids)))
    print(f"# {args.data.name}: {len(img_ids)} images; {time.strftime('%Y-%m-%d')}")
    print(f"# CPU: {cpu_line()}")
    if args.recall:
        print("| detector (top 20) | R@.5kp | R@.7kp | boxes/image | FP boxes >= 0.3 |")
        print("|---|---|---|---|---|")
        for det in args.recall.split(";"):
            print(search.recall(det.strip(), DET_THRESHOLD), flush=True)
        return 0
    if args.serving:
        print("| serving threshold | persons | matched (OKS ≥ 0.5) | precision | recall | F1 |")
        print("|---|---|---|---|---|---|")
        for thr in (0.2, 0.3, 0.4, 0.5, 0.6):
            row = parse_row(args.serving) | {"thr": thr}
            m = Matches(coco, search.results(row), img_ids)
            kept = [p for p in m.per_image if p is not None]
            returned = sum(int((~p[2][0].astype(bool)).sum()) for p in kept)
            matched = sum(int(((p[1][0] != 0) & ~p[2][0].astype(bool)).sum()) for p in kept)
            annotated = sum(p[3] for p in kept)
            pr, rc = matched / max(returned, 1), matched / max(annotated, 1)
            f1 = 2 * pr * rc / max(pr + rc, 1e-9)
            print(f"| {thr:.2f} | {returned} | {matched} | {pr:.3f} | {rc:.3f} | {f1:.3f} |")
        return 0
    rows = [r.strip() for r in args.rows.split(";") if r.strip()]
    ref = args.ref or rows[0]
    rows = [ref] + [r for r in rows if r != ref]
    table: dict[str, tuple[float, np.ndarray]] = {}
    extra: list[tuple[str, Any]] = []
    if args.analyse:
        det_idx = {i: k for k, i in enumerate(img_ids)}
        gts = [gt_boxes(coco, i)[0] for i in img_ids]

        def no_fp(i: int, b: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            allp = all_person_boxes(coco, i)
            if allp.shape[0] == 0 or b.shape[0] == 0:
                return b[:0], s[:0]
            ok = iou(b, allp).max(axis=1) >= 0.5
            return b[ok], s[ok]

        def gt_for_matched(i: int, b: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            g = gts[det_idx[i]]
            if g.shape[0] == 0 or b.shape[0] == 0:
                return b, s
            m = iou(b, g)
            b = b.copy()
            for k in range(b.shape[0]):
                j = int(m[k].argmax())
                if m[k, j] >= 0.5:
                    b[k] = g[j]
            return b, s

        def plus_missed(i: int, b: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            g = gts[det_idx[i]]
            if g.shape[0] == 0:
                return b, s
            miss = g if b.shape[0] == 0 else g[iou(g, b).max(axis=1) < 0.5]
            low = float(s.min()) if s.size else 0.5
            return (np.concatenate([b, miss]).astype(np.float32),
                    np.concatenate([s, np.full(len(miss), low, np.float32)]))  # fmt: skip

        extra = [
            (f"{args.analyse} without false positives (IoU<0.5 to every person)", no_fp),
            (f"{args.analyse} with matched boxes replaced by their GT box", gt_for_matched),
            (f"{args.analyse} plus missed GT persons (lowest score)", plus_missed),
        ]
    print("| config | AP | 95% CI | Δ vs ref | Δ 95% CI |")
    print("|---|---|---|---|---|")
    ref_m = Matches(coco, [], img_ids)
    for name, subst in [(r, None) for r in rows] + [(n, f) for n, f in extra]:
        row = parse_row(args.analyse if subst is not None else name)
        m = Matches(coco, search.results(row, subst), img_ids)
        b = bootstrap(m, samples)
        table[name] = (m.ap, b)
        lo, hi = np.percentile(b, [2.5, 97.5])
        if name == ref:
            ref_m = m
            print(f"| {name} | {m.ap:.3f} | [{lo:.3f}, {hi:.3f}] | ref |  |", flush=True)
            continue
        d = m.ap - ref_m.ap
        db = b - table[ref][1]
        dlo, dhi = np.percentile(db, [2.5, 97.5])
        ci = f"[{dlo:+.3f}, {dhi:+.3f}]"
        print(f"| {name} | {m.ap:.3f} | [{lo:.3f}, {hi:.3f}] | {d:+.3f} | {ci} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
