"""The one result type: :class:`Poses`, the persons of one image as columns.

Every output reads it: the pipeline produces it, the Python API (:class:`darkpose.Poses` is this
class) returns it, the HTTP layer serialises it (``POST /pose``), ``darkpose infer`` and the
evaluations write its :meth:`Poses.to_coco` results, Ray's ingress answers from it.

Columns (N persons, K keypoints), sorted by ``scores`` descending when the pipeline made them:

* ``boxes``: (N, 4) float32 xyxy image px;
* ``box_scores``: (N,) float32 detector (or given) scores;
* ``keypoints``: (N, K, 3) float32 x, y (image px, pixel centres at integers), score — the
  scores clipped to [0, 1] (:func:`reported_keypoints`; a heatmap peak, DARK's refinement or an
  ensemble can exceed 1 slightly; rescoring and OKS-NMS ran on the unclipped scores);
* ``scores``: (N,) float32 rescored instance scores.

Indexing with an int gives a :class:`Person` (a per-row view with copies of the row's values);
with a slice, a boolean mask or an index array, a :class:`Poses` of those rows.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from darkpose.service.core.errors import InvalidParameter
from darkpose.service.core.transforms import xyxy_to_xywh
from darkpose.service.core.types import COCO_KEYPOINTS, F32
from darkpose.service.core.working import to_original_xy

U8 = npt.NDArray[np.uint8]


def reported_keypoints(keypoints: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Keypoints as every output reports them: a float64 copy with the scores clipped to
    [0, 1].  keypoints: (..., 3) or (K * 3,) numbers → (..., 3) (flat input → (K, 3))."""
    out = np.array(keypoints, dtype=np.float64, copy=True)
    if out.ndim < 2:
        out = out.reshape(-1, 3)
    np.clip(out[..., 2], 0.0, 1.0, out=out[..., 2])
    return out


@dataclass(frozen=True, eq=False)
class Person:
    """One row of :class:`Poses` (kept for code that handles one person at a time).

    bbox: (4,) float32 xyxy image px; keypoints: (K, 3) float32 (x, y image px, score);
    box_score: detector (or given) score; score: rescored instance score.
    """

    bbox: F32
    box_score: float
    keypoints: F32
    score: float

    def to_coco(self, image_id: int | None) -> dict[str, Any]:
        """This person's COCO result dict (:meth:`Poses.to_coco`)."""
        return Poses.from_persons([self]).to_coco(image_id)[0]


def _column(value: npt.ArrayLike, shape: tuple[int, ...], name: str) -> F32:
    a = np.asarray(value, dtype=np.float32)
    if a.size == 0:
        a = a.reshape((0, *shape[1:]))
    want = tuple(a.shape[0] if d < 0 else d for d in shape)
    if a.shape != want:
        shown = str(shape).replace("-1", "N")
        raise InvalidParameter(f"{name}: expected shape {shown}, got {a.shape}")
    return a


