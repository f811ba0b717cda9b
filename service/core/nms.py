"""Box NMS, OKS similarity / OKS-NMS (as mmpose's ``oks_iou`` / ``oks_nms``) and rescoring.

All functions are vectorised with numpy; the greedy loops run over kept items only and compute
one similarity row per kept item, so NMS memory is linear in the candidates.  Ties in
scores are broken by the lower index first (stable sort), so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from darkpose.service.core.errors import InvalidParameter
from darkpose.service.core.types import COCO_SIGMAS

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

__all__ = [
    "DEFAULT_PRE_NMS_TOPK",
    "box_iou",
    "nms_boxes",
    "oks_between",
    "oks_iou",
    "oks_nms",
    "rescore",
    "soft_oks_nms",
    "top_k",
]

#: Detector candidates (highest scores first) kept before box NMS
#: (``DARKPOSE_DET_PRE_NMS_TOPK``): the smallest cap measured to change neither end-to-end COCO
#: AP at the evaluation threshold 0.05 nor any answer at the serving default 0.3
#: (docs/request-cost.md).
DEFAULT_PRE_NMS_TOPK = 200


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


def top_k(scores: npt.ArrayLike, k: int) -> I64:
    """Indices of the ``k`` highest ``scores`` (N,), by score descending, ties by index
    ascending; all N of them (in that order) when N ≤ k.  Returns ``(min(N, k),) int64``."""
    return _order(np.asarray(scores, np.float64).reshape(-1))[: max(0, int(k))]


def box_iou(a: npt.ArrayLike, b: npt.ArrayLike) -> F64:
    """IoU matrix (Na, Nb) float64 of boxes a: (Na, 4) and b: (Nb, 4) xyxy (continuous areas,
    no +1; 0 where the union is empty)."""
    ax1, ay1, ax2, ay2 = np.asarray(a, np.float64).reshape(-1, 4).T
    bx1, by1, bx2, by2 = np.asarray(b, np.float64).reshape(-1, 4).T
    area_a = np.clip(ax2 - ax1, 0, None) * np.clip(ay2 - ay1, 0, None)
    area_b = np.clip(bx2 - bx1, 0, None) * np.clip(by2 - by1, 0, None)
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(ax1[:, None], bx1[None]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(ay1[:, None], by1[None]), 0, None)
    inter = iw * ih
    union = area_a[:, None] + area_b[None] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return np.asarray(iou, np.float64)


def _greedy(row: Callable[[int], F64], n: int, order: I64, threshold: float) -> I64:
    """Greedy suppression over ``n`` items: keep ``order[0]``, drop every item whose similarity
    ``row(kept)`` (n,) to it is ``> threshold``, repeat.  One row at a time: memory O(n), time
    O(n × kept)."""
    suppressed = np.zeros(n, bool)
    keep: list[int] = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= row(int(i)) > threshold
    return np.asarray(keep, np.int64)


def nms_boxes(boxes_xyxy: npt.ArrayLike, scores: npt.ArrayLike, iou_threshold: float) -> I64:
    """Greedy IoU NMS.

    boxes_xyxy: (N, 4); scores: (N,).  Returns kept indices ``(M,) int64`` ordered by score
    descending.  A box is suppressed when its IoU with a kept, higher-scored box is
    ``> iou_threshold``.  Memory is O(N): one IoU row per kept box, never the (N, N) matrix.
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
    return _greedy(lambda i: box_iou(b[i : i + 1], b)[0], b.shape[0], _order(s), iou_threshold)


def _sigmas(sigmas: Sequence[float] | npt.ArrayLike, k: int) -> F64:
    sig = np.asarray(sigmas, np.float64)
    if sig.shape != (k,):
        raise InvalidParameter(f"sigmas: expected shape ({k},), got {sig.shape}")
    return sig


def _checked_kpts(kpts: npt.ArrayLike, areas: npt.ArrayLike) -> tuple[F64, F64]:
    kp = _array(kpts, "kpts", "(N, K, 3)", 3)
    a = _array(areas, "areas", "(N,)", 1)
    if kp.shape[2] != 3 or kp.shape[0] != a.shape[0]:
        raise InvalidParameter(
            f"kpts/areas: expected (N, K, 3) and (N,), got {kp.shape} and {a.shape}"
        )
    return kp, a


