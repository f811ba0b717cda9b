"""Box NMS, OKS similarity / OKS-NMS (as mmpose's ``oks_iou`` / ``oks_nms``) and rescoring.

All functions are vectorised with numpy; the greedy loops run over kept items only.  Ties in
scores are broken by the lower index first (stable sort), so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from darkpose.service.core.errors import InvalidParameter
from darkpose.service.core.types import COCO_SIGMAS

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

__all__ = ["nms_boxes", "oks_iou", "oks_nms", "rescore"]


def _array(a: npt.ArrayLike, name: str, shape: str, ndim: int) -> F64:
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidParameter(f"{name}: expected a numeric array, got {type(a).__name__}") from exc
    if arr.ndim != ndim:
        raise InvalidParameter(f"{name}: expected shape {shape}, got {arr.shape}")
    return arr


def _order(scores: F64) -> I64:
    """Indices by score descending, ties by index ascending."""
    return np.argsort(-scores, kind="stable").astype(np.int64)


def _pairwise_iou(boxes: F64) -> F64:
    """boxes: (N, 4) xyxy → (N, N) IoU (continuous areas, no +1)."""
    x1, y1, x2, y2 = boxes.T
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    iw = np.clip(np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]), 0, None)
    ih = np.clip(np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]), 0, None)
    inter = iw * ih
    union = area[:, None] + area[None] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def _greedy(sim: F64, order: I64, threshold: float) -> I64:
    """Greedy suppression: keep ``order[0]``, drop everything with ``sim > threshold``, repeat."""
    suppressed = np.zeros(sim.shape[0], bool)
    keep: list[int] = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= sim[i] > threshold
    return np.asarray(keep, np.int64)


def nms_boxes(boxes_xyxy: npt.ArrayLike, scores: npt.ArrayLike, iou_threshold: float) -> I64:
    """Greedy IoU NMS.

    boxes_xyxy: (N, 4); scores: (N,).  Returns kept indices ``(M,) int64`` ordered by score
    descending.  A box is suppressed when its IoU with a kept, higher-scored box is
    ``> iou_threshold``.
    """
    b = _array(boxes_xyxy, "boxes_xyxy", "(N, 4)", 2)
    s = _array(scores, "scores", "(N,)", 1)
    if b.shape[1:] != (4,) or b.shape[0] != s.shape[0]:
        raise InvalidParameter(
            f"boxes_xyxy/scores: expected (N, 4) and (N,), got {b.shape} and {s.shape}"
        )
    if not 0.0 <= iou_threshold <= 1.0:
        raise InvalidParameter(f"iou_threshold: expected a value in [0, 1], got {iou_threshold}")
    if b.shape[0] == 0:
        return np.zeros((0,), np.int64)
    return _greedy(_pairwise_iou(b), _order(s), iou_threshold)


def _sigmas(sigmas: Sequence[float] | npt.ArrayLike, k: int) -> F64:
    sig = np.asarray(sigmas, np.float64)
    if sig.shape != (k,):
        raise InvalidParameter(f"sigmas: expected shape ({k},), got {sig.shape}")
    return sig


def oks_iou(
    kpts: npt.ArrayLike,
    areas: npt.ArrayLike,
    sigmas: Sequence[float] | npt.ArrayLike = COCO_SIGMAS,
    vis_thr: float | None = None,
) -> F64:
    """Pairwise object keypoint similarity, exactly as mmpose's ``oks_iou``.

    kpts: (N, K, 3) x, y, score (image px); areas: (N,) instance areas; sigmas: (K,) COCO-style
    sigmas (``vars = (2 σ)²``).  ``e = (dx² + dy²) / vars / ((a_i + a_j) / 2 + eps) / 2``,
    OKS = mean over keypoints of ``exp(-e)``; with ``vis_thr`` only keypoints whose score is
    ``> vis_thr`` in *both* instances count (0 when none do).  Returns ``(N, N) float64``.
    """
    kp = _array(kpts, "kpts", "(N, K, 3)", 3)
    a = _array(areas, "areas", "(N,)", 1)
    if kp.shape[2] != 3 or kp.shape[0] != a.shape[0]:
        raise InvalidParameter(
            f"kpts/areas: expected (N, K, 3) and (N,), got {kp.shape} and {a.shape}"
        )
    n, k, _ = kp.shape
    var = (2.0 * _sigmas(sigmas, k)) ** 2
    d2 = ((kp[:, None, :, :2] - kp[None, :, :, :2]) ** 2).sum(-1)  # (N, N, K)
    denom = (a[:, None] + a[None]) / 2.0 + np.spacing(1)
    e = d2 / var / denom[..., None] / 2.0
    ex = np.exp(-e)
    if vis_thr is None:
        return ex.mean(-1) if k else np.zeros((n, n))
    vis = kp[:, :, 2] > vis_thr
    both = vis[:, None, :] & vis[None, :, :]
    cnt = both.sum(-1)
    tot = np.where(both, ex, 0.0).sum(-1)
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), 0.0)


def oks_nms(
    kpts: npt.ArrayLike,
    scores: npt.ArrayLike,
    areas: npt.ArrayLike,
    threshold: float = 0.9,
    sigmas: Sequence[float] | npt.ArrayLike = COCO_SIGMAS,
    vis_thr: float | None = None,
) -> I64:
    """OKS-based greedy NMS (mmpose ``oks_nms``).

    kpts: (N, K, 3); scores: (N,); areas: (N,).  An instance is dropped when its OKS with a
    kept, higher-scored instance is ``> threshold``.  Returns kept indices ``(M,) int64``
    ordered by score descending.
    """
    s = _array(scores, "scores", "(N,)", 1)
    kp = _array(kpts, "kpts", "(N, K, 3)", 3)
    if kp.shape[0] != s.shape[0]:
        raise InvalidParameter(
            f"kpts/scores: expected the same N, got {kp.shape[0]} and {s.shape[0]}"
        )
    if kp.shape[0] == 0:
        return np.zeros((0,), np.int64)
    sim = oks_iou(kp, areas, sigmas, vis_thr)
    return _greedy(sim, _order(s), threshold)


def rescore(box_scores: npt.ArrayLike, kpt_scores: npt.ArrayLike, threshold: float = 0.2) -> F32:
    """Instance score = box score × mean of the keypoint scores ``> threshold``.

    box_scores: (N,); kpt_scores: (N, K).  An instance with no keypoint above the threshold
    gets 0 (as mmpose/HRNet rescoring).  Returns ``(N,) float32``.
    """
    b = _array(box_scores, "box_scores", "(N,)", 1)
    k = _array(kpt_scores, "kpt_scores", "(N, K)", 2)
    if k.shape[0] != b.shape[0]:
        raise InvalidParameter(
            f"box_scores/kpt_scores: expected the same N, got {b.shape[0]} and {k.shape[0]}"
        )
    mask = k > threshold
    cnt = mask.sum(1)
    mean = np.where(cnt > 0, np.where(mask, k, 0.0).sum(1) / np.maximum(cnt, 1), 0.0)
    return (b * mean).astype(np.float32)
