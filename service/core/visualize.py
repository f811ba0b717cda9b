"""Overlay drawing: person boxes, skeletons and keypoints on a BGR image."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from darkpose.service.core.errors import InvalidImage
from darkpose.service.core.poses import Person, Poses
from darkpose.service.core.types import COCO_SKELETON

#: BGR colours: left limbs, right limbs, centre (head/torso).
LEFT = (255, 128, 0)
RIGHT = (0, 128, 255)
CENTRE = (0, 220, 0)
BOX = (60, 220, 255)


def _limb_colour(a: int, b: int) -> tuple[int, int, int]:
    # COCO: odd indices (1, 3, ...) are left parts, even (2, 4, ...) right; 0 = nose
    if a > 0 and b > 0 and a % 2 == 1 and b % 2 == 1:
        return LEFT
    if a > 0 and b > 0 and a % 2 == 0 and b % 2 == 0:
        return RIGHT
    return CENTRE


def label_origin(
    text: str,
    corner: tuple[float, float],
    image_size: tuple[int, int],
    font_scale: float,
    thickness: int,
) -> tuple[int, int]:
    """Bottom-left origin for ``cv2.putText(text, FONT_HERSHEY_SIMPLEX, font_scale, thickness)``
    at a box's top-left ``corner`` (x, y): just above the box when it fits, else just inside
    it below the top edge, and shifted so the whole text box stays inside the image
    (``image_size`` (W, H); clamped at the top-left when the image is smaller than the text)."""
    (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    w, h = image_size
    x = int(round(corner[0])) + 2
    y = int(round(corner[1])) - 4  # baseline just above the box
    if y - th < 0:  # no room above: inside the box, below its top edge
        y = int(round(corner[1])) + th + 4
    x = max(0, min(x, w - 1 - tw))
    y = max(th, min(y, h - 1 - baseline))
    return x, y


def draw_poses(
    image: npt.NDArray[np.uint8],
    persons: Sequence[Person],
    keypoint_threshold: float = 0.2,
    skeleton: Sequence[tuple[int, int]] = COCO_SKELETON,
    draw_boxes: bool = True,
) -> npt.NDArray[np.uint8]:
    """A copy of ``image`` (BGR uint8 (H, W, 3)) with each person's box (and score), the skeleton
    edges whose two keypoints score ≥ ``keypoint_threshold`` and those keypoints drawn."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImage(
            f"image: expected BGR uint8 (H, W, 3), got {image.dtype} "
            f"{'x'.join(str(d) for d in image.shape)}"
        )
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    thick = max(1, int(round(max(h, w) / 400)))
    radius = max(2, thick + 1)
    shift = 4  # sub-pixel drawing: coordinates × 16
    scale = 1 << shift
    for person in persons:
        kp = np.asarray(person.keypoints, np.float64)
        if draw_boxes:
            x1, y1, x2, y2 = (float(v) for v in person.bbox)
            cv2.rectangle(
                out,
                (int(round(x1 * scale)), int(round(y1 * scale))),
                (int(round(x2 * scale)), int(round(y2 * scale))),
                BOX,
                thick,
                cv2.LINE_AA,
                shift,
            )
            label = f"{person.score:.2f}"
            cv2.putText(
                out,
                label,
                label_origin(label, (x1, y1), (w, h), 0.4 * thick, thick),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.4 * thick,
                BOX,
                thick,
                cv2.LINE_AA,
            )
        ok = kp[:, 2] >= keypoint_threshold
        for a, b in skeleton:
            if a < len(kp) and b < len(kp) and ok[a] and ok[b]:
                pa = (int(round(kp[a, 0] * scale)), int(round(kp[a, 1] * scale)))
                pb = (int(round(kp[b, 0] * scale)), int(round(kp[b, 1] * scale)))
                cv2.line(out, pa, pb, _limb_colour(a, b), thick + 1, cv2.LINE_AA, shift)
        for i in (int(j) for j in np.flatnonzero(ok)):
            centre = (int(round(kp[i, 0] * scale)), int(round(kp[i, 1] * scale)))
            cv2.circle(out, centre, radius * scale, (255, 255, 255), -1, cv2.LINE_AA, shift)
            cv2.circle(out, centre, radius * scale, _limb_colour(i, i), 1, cv2.LINE_AA, shift)
    return out


def overlay(
    image: npt.NDArray[np.uint8],
    poses: Poses,
    max_side: int,
    original_size: tuple[int, int] | None = None,
) -> npt.NDArray[np.uint8]:
    """The skeletons of ``poses`` drawn on ``image``, the whole downscaled so that its longest
    side is at most ``max_side`` (``max_render_side``).

    ``poses`` are in the coordinates of the original image of ``original_size`` (W, H)
    (default: ``image``'s own size); ``image`` may be that image at a working resolution: the
    overlay has the size the original would get and is drawn from ``image``."""
    h, w = image.shape[:2]
    ow, oh = original_size if original_size is not None else (w, h)
    scale = min(1.0, max_side / max(oh, ow))
    size = (max(1, round(ow * scale)), max(1, round(oh * scale)))
    if size != (w, h):
        interp = cv2.INTER_AREA if size[0] < w else cv2.INTER_LINEAR
        image = np.asarray(cv2.resize(image, size, interpolation=interp), np.uint8)
    if scale < 1.0:
        poses = poses.scaled(scale)
    return draw_poses(image, poses)
