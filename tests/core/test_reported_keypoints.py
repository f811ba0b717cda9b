"""Reported keypoint scores lie in [0, 1] in every output (HTTP JSON, COCO results, the Python
API), clipped by one function; the pipeline's own scores (rescoring, NMS) are not changed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from darkpose.estimator import Poses
from darkpose.service.api.schemas import PersonOut
from darkpose.service.core.pipeline import Person, reported_keypoints

floats = st.floats(-10.0, 10.0, allow_nan=False, width=32)


@given(arrays(np.float32, st.tuples(st.integers(1, 20), st.just(3)), elements=floats))
def test_reported_scores_are_clipped_and_nothing_else_changes(kpts: np.ndarray) -> None:
    before = kpts.copy()
    out = reported_keypoints(kpts)
    assert out.shape == kpts.shape
    assert np.all((out[:, 2] >= 0.0) & (out[:, 2] <= 1.0))
    np.testing.assert_array_equal(out[:, :2], kpts[:, :2].astype(np.float64))
    inside = (kpts[:, 2] >= 0) & (kpts[:, 2] <= 1)
    np.testing.assert_array_equal(out[inside, 2], kpts[inside, 2].astype(np.float64))
    np.testing.assert_array_equal(kpts, before)  # the caller's array is not touched


@pytest.fixture()
def person() -> Person:
    kpts = np.zeros((17, 3), np.float32)
    kpts[:, 0], kpts[:, 1] = np.arange(17), 2 * np.arange(17)
    kpts[:, 2] = 0.5
    kpts[0, 2], kpts[1, 2] = 1.07, -0.02  # DARK / an ensemble can leave [0, 1] slightly
    return Person(np.array([0, 0, 20, 40], np.float32), 0.9, kpts, 0.8)


def _scores_ok(scores: list[float]) -> None:
    assert min(scores) >= 0.0 and max(scores) <= 1.0, scores
    assert scores[0] == 1.0 and scores[1] == 0.0 and scores[2] == 0.5


def test_every_output_reports_clipped_scores(person: Person) -> None:
    _scores_ok(person.to_coco(1)["keypoints"][2::3])
    poses = Poses.from_persons([person], image=np.zeros((40, 20, 3), np.uint8))
    (out,) = PersonOut.rows(poses)
    _scores_ok(out["keypoints"][2::3])
    _scores_ok(poses.keypoints[0, :, 2].tolist())
    _scores_ok(poses.to_coco(1)[0]["keypoints"][2::3])
    assert person.keypoints[0, 2] == pytest.approx(1.07)  # the person itself is unchanged
