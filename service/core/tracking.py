"""Pose tracking over time: stable ``track_id``s, One-Euro smoothing, detection every k frames.

Three layers, all per stream (no global state), pure numpy + scipy:

* :class:`~darkpose.service.core.smoothing.OneEuroFilter` — the One-Euro low-pass filter
  (Casiez et al., CHI 2012) on an array of any shape, frame-rate aware (it takes the time
  between samples).  Speeds are measured in box diagonals per second (one ``beta`` fits
  persons of any size); the keypoints' median motion moves the filter's prediction of all of
  them, so a moving person or camera is followed without lag, and the keypoints' own noise is
  smoothed; the shared speed opens the cutoff of all keypoints.
* :class:`Tracker` — assigns the persons of each frame to tracks: similarity = max(OKS, box IoU)
  (:func:`darkpose.service.core.association.similarity`) against each track's pose and box
  predicted at constant velocity (the keypoints' median motion,
  :func:`~darkpose.service.core.association.keypoint_motion`),
  optimal assignment by :func:`scipy.optimize.linear_sum_assignment`, a match needs
  ``match_threshold``.  Unmatched persons are born as tracks (detection frames only, at most
  ``max_tracks`` alive); an unmatched track is *missing* for up to ``grace_frames`` frames,
  during which it can be matched again (re-identification, same id), then dies.
* :class:`PoseTracker` — drives a :class:`~darkpose.service.core.pipeline.Pipeline`: the detector
  runs on frame 0, then every ``det_every`` frames; in between, each live track's box is its
  last box moved at the track's velocity, and after the pose model ran in it, moved and scaled
  as the keypoints moved (a box re-derived from the keypoints' extent drifts off a person whose
  legs are not seen); the pipeline skips detection.  It re-detects at once on the next frame
  when a track went missing between detections, when a track's pose confidence drops under
  ``redetect_score`` or when no track is left.

Coordinates are image pixels, pixel centres at integers; boxes xyxy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from darkpose.service.core.association import (
    KEYPOINT_VISIBLE,
    keypoint_motion,
    similarity,
    track_oks,
)
from darkpose.service.core.errors import InvalidParameter
from darkpose.service.core.pipeline import (
    Person,
    Pipeline,
    PipelineOptions,
    PoseResult,
    Poses,
    too_small_for_person,
)
from darkpose.service.core.smoothing import OneEuroFilter
from darkpose.service.core.types import COCO_SIGMAS

F64 = npt.NDArray[np.float64]

#: An unmatched person whose keypoints are this similar (OKS) to a person already assigned on
#: the same frame is a duplicate detection of that person: no track is born for it.
DUPLICATE_OKS = 0.6
#: Most relative change of a derived box's width or height from one frame to the next.
MAX_BOX_SCALE_STEP = 0.1


@dataclass(frozen=True)
class TrackerConfig:
    """The knobs of tracking and smoothing; their defaults are the defaults of
    :class:`darkpose.service.settings.Settings`' ``track_*`` / ``smooth_*`` fields.

    det_every: run the detector every this many frames (1 = every frame);
    match_threshold: least similarity (max of OKS and box IoU) for a person to continue a track;
    grace_frames: frames a track may go unmatched before it dies (re-identified within them);
    max_tracks: most live tracks (births beyond are refused, lowest scores first);
    redetect_score: a track whose mean confident-keypoint score falls below this asks for a
    detection on the next frame (once per fall: a person seen poorly all along does not make
    every frame a detection frame);
    smoothing: One-Euro smoothing of the reported keypoints (:meth:`Tracker._smoothed`);
    min_cutoff (Hz), beta (per box diagonal per second), d_cutoff (Hz): its parameters;
    keypoint_speed: weight of a keypoint's own speed (relative to the pose's median motion) in
    opening its cutoff (:class:`~darkpose.service.core.smoothing.OneEuroFilter`).
    """

    det_every: int = 5
    match_threshold: float = 0.3
    grace_frames: int = 15
    max_tracks: int = 30
    redetect_score: float = 0.35
    smoothing: bool = True
    min_cutoff: float = 1.0
    beta: float = 30.0
    d_cutoff: float = 3.0
    keypoint_speed: float = 0.25

    def __post_init__(self) -> None:
        for name in ("det_every", "max_tracks"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidParameter(f"{name}: expected an int >= 1, got {v!r}")
        if isinstance(self.grace_frames, bool) or not (
            isinstance(self.grace_frames, int) and self.grace_frames >= 0
        ):
            raise InvalidParameter(f"grace_frames: expected an int >= 0, got {self.grace_frames!r}")
        for name in ("match_threshold", "redetect_score"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0.0 <= float(v) <= 1.0):
                raise InvalidParameter(f"{name}: expected a number in [0, 1], got {v!r}")
        for name in ("min_cutoff", "d_cutoff"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise InvalidParameter(f"{name}: expected a number > 0, got {v!r}")
        for name in ("beta", "keypoint_speed"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise InvalidParameter(f"{name}: expected a number >= 0, got {v!r}")

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> TrackerConfig:
        """From a :class:`darkpose.service.settings.Settings` (duck-typed), then ``overrides``."""
        values: dict[str, Any] = {
            "det_every": settings.track_det_every,
            "match_threshold": settings.track_match_threshold,
            "grace_frames": settings.track_grace_frames,
            "max_tracks": settings.track_max_tracks,
            "redetect_score": settings.track_redetect_score,
            "smoothing": settings.smooth,
            "min_cutoff": settings.smooth_min_cutoff,
            "beta": settings.smooth_beta,
            "d_cutoff": settings.smooth_d_cutoff,
            "keypoint_speed": settings.smooth_keypoint_speed,
        }
        values.update(overrides)
        return cls(**values)


@dataclass
class Track:
    """One tracked person.  keypoints (K, 3) as last measured (not smoothed); box (4,) xyxy
    where the person was on the last frame it was matched (the detector's box on a detection
    frame, else the previous box moved as the keypoints moved); velocity (2,) px/frame of the
    keypoints (:func:`~darkpose.service.core.association.keypoint_motion`), ``missed`` frames
    since it was last matched."""

    track_id: int
    keypoints: F64
    box: F64
    score: float
    box_score: float = 1.0
    low: bool = False
    smoothed: F64 | None = None  # (K, 3) the reported (smoothed) keypoints, with smoothing on
    velocity: F64 = field(default_factory=lambda: np.zeros(2, np.float64))
    velocity_known: bool = False
    missed: int = 0
    age: int = 1
    smoother: OneEuroFilter | None = None

    @property
    def confidence(self) -> float:
        """Mean score of the keypoints over :data:`KEYPOINT_VISIBLE` (0 when none are)."""
        s = self.keypoints[:, 2]
        vis = s[s >= KEYPOINT_VISIBLE]
        return float(vis.mean()) if vis.size else 0.0

    def predicted_box(self) -> F64:
        """(4,) xyxy: the box for the next frame, :attr:`box` moved at constant velocity over
        the ``missed + 1`` frames since the track was last matched."""
        return np.asarray(self.box + np.tile(self.velocity * (self.missed + 1), 2), np.float64)

    def predicted_keypoints(self) -> F64:
        """(K, 3): the keypoints expected on the next frame, moved at constant velocity (scores
        unchanged)."""
        kp = self.keypoints.copy()
        kp[:, :2] += self.velocity * (self.missed + 1)
        return kp


@dataclass
class TrackedPerson:
    """A person of one frame with its ``track_id`` (keypoints smoothed when smoothing is on)."""

    track_id: int
    person: Person


@dataclass
class TrackEvents:
    """What one :meth:`Tracker.update` changed: ids born, ids that died, ids of confirmed
    tracks (matched on two frames or more) that went missing on this frame."""

    born: list[int] = field(default_factory=list)
    died: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)


def _center(box: F64) -> F64:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], np.float64)


def scale_box(box: F64, scale: float, shift: F64) -> F64:
    """(4,) xyxy ``box`` scaled by ``scale`` about its centre, then moved by ``shift`` (2,)."""
    c = _center(box) + shift
    half = (np.asarray(box[2:], np.float64) - box[:2]) * (scale / 2)
    return np.concatenate([c - half, c + half])


class Tracker:
    """Track assignment of one stream (see the module docstring).  State: the live tracks
    (at most ``config.max_tracks``), the next id; bounded."""

    def __init__(self, config: TrackerConfig | None = None, sigmas: npt.ArrayLike | None = None):
        self.config = config or TrackerConfig()
        self.sigmas = np.asarray(sigmas if sigmas is not None else COCO_SIGMAS, np.float64)
        self.tracks: list[Track] = []
        self._next_id = 1

    @property
    def ids_issued(self) -> int:
        """Track ids handed out so far (births)."""
        return self._next_id - 1

    def update(
        self,
        persons: list[Person],
        *,
        dt: float,
        allow_births: bool = True,
        detected: bool = True,
    ) -> tuple[list[TrackedPerson], TrackEvents]:
        """Assign ``persons`` of the next frame (``dt`` seconds after the previous one) to
        tracks.  ``detected``: their boxes come from the detector (else from
        :meth:`live_boxes`: a track's box then follows its keypoints' motion).  Returns the
        matched/born persons with their ids (in the order of ``persons``; a duplicate of an
        assigned person, :data:`DUPLICATE_OKS`, is left out) and the events."""
        cfg = self.config
        events = TrackEvents()
        k = self.sigmas.shape[0]
        kpts = (
            np.stack([np.asarray(p.keypoints, np.float64) for p in persons])
            if persons
            else np.zeros((0, k, 3))
        )
        boxes = (
            np.stack([np.asarray(p.bbox, np.float64) for p in persons])
            if persons
            else np.zeros((0, 4))
        )
        track_kpts = (
            np.stack([t.predicted_keypoints() for t in self.tracks])
            if self.tracks
            else np.zeros((0, k, 3))
        )
        track_boxes = np.zeros((len(self.tracks), 4))
        for i, t in enumerate(self.tracks):
            track_boxes[i] = t.predicted_box()
        sim = similarity(track_kpts, track_boxes, kpts, boxes, self.sigmas)
        matched_t: dict[int, int] = {}  # person index → track index
        if sim.size:
            rows, cols = linear_sum_assignment(-sim)
            for r, c in zip(rows, cols, strict=True):
                if sim[r, c] >= cfg.match_threshold:
                    matched_t[int(c)] = int(r)
        # two tracks whose persons collapsed onto one (their boxes drifted onto the same
        # person between detections): the older track keeps it, the younger one is missing
        for j in sorted(matched_t, key=lambda j: self.tracks[matched_t[j]].track_id):
            if j not in matched_t:
                continue
            for j2 in [x for x in matched_t if x != j]:
                older = self.tracks[matched_t[j]].track_id < self.tracks[matched_t[j2]].track_id
                if older and self._duplicate(kpts[j2], boxes[j2], kpts[j][None]):
                    del matched_t[j2]
        out: list[tuple[int, TrackedPerson]] = []
        seen: set[int] = set()
        for j, person in enumerate(persons):
            if j in matched_t:
                track = self.tracks[matched_t[j]]
                seen.add(track.track_id)
                tp = TrackedPerson(track.track_id, self._advance(track, person, dt, detected))
                out.append((j, tp))
        assigned = sorted(matched_t)
        for j, person in enumerate(persons):
            if j in matched_t:
                continue
            if assigned and self._duplicate(kpts[j], boxes[j], kpts[assigned]):
                continue
            if allow_births and len(self.tracks) < cfg.max_tracks:
                assigned.append(j)
                track = self._birth(person)
                seen.add(track.track_id)
                events.born.append(track.track_id)
                out.append((j, TrackedPerson(track.track_id, self._smoothed(track, person))))
        alive: list[Track] = []
        for t in self.tracks:
            if t.track_id not in seen:
                t.missed += 1
                if t.missed == 1 and t.age > 1:  # a confirmed track (seen twice) went missing
                    events.missing.append(t.track_id)
                if t.missed > cfg.grace_frames:
                    events.died.append(t.track_id)
                    continue
            alive.append(t)
        self.tracks = alive
        return [tp for _, tp in sorted(out, key=lambda x: x[0])], events

    def _duplicate(self, kpts: F64, box: F64, others: F64) -> bool:
        """Whether the person ``kpts`` (K, 3) in ``box`` (4,) has OKS >= :data:`DUPLICATE_OKS`
        with one of ``others`` (M, K, 3)."""
        area = max((box[2] - box[0]) * (box[3] - box[1]), 1.0)
        oks = track_oks(kpts[None], np.array([area]), others, self.sigmas)
        return bool(np.any(oks >= DUPLICATE_OKS))

    def _birth(self, person: Person) -> Track:
        cfg = self.config
        smoother = (
            OneEuroFilter(cfg.min_cutoff, cfg.beta, cfg.d_cutoff, cfg.keypoint_speed)
            if cfg.smoothing
            else None
        )
        track = Track(
            track_id=self._next_id,
            keypoints=np.asarray(person.keypoints, np.float64).copy(),
            box=np.asarray(person.bbox, np.float64).copy(),
            score=float(person.score),
            box_score=float(person.box_score),
            smoother=smoother,
        )
        self._next_id += 1
        self.tracks.append(track)
        return track

    def _smoothed(
        self, track: Track, person: Person, dt: float = 1.0, shift: F64 | None = None
    ) -> Person:
        """``person`` as this frame reports it: its keypoints smoothed by the track's filter
        when smoothing is on (speeds in box diagonals per second; ``shift``, the keypoints'
        median motion since the track's previous keypoints, followed without lag:
        :class:`OneEuroFilter`'s ``shared``).  The track matches on the unsmoothed keypoints,
        and its box moves with them (:meth:`_advance`)."""
        raw = np.asarray(person.keypoints, np.float64).copy()
        track.keypoints = raw
        kp = raw.copy()
        if track.smoother is not None:
            b = np.asarray(person.bbox, np.float64)
            diag = max(float(math.hypot(b[2] - b[0], b[3] - b[1])), 1.0)
            kp[:, :2] = track.smoother.filter(raw[:, :2], dt, scale=diag, shared=shift)
            track.smoothed = kp
        return Person(
            bbox=np.asarray(person.bbox, np.float32),
            box_score=person.box_score,
            keypoints=kp.astype(np.float32),
            score=person.score,
        )

    def _advance(self, track: Track, person: Person, dt: float, detected: bool) -> Person:
        """Update ``track`` with its matched ``person``: velocity from the keypoints' motion
        (set by the first measurement, then averaged), box = the detector's box, or on a frame
        without detection the previous box moved and scaled as the keypoints moved (the
        keypoints do not follow the crop: a box re-derived from their extent drifts)."""
        steps = track.missed + 1
        new_kp = np.asarray(person.keypoints, np.float64)
        motion = keypoint_motion(track.keypoints, new_kp)
        if motion is not None:
            step = motion[0] / steps
            track.velocity = step if not track.velocity_known else 0.5 * (track.velocity + step)
            track.velocity_known = True
        if detected or motion is None:
            track.box = np.asarray(person.bbox, np.float64).copy()
        else:
            lo = (1.0 - MAX_BOX_SCALE_STEP) ** steps
            hi = (1.0 + MAX_BOX_SCALE_STEP) ** steps
            track.box = scale_box(track.box, float(np.clip(motion[1], lo, hi)), motion[0])
        track.score = float(person.score)
        track.box_score = float(person.box_score)
        gap = dt * steps
        track.missed = 0
        track.age += 1
        return self._smoothed(track, person, gap, None if motion is None else motion[0])

    def live_boxes(self) -> tuple[F64, F64]:
        """Boxes (M, 4) xyxy and detector scores (M,) of the tracks seen on the last frame,
        as :meth:`Track.predicted_box` derives them."""
        live = [t for t in self.tracks if not t.missed]
        if not live:
            return np.zeros((0, 4)), np.zeros((0,))
        boxes = np.stack([t.predicted_box() for t in live])
        scores = np.asarray([max(min(t.box_score, 1.0), 0.0) for t in live], np.float64)
        return boxes, scores


@dataclass
class TrackedFrame:
    """The tracked persons of one frame.  ``detected``: the detector ran on it."""

    index: int
    timestamp: float
    persons: list[TrackedPerson]
    detected: bool
    events: TrackEvents
    image_size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)

    @functools.cached_property
    def poses(self) -> Poses:
        """The persons as one :class:`~darkpose.service.core.poses.Poses` (in the order of
        :attr:`persons`, ``track_ids`` not included)."""
        return Poses.from_persons([tp.person for tp in self.persons])


class PoseTracker:
    """Pipeline + :class:`Tracker` for one stream: ``process(image, timestamp)`` per frame.

    ``pipeline``: the shared (stateless) pipeline; ``options``: its per-call options;
    ``run``: optional stand-in for ``pipeline(image, options, boxes=…, box_scores=…)`` (the
    video route runs it under its job); ``min_side``: ``Settings.min_image_side`` (a frame
    with a side under it has no persons and the pipeline does not run on it).  Frames must
    come in time order.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        config: TrackerConfig | None = None,
        options: PipelineOptions | None = None,
        run: Callable[..., PoseResult] | None = None,
        min_side: int = 1,
    ) -> None:
        self.pipeline = pipeline
        self.min_side = int(min_side)
        self.config = config or TrackerConfig()
        self.options = options
        self.tracker = Tracker(self.config, pipeline.sigmas)
        self._run = run or self._default_run
        self._since_detect = 0
        self._redetect = True
        self._last_ts: float | None = None
        self.frames = 0
        self.detections = 0

    def _default_run(self, image: Any, **kwargs: Any) -> PoseResult:
        return self.pipeline(image, self.options, **kwargs)

    def process(
        self, image: npt.NDArray[Any], timestamp: float, index: int | None = None
    ) -> TrackedFrame:
        """image (H, W, 3) BGR uint8 at ``timestamp`` seconds → :class:`TrackedFrame`."""
        cfg = self.config
        dt = 1.0 / 30.0
        if self._last_ts is not None and timestamp > self._last_ts:
            dt = timestamp - self._last_ts
        self._last_ts = timestamp
        detect = self._redetect or self._since_detect >= cfg.det_every or not self.tracker.tracks
        boxes: F64 | None = None
        scores: F64 | None = None
        if not detect:
            boxes, scores = self.tracker.live_boxes()
            if boxes.shape[0] == 0:
                detect = True
        if too_small_for_person(image, self.min_side):
            h, w = image.shape[:2]
            result, detect = PoseResult.empty(image_size=(int(w), int(h))), False
        elif detect:
            result = self._run(image)
            self._since_detect = 1
            self.detections += 1
        else:
            result = self._run(image, boxes=boxes, box_scores=scores)
            self._since_detect += 1
        persons, events = self.tracker.update(
            list(result.persons), dt=dt, allow_births=detect, detected=detect
        )
        dropped = False  # a track whose confidence fell under redetect_score on this frame
        for t in self.tracker.tracks:
            if t.missed:
                continue
            low = t.confidence < cfg.redetect_score
            dropped = dropped or (low and not t.low and t.age > 1)
            t.low = low
        # a track lost between detections asks for the detector; one the detector itself did
        # not find again (lost on a detection frame) would not be found by running it again
        self._redetect = (bool(events.missing) and not detect) or dropped
        self.frames += 1
        return TrackedFrame(
            index=self.frames - 1 if index is None else index,
            timestamp=float(timestamp),
            persons=persons,
            detected=detect,
            events=events,
            image_size=result.image_size,
            timings=dict(result.timings),
        )