@dataclass(eq=False)
class Poses(Sequence[Person]):
    """The persons found in one image, as columns (see the module docstring for shapes).

    image_size: (W, H) of the image the coordinates refer to; timings: seconds per stage
    (detect, crop, pose, decode, postprocess, total); image_id: the caller's id (COCO results);
    image: the BGR uint8 (H, W, 3) image the model saw, when the caller keeps it (the Python API
    does: :meth:`draw`); keypoint_names: K names; source: the file name when the input was a
    path (added to :meth:`to_coco` as ``file_name``).  Keypoint scores are clipped to [0, 1]
    on construction.
    """

    boxes: F32
    box_scores: F32
    keypoints: F32
    scores: F32
    image_size: tuple[int, int] = (0, 0)
    timings: dict[str, float] = field(default_factory=dict)
    image_id: int | None = None
    image: U8 | None = None
    keypoint_names: tuple[str, ...] = COCO_KEYPOINTS
    source: str | None = None

    def __post_init__(self) -> None:
        k = len(self.keypoint_names)
        self.keypoints = _column(self.keypoints, (-1, k, 3), "keypoints")
        n = self.keypoints.shape[0]
        self.boxes = _column(self.boxes, (n, 4), "boxes")
        self.box_scores = _column(self.box_scores, (n,), "box_scores")
        self.scores = _column(self.scores, (n,), "scores")
        scores = self.keypoints[..., 2]
        if n and (scores.min() < 0.0 or scores.max() > 1.0):
            self.keypoints = self.keypoints.copy()
            np.clip(self.keypoints[..., 2], 0.0, 1.0, out=self.keypoints[..., 2])
        if self.image is not None and self.image_size == (0, 0):
            self.image_size = (int(self.image.shape[1]), int(self.image.shape[0]))

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def empty(cls, num_keypoints: int = len(COCO_KEYPOINTS), **fields: Any) -> Poses:
        """No persons (K = ``num_keypoints``); ``fields``: the other dataclass fields."""
        names = fields.pop("keypoint_names", None) or _names(num_keypoints)
        z = np.zeros((0,), np.float32)
        return cls(
            np.zeros((0, 4), np.float32),
            z,
            np.zeros((0, len(names), 3), np.float32),
            z.copy(),
            keypoint_names=tuple(names),
            **fields,
        )

    @classmethod
    def from_persons(cls, persons: Iterable[Person], **fields: Any) -> Poses:
        """Rows → columns; ``fields``: the other dataclass fields."""
        rows = list(persons)
        if not rows:
            return cls.empty(**fields)
        kpts = np.stack([np.asarray(p.keypoints, np.float32).reshape(-1, 3) for p in rows])
        if "keypoint_names" not in fields:
            fields["keypoint_names"] = _names(kpts.shape[1])
        return cls(
            np.stack([np.asarray(p.bbox, np.float32).reshape(4) for p in rows]),
            np.array([p.box_score for p in rows], np.float32),
            kpts,
            np.array([p.score for p in rows], np.float32),
            **fields,
        )

    # -- sequence of persons -----------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @overload
    def __getitem__(self, index: int) -> Person: ...

    @overload
    def __getitem__(self, index: slice | npt.NDArray[Any] | Sequence[int]) -> Poses: ...

    def __getitem__(self, index: Any) -> Person | Poses:
        if isinstance(index, int | np.integer):
            i = int(index)
            return Person(
                self.boxes[i].copy(),
                float(self.box_scores[i]),
                self.keypoints[i].copy(),
                float(self.scores[i]),
            )
        rows = np.arange(len(self))[index]
        return dataclasses.replace(
            self,
            boxes=self.boxes[rows],
            box_scores=self.box_scores[rows],
            keypoints=self.keypoints[rows],
            scores=self.scores[rows],
        )

    def __iter__(self) -> Iterator[Person]:
        return (self[i] for i in range(len(self)))

    @property
    def num_keypoints(self) -> int:
        """K."""
        return int(self.keypoints.shape[1])

    @property
    def persons(self) -> list[Person]:
        """The rows as :class:`Person` objects."""
        return list(self)

    # -- coordinates -------------------------------------------------------------------------
    def scaled(self, sx: float, sy: float | None = None) -> Poses:
        """A copy with x coordinates × ``sx`` and y × ``sy`` (default ``sx``) — keypoints and
        boxes; ``image_size`` rounded the same way (e.g. a downscaled overlay)."""
        sy = sx if sy is None else sy
        f = np.array([sx, sy], np.float32)
        kp = self.keypoints.copy()
        kp[..., :2] *= f
        w, h = self.image_size
        return dataclasses.replace(
            self,
            boxes=self.boxes * np.tile(f, 2),
            keypoints=kp,
            image_size=(max(1, round(w * sx)), max(1, round(h * sy))),
            image=None,
        )

    def to_original(self, scale: tuple[float, float], original_size: tuple[int, int]) -> Poses:
        """Found on a working image (:mod:`darkpose.service.core.working`) → the same persons
        in the original image's coordinates: keypoints and boxes mapped with
        :func:`~darkpose.service.core.working.to_original_xy` (``scale`` = (sx, sy) = original
        / working size), ``image_size`` = ``original_size`` (W, H).  The one place results are
        scaled back; scale (1, 1) only sets the size (the arrays are shared)."""
        if tuple(scale) == (1.0, 1.0):
            return dataclasses.replace(self, image_size=original_size)
        kp = self.keypoints.copy()
        kp[..., :2] = to_original_xy(kp[..., :2], scale)
        boxes = to_original_xy(self.boxes.reshape(-1, 2, 2), scale).reshape(-1, 4)
        return dataclasses.replace(
            self, boxes=boxes.astype(np.float32), keypoints=kp, image_size=original_size
        )

    # -- outputs -----------------------------------------------------------------------------
    def to_coco(self, image_id: int | None = None) -> list[dict[str, Any]]:
        """COCO keypoint results, one dict per person: ``image_id`` (default: the field),
        ``category_id`` 1, ``keypoints`` [x1, y1, s1, …] (3K, 3 decimals), ``score``, ``bbox``
        [x, y, w, h] (2 decimals), plus ``file_name`` when :attr:`source` is set."""
        iid = self.image_id if image_id is None else image_id
        n = len(self)
        kps = np.round(self.keypoints.astype(np.float64).reshape(n, 3 * self.num_keypoints), 3)
        boxes = np.round(xyxy_to_xywh(self.boxes).astype(np.float64), 2).tolist()
        kp_rows = kps.tolist()
        scores = self.scores.astype(np.float64).tolist()
        extra = {} if self.source is None else {"file_name": self.source}
        return [
            {
                "image_id": iid,
                "category_id": 1,
                "keypoints": kp_rows[i],
                "score": scores[i],
                "bbox": boxes[i],
                **extra,
            }
            for i in range(n)
        ]

    def draw(
        self, path: str | os.PathLike[str] | None = None, *, keypoint_threshold: float = 0.2
    ) -> U8:
        """The overlay (boxes, scores, skeletons) on a copy of :attr:`image`, BGR uint8
        (H, W, 3); written to ``path`` too when given (format from its suffix)."""
        import cv2

        from darkpose.service.core.visualize import draw_poses

        if self.image is None:
            raise InvalidParameter("draw: expected poses that hold their image, got none")
        overlay = draw_poses(self.image, self, keypoint_threshold=keypoint_threshold)
        if path is not None:
            p = Path(path)
            try:
                ok, enc = cv2.imencode(p.suffix or ".png", overlay)
            except cv2.error:  # no encoder for the suffix
                ok = False
            if not ok:
                raise InvalidParameter(
                    f"draw path: expected a suffix OpenCV can write (.png, .jpg), got {p.name}"
                )
            p.write_bytes(enc.tobytes())
        return overlay


def _names(k: int) -> tuple[str, ...]:
    """COCO's names for K = 17, else ``kp0``, ``kp1``, …"""
    return COCO_KEYPOINTS if k == len(COCO_KEYPOINTS) else tuple(f"kp{i}" for i in range(k))
