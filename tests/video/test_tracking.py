"""Tracking maths (pure numpy): One-Euro filter, boxes, track assignment, births and deaths."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darkpose.service.core.association import box_iou, keypoint_box, keypoint_motion, track_oks
from darkpose.service.core.errors import InvalidParameter
from darkpose.service.core.pipeline import Person
from darkpose.service.core.smoothing import OneEuroFilter
from darkpose.service.core.tracking import Tracker, TrackerConfig
from darkpose.service.core.types import COCO_SIGMAS

SIGMAS = np.asarray(COCO_SIGMAS, np.float64)
#: A standing person's 17 COCO keypoints (x, y) in a 100 × 200 px box at the origin.
POSE = np.array(
    [
        [50, 20], [45, 15], [55, 15], [40, 18], [60, 18], [30, 50], [70, 50], [25, 85],
        [75, 85], [22, 115], [78, 115], [38, 120], [62, 120], [38, 160], [62, 160],
        [38, 195], [62, 195],
    ],
    np.float64,
)  # fmt: skip


def person_at(dx: float, dy: float, score: float = 0.9) -> Person:
    kp = np.concatenate([POSE + [dx, dy], np.full((17, 1), score)], axis=1).astype(np.float32)
    box = np.array([dx, dy, dx + 100, dy + 200], np.float32)
    return Person(bbox=box, box_score=0.9, keypoints=kp, score=score)


finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@given(
    value=st.lists(finite, min_size=1, max_size=34),
    dts=st.lists(st.floats(1e-3, 1.0), min_size=1, max_size=20),
    min_cutoff=st.floats(0.01, 10.0),
    beta=st.floats(0.0, 100.0),
)
def test_one_euro_keeps_a_constant_signal_constant(
    value: list[float], dts: list[float], min_cutoff: float, beta: float
) -> None:
    f = OneEuroFilter(min_cutoff, beta, 1.0)
    x = np.asarray(value)
    assert np.array_equal(f.filter(x, 0.033, shared=0.0), x)
    for dt in dts:
        assert np.array_equal(f.filter(x, dt, scale=50.0, shared=0.0), x)


@settings(max_examples=40, deadline=None)
@given(
    vx=st.floats(-300, 300),
    vy=st.floats(-300, 300),
    min_cutoff=st.floats(0.5, 5.0),
    keypoint_speed=st.floats(0.0, 1.0),
)
def test_one_euro_follows_a_pose_moving_at_constant_velocity_without_lag(
    vx: float, vy: float, min_cutoff: float, keypoint_speed: float
) -> None:
    """Keypoints (K, 2) translating at (vx, vy) px/s, their median motion given as ``shared``:
    followed exactly, whatever the cutoff."""
    f = OneEuroFilter(min_cutoff, 0.0, 3.0, keypoint_speed)
    dt, v = 1 / 30, np.array([vx, vy])
    prev = POSE.copy()
    for t in range(60):
        x = POSE + v * t * dt
        out = f.filter(x, dt, scale=200.0, shared=np.median(x - prev, axis=0))
        prev = x
        assert float(np.abs(out - x).max()) <= 1e-6 * max(float(np.abs(x).max()), 1.0)


def test_one_euro_follows_a_limb_that_moves_on_a_still_body() -> None:
    """A wrist moving at one box diagonal per second on a still body: its own speed opens its
    cutoff (keypoint_speed > 0), so it lags far less than when only the shared speed does."""
    lags = []
    for keypoint_speed in (0.0, 0.25):
        f = OneEuroFilter(1.0, 30.0, 3.0, keypoint_speed)
        dt, diag = 1 / 30, 220.0
        prev = POSE.copy()
        for t in range(30):
            x = POSE.copy()
            x[9, 0] += diag * t * dt
            out = f.filter(x, dt, scale=diag, shared=np.median(x - prev, axis=0))
            prev = x
        lags.append(float(x[9, 0] - out[9, 0]))
    assert lags[0] > 0 and lags[1] < lags[0] / 3


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), shake=st.floats(0.5, 5.0), noise=st.floats(0.2, 2.0))
def test_one_euro_follows_a_shaking_camera_and_smooths_the_keypoints_own_noise(
    seed: int, shake: float, noise: float
) -> None:
    """A still pose seen by a shaking camera (a random shift of up to ``shake`` px each frame)
    with its keypoints' own noise: given the shift (``shared``), the output moves with the
    camera and its own jitter (output minus the camera's shift, frame to frame) is well below
    the input's."""
    rng = np.random.default_rng(seed)
    f = OneEuroFilter(1.0, 30.0, 3.0, 0.25)
    prev_shift = np.zeros(2)
    prev_in = prev_out = None
    jitter_in, jitter_out = [], []
    for _ in range(120):
        shift = rng.uniform(-shake, shake, 2)
        x = POSE + shift + rng.normal(0.0, noise, POSE.shape)
        out = f.filter(x, 1 / 30, scale=220.0, shared=shift - prev_shift) - shift
        if prev_in is not None and prev_out is not None:
            jitter_in.append(np.linalg.norm(x - shift - prev_in, axis=1).mean())
            jitter_out.append(np.linalg.norm(out - prev_out, axis=1).mean())
        prev_shift, prev_in, prev_out = shift, x - shift, out
    assert np.mean(jitter_out) < 0.6 * np.mean(jitter_in)


@given(
    start=st.floats(-100, 100),
    target=st.floats(-100, 100),
    dt=st.floats(1e-3, 0.5),
    min_cutoff=st.floats(0.01, 10.0),
    beta=st.floats(0.0, 10.0),
)
def test_one_euro_output_stays_between_previous_output_and_input(
    start: float, target: float, dt: float, min_cutoff: float, beta: float
) -> None:
    f = OneEuroFilter(min_cutoff, beta, 1.0)
    f.filter(np.array([start]), dt)
    y = float(f.filter(np.array([target]), dt)[0])
    lo, hi = min(start, target), max(start, target)
    assert lo - 1e-9 <= y <= hi + 1e-9


def test_one_euro_is_frame_rate_aware() -> None:
    """The same step is followed further when more time passed since the previous sample."""
    slow, fast = OneEuroFilter(1.0, 0.0, 1.0), OneEuroFilter(1.0, 0.0, 1.0)
    for f in (slow, fast):
        f.filter(np.zeros(1), 0.1)
    assert float(slow.filter(np.ones(1), 0.2)[0]) > float(fast.filter(np.ones(1), 0.01)[0])


def test_one_euro_rejects_a_non_positive_dt() -> None:
    f = OneEuroFilter()
    f.filter(np.zeros(2), 0.1)
    with pytest.raises(InvalidParameter, match="dt: expected seconds > 0"):
        f.filter(np.ones(2), 0.0)


@given(dx=finite, dy=finite, w=st.floats(1, 500), h=st.floats(1, 500))
def test_box_iou_is_one_with_itself_and_symmetric(dx: float, dy: float, w: float, h: float) -> None:
    a = np.array([[dx, dy, dx + w, dy + h]])
    b = np.array([[dx + w / 2, dy, dx + 1.5 * w, dy + h]])
    assert box_iou(a, a)[0, 0] == pytest.approx(1.0)
    assert box_iou(a, b)[0, 0] == pytest.approx(box_iou(b, a)[0, 0])
    assert 0.0 <= box_iou(a, b)[0, 0] <= 1.0


def test_keypoint_box_needs_three_confident_keypoints() -> None:
    kp = np.zeros((17, 3))
    kp[:2] = [[10, 10, 0.9], [20, 30, 0.9]]
    assert keypoint_box(kp) is None
    kp[2] = [30, 50, 0.9]
    box = keypoint_box(kp)
    assert box is not None
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    assert (cx, cy) == pytest.approx((20, 30))
    assert box[2] - box[0] > 20 and box[3] - box[1] > 40  # enlarged past the keypoints


@given(
    dx=st.floats(-300, 300),
    dy=st.floats(-300, 300),
    scale=st.floats(0.5, 2.0),
    hidden=st.integers(0, 14),
)
def test_keypoint_motion_recovers_a_translation_and_a_scaling(
    dx: float, dy: float, scale: float, hidden: int
) -> None:
    """Translation: the shift exactly, scale 1; scaling about the keypoints' mean: the scale
    (over the keypoints confident in both poses, whatever the others do)."""
    a = person_at(0, 0).keypoints.astype(np.float64)
    a[:hidden, 2] = 0.1  # not confident: left out
    b = a.copy()
    b[:, :2] += [dx, dy]
    b[:hidden, :2] += 1000.0
    shift, s = keypoint_motion(a, b)  # type: ignore[misc]
    assert shift == pytest.approx([dx, dy], abs=1e-6) and s == pytest.approx(1.0)
    vis = a[:, 2] >= 0.3
    mean = a[vis, :2].mean(0)
    c = a.copy()
    c[:, :2] = mean + scale * (a[:, :2] - mean)
    _, s = keypoint_motion(a, c)  # type: ignore[misc]
    assert s == pytest.approx(scale)


def test_keypoint_motion_needs_three_shared_confident_keypoints() -> None:
    a = person_at(0, 0).keypoints.astype(np.float64)
    b = a.copy()
    a[3:, 2] = 0.0
    assert keypoint_motion(a, b) is not None
    b[2, 2] = 0.0
    assert keypoint_motion(a, b) is None


@settings(max_examples=40, deadline=None)
@given(
    vx=st.floats(-20, 20),
    vy=st.floats(-20, 20),
    frames=st.integers(2, 8),
    detected=st.booleans(),
)
def test_prediction_is_exact_at_constant_velocity(
    vx: float, vy: float, frames: int, detected: bool
) -> None:
    """A person moving at a constant velocity: the track's predicted keypoints and box for
    the next frame are where the person is on it (with and without detection)."""
    tracker = Tracker(TrackerConfig(smoothing=False), SIGMAS)
    for t in range(frames):
        tracker.update([person_at(vx * t, vy * t)], dt=1 / 30, detected=detected or t == 0)
    (track,) = tracker.tracks
    nxt = person_at(vx * frames, vy * frames)
    assert track.predicted_keypoints() == pytest.approx(nxt.keypoints.astype(np.float64), abs=1e-3)
    assert track.predicted_box() == pytest.approx(nxt.bbox.astype(np.float64), abs=1e-3)


def test_a_box_between_detections_moves_with_the_keypoints_not_their_extent() -> None:
    """Only the head and shoulders confident: the box keeps the detector's size and moves as
    the keypoints move (a box re-derived from their extent would shrink onto them)."""
    tracker = Tracker(TrackerConfig(smoothing=False), SIGMAS)
    first = person_at(0, 0)
    first.keypoints[7:, 2] = 0.1
    tracker.update([first], dt=1 / 30)
    (track,) = tracker.tracks
    box = track.predicted_box().copy()
    moved = person_at(5, -3)
    moved.keypoints[7:, 2] = 0.1
    moved.bbox[:] = box  # a frame without detection: the person comes in the derived box
    tracker.update([moved], dt=1 / 30, detected=False)
    assert track.box == pytest.approx(box + [5, -3, 5, -3])


@given(dx=st.floats(-500, 500), dy=st.floats(-500, 500))
def test_oks_of_a_pose_with_itself_is_one(dx: float, dy: float) -> None:
    k = person_at(dx, dy).keypoints.astype(np.float64)[None]
    assert track_oks(k, np.array([20000.0]), k, SIGMAS)[0, 0] == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(st.tuples(st.floats(-8, 8), st.floats(-8, 8)), min_size=2, max_size=25),
    smoothing=st.booleans(),
)
def test_a_translated_pose_sequence_keeps_its_id(
    steps: list[tuple[float, float]], smoothing: bool
) -> None:
    """Two persons far apart moving by up to 8 px a frame keep their ids on every frame."""
    tracker = Tracker(TrackerConfig(smoothing=smoothing), SIGMAS)
    a, b = np.zeros(2), np.array([400.0, 0.0])
    first, _ = tracker.update([person_at(*a), person_at(*b)], dt=1 / 30)
    ids = [tp.track_id for tp in first]
    assert len(set(ids)) == 2
    for step in steps:
        a, b = a + step, b - step
        out, events = tracker.update([person_at(*b), person_at(*a)], dt=1 / 30)
        assert [tp.track_id for tp in out] == ids[::-1]
        assert events.born == [] and events.missing == []