def oks_between(
    kp_a: F64, kp_b: F64, var: F64, scale: F64, visible: npt.NDArray[np.bool_] | None
) -> F64:
    """The object keypoint similarity formula, the one definition every OKS here uses.

    kp_a: (Na, K, 3) and kp_b: (Nb, K, 3) x, y, score; var: (K,) ``(2 σ)²``; scale: (Na, Nb)
    the object scale s² of each pair (an area); visible: (Na, Nb, K) the keypoints that count,
    or ``None`` for all.  ``e = (dx² + dy²) / var / s² / 2`` (COCO's ``exp(-d² / (2 s² (2σ)²))``);
    OKS = mean of ``exp(-e)`` over the counted keypoints, 0 where none count.  Returns
    ``(Na, Nb) float64``.  Callers choose the scale and the visibility rule (mmpose's OKS-NMS:
    the pair's mean area, scores above a threshold; tracking: the track's own area).
    """
    d2 = ((kp_a[:, None, :, :2] - kp_b[None, :, :, :2]) ** 2).sum(-1)  # (Na, Nb, K)
    ex = np.exp(-(d2 / var / scale[..., None] / 2.0))
    if visible is None:
        return np.asarray(ex.mean(-1), np.float64) if kp_a.shape[1] else np.zeros(scale.shape)
    cnt = visible.sum(-1)
    tot = np.where(visible, ex, 0.0).sum(-1)
    return np.asarray(np.where(cnt > 0, tot / np.maximum(cnt, 1), 0.0), np.float64)


def _kpts_and_scores(kpts: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[F64, F64]:
    """The keypoints (N, K, 3) and scores (N,) of an OKS-NMS call, checked to have the same N."""
    s = _array(scores, "scores", "(N,)", 1)
    kp = _array(kpts, "kpts", "(N, K, 3)", 3)
    if kp.shape[0] != s.shape[0]:
        raise InvalidParameter(
            f"kpts/scores: expected the same N, got {kp.shape[0]} and {s.shape[0]}"
        )
    return kp, s


def _oks(kp_a: F64, a_a: F64, kp_b: F64, a_b: F64, var: F64, vis_thr: float | None) -> F64:
    """mmpose's OKS of instances a: (Na, K, 3), areas (Na,) against b: (Nb, K, 3), (Nb,) →
    (Na, Nb): the pair's mean area (+ eps) as the scale; with ``vis_thr`` only keypoints scored
    ``> vis_thr`` in both count."""
    scale = (a_a[:, None] + a_b[None]) / 2.0 + np.spacing(1)
    visible = (
        None
        if vis_thr is None
        else (kp_a[:, None, :, 2] > vis_thr) & (kp_b[None, :, :, 2] > vis_thr)
    )
    return oks_between(kp_a, kp_b, var, scale, visible)


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
    kp, a = _checked_kpts(kpts, areas)
    var = (2.0 * _sigmas(sigmas, kp.shape[1])) ** 2
    return _oks(kp, a, kp, a, var, vis_thr)


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
    ordered by score descending; memory O(N × K) (one OKS row per kept instance).
    """
    kp, s = _kpts_and_scores(kpts, scores)
    if kp.shape[0] == 0:
        return np.zeros((0,), np.int64)
    kp, a = _checked_kpts(kp, areas)
    var = (2.0 * _sigmas(sigmas, kp.shape[1])) ** 2

    def row(i: int) -> F64:
        return _oks(kp[i : i + 1], a[i : i + 1], kp, a, var, vis_thr)[0]

    return _greedy(row, kp.shape[0], _order(s), threshold)


def soft_oks_nms(
    kpts: npt.ArrayLike,
    scores: npt.ArrayLike,
    areas: npt.ArrayLike,
    sigma: float,
    threshold: float = 0.9,
    sigmas: Sequence[float] | npt.ArrayLike = COCO_SIGMAS,
    vis_thr: float | None = None,
) -> tuple[I64, F64]:
    """Soft OKS-NMS: Gaussian soft-NMS (Bodla et al., ICCV 2017) with OKS as the overlap.

    kpts: (N, K, 3); scores: (N,); areas: (N,); ``sigma`` > 0.  Repeatedly keep the
    highest-scored remaining instance and multiply every other remaining score by
    ``exp(-OKS² / sigma)`` of its OKS with the kept one; an instance whose OKS with a kept one
    is ``> threshold`` is dropped (as :func:`oks_nms`).  A duplicate of a person thus ranks below
    the other persons instead of disappearing (COCO AP counts it as a late false positive, not a
    missed person when it was the better pose).  Returns the kept indices ``(M,) int64`` ordered
    by their new score descending and the new scores ``(N,) float64`` (0 for dropped ones).
    Memory O(N × K): one OKS row per kept instance.
    """
    kp, s = _kpts_and_scores(kpts, scores)
    s = s.copy()
    if not (np.isfinite(sigma) and sigma > 0):
        raise InvalidParameter(f"sigma: expected a number > 0, got {sigma}")
    kp, a = _checked_kpts(kp, areas)
    var = (2.0 * _sigmas(sigmas, kp.shape[1])) ** 2
    remaining = np.ones(s.shape[0], bool)
    keep: list[int] = []
    while remaining.any():
        i = int(np.flatnonzero(remaining)[np.argmax(s[remaining])])  # ties: the lower index
        keep.append(i)
        remaining[i] = False
        oks = _oks(kp[i : i + 1], a[i : i + 1], kp, a, var, vis_thr)[0]
        dropped = remaining & (oks > threshold)
        s[dropped] = 0.0
        remaining &= ~dropped
        s[remaining] *= np.exp(-(oks[remaining] ** 2) / sigma)
    return np.asarray(keep, np.int64), s


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
