"""Association maths of pose tracking: a box from keypoints, OKS of tracks to persons, similarity.

Pure numpy; keypoints (·, K, 3) x, y, score in image pixels (pixel centres at integers); boxes
xyxy.  :class:`darkpose.service.core.tracking.Tracker` assigns persons to tracks with
:func:`similarity`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from darkpose.service.core.nms import box_iou, oks_between

__all__ = [
    "KEYPOINT_BOX_ENLARGE",
    "KEYPOINT_VISIBLE",
    "MIN_BOX_KEYPOINTS",
    "box_iou",
    "keypoint_box",
    "keypoint_motion",
    "similarity",
    "track_oks",
]

F64 = npt.NDArray[np.float64]

#: A keypoint counts for a track's box (and its confidence) from this score on.
KEYPOINT_VISIBLE = 0.3
#: Fewest confident keypoints from which a box can be derived (fewer: re-detect).
MIN_BOX_KEYPOINTS = 3
#: The keypoints' extent is enlarged by this factor per side to approximate a detector's person
#: box (keypoints sit inside the body outline: the head top and the feet are not keypoints).
KEYPOINT_BOX_ENLARGE = 1.2


def keypoint_box(keypoints: npt.ArrayLike, threshold: float = KEYPOINT_VISIBLE) -> F64 | None:
    """The box (4,) xyxy around the confident keypoints of (K, 3) ``keypoints``, each side
    enlarged by :data:`KEYPOINT_BOX_ENLARGE`; None with fewer than :data:`MIN_BOX_KEYPOINTS`."""
    kp = np.asarray(keypoints, np.float64).reshape(-1, 3)
    vis = kp[kp[:, 2] >= threshold]
    if vis.shape[0] < MIN_BOX_KEYPOINTS:
        return None
    x0, y0 = vis[:, 0].min(), vis[:, 1].min()
    x1, y1 = vis[:, 0].max(), vis[:, 1].max()
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w = max(x1 - x0, 1.0) * KEYPOINT_BOX_ENLARGE
    h = max(y1 - y0, 1.0) * KEYPOINT_BOX_ENLARGE
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float64)


def keypoint_motion(
    previous: npt.ArrayLike, current: npt.ArrayLike, threshold: float = KEYPOINT_VISIBLE
) -> tuple[F64, float] | None:
    """How a pose moved between two frames: (shift (2,) px, scale) from (K, 3) ``previous`` to
    (K, 3) ``current`` keypoints, over the keypoints confident (score >= ``threshold``) in both.

    shift: the per-axis median of the keypoints' displacements (a keypoint that jumped to
    another body part or person does not move it); scale: the ratio of the keypoints' RMS
    distances from their mean (1 for a translation).  None with fewer than
    :data:`MIN_BOX_KEYPOINTS` such keypoints or a degenerate (single-point) pose.
    """
    a = np.asarray(previous, np.float64).reshape(-1, 3)
    b = np.asarray(current, np.float64).reshape(-1, 3)
    both = (a[:, 2] >= threshold) & (b[:, 2] >= threshold)
    if int(both.sum()) < MIN_BOX_KEYPOINTS:
        return None
    pa, pb = a[both, :2], b[both, :2]
    shift = np.median(pb - pa, axis=0)
    sa = float(np.sqrt(((pa - pa.mean(0)) ** 2).sum(1).mean()))
    sb = float(np.sqrt(((pb - pb.mean(0)) ** 2).sum(1).mean()))
    if not (sa > 1e-6 and sb > 1e-6):
        return None
    return np.asarray(shift, np.float64), sb / sa


def track_oks(
    track_kpts: F64, track_areas: F64, kpts: F64, sigmas: F64, threshold: float = KEYPOINT_VISIBLE
) -> F64:
    """(T, P) object keypoint similarity of T tracks' keypoints (T, K, 3) (areas (T,)) to P
    persons' keypoints (P, K, 3), over the keypoints whose score is >= ``threshold`` in both
    (0 when none are): COCO's ``exp(-d² / (2 s² (2σ)²))`` with s² the track's area."""
    var = (2.0 * np.asarray(sigmas, np.float64)) ** 2  # (K,)
    scale = np.broadcast_to(np.maximum(track_areas, 1.0)[:, None], (len(track_kpts), len(kpts)))
    both = (track_kpts[:, None, :, 2] >= threshold) & (kpts[None, :, :, 2] >= threshold)
    return oks_between(track_kpts, kpts, var, scale, both)


def similarity(track_kpts: F64, track_boxes: F64, kpts: F64, boxes: F64, sigmas: F64) -> F64:
    """(T, P) similarity of T tracks to P persons: max(OKS, box IoU).  kpts (·, K, 3), boxes
    (·, 4) xyxy; the OKS area is the track's box area."""
    t, p = track_kpts.shape[0], kpts.shape[0]
    if t == 0 or p == 0:
        return np.zeros((t, p), np.float64)
    iou = box_iou(track_boxes, boxes)
    areas = np.clip(track_boxes[:, 2] - track_boxes[:, 0], 1, None) * np.clip(
        track_boxes[:, 3] - track_boxes[:, 1], 1, None
    )
    return np.maximum(track_oks(track_kpts, areas, kpts, sigmas), iou)