def test_grace_period_reidentifies_then_the_track_dies() -> None:
    cfg = TrackerConfig(grace_frames=3, smoothing=False)
    tracker = Tracker(cfg, SIGMAS)
    (tp,), _ = tracker.update([person_at(0, 0)], dt=0.1)
    tracker.update([person_at(1, 0)], dt=0.1)
    _, ev = tracker.update([], dt=0.1)
    assert ev.missing == [tp.track_id]
    tracker.update([], dt=0.1)
    back, ev = tracker.update([person_at(3, 0)], dt=0.1)  # within the grace period
    assert [p.track_id for p in back] == [tp.track_id] and ev.born == []
    deaths = []
    for _ in range(cfg.grace_frames + 1):
        _, ev = tracker.update([], dt=0.1)
        deaths += ev.died
    assert deaths == [tp.track_id]
    assert tracker.tracks == []
    (new,), ev = tracker.update([person_at(3, 0)], dt=0.1)
    assert new.track_id != tp.track_id and ev.born == [new.track_id]


def test_tracks_are_bounded_by_max_tracks() -> None:
    tracker = Tracker(TrackerConfig(max_tracks=3), SIGMAS)
    out, ev = tracker.update([person_at(300 * i, 0) for i in range(5)], dt=0.1)
    assert len(out) == 3 and len(ev.born) == 3 and len(tracker.tracks) == 3


def test_no_births_when_not_allowed() -> None:
    tracker = Tracker(TrackerConfig(), SIGMAS)
    out, ev = tracker.update([person_at(0, 0)], dt=0.1, allow_births=False)
    assert out == [] and ev.born == [] and tracker.tracks == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("det_every", 0, "det_every: expected an int >= 1, got 0"),
        ("max_tracks", 1.5, "max_tracks: expected an int >= 1, got 1.5"),
        ("grace_frames", -1, "grace_frames: expected an int >= 0, got -1"),
        ("match_threshold", 1.5, r"match_threshold: expected a number in \[0, 1\], got 1.5"),
        ("min_cutoff", 0.0, "min_cutoff: expected a number > 0, got 0.0"),
        ("beta", -1.0, "beta: expected a number >= 0, got -1.0"),
        ("keypoint_speed", float("nan"), "keypoint_speed: expected a number >= 0, got nan"),
    ],
)
def test_tracker_config_errors(field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidParameter, match=message):
        TrackerConfig(**{field: value})
