"""``Poses``, the one result type: columns, row views, slicing, scaling, COCO results."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from darkpose import Person, Poses
from darkpose.service.core.errors import InvalidParameter
from darkpose.service.core.pipeline import PoseResult, to_original
from darkpose.service.core.working import to_original_xy

coords = st.floats(-50.0, 700.0, allow_nan=False, width=32)


@st.composite
def poses(draw: st.DrawFn) -> Poses:
    n = draw(st.integers(0, 6))
    xy = draw(arrays(np.float32, (n, 17, 2), elements=coords))
    s = draw(arrays(np.float32, (n, 17, 1), elements=st.floats(-0.5, 1.5, width=32)))
    lo = draw(arrays(np.float32, (n, 2), elements=st.floats(0.0, 300.0, width=32)))
    boxes = np.concatenate([lo, lo + 10.0], axis=1)
    scores = draw(arrays(np.float32, (n,), elements=st.floats(0.0, 1.0, width=32)))
    return Poses(boxes, scores, np.concatenate([xy, s], axis=2), scores, image_size=(640, 480))


@settings(deadline=None, max_examples=50)
@given(poses())
def test_columns_rows_and_slices_agree(p: Poses) -> None:
    n = len(p)
    assert p.boxes.shape == (n, 4) and p.keypoints.shape == (n, 17, 3) and p.scores.shape == (n,)
    assert np.all((p.keypoints[..., 2] >= 0) & (p.keypoints[..., 2] <= 1))  # clipped once
    for i, person in enumerate(p):
        assert isinstance(person, Person)
        assert np.array_equal(person.keypoints, p.keypoints[i])
        assert np.array_equal(person.bbox, p.boxes[i]) and person.score == p.scores[i]
    head = p[:2]
    assert isinstance(head, Poses) and len(head) == min(n, 2)
    assert head.image_size == p.image_size and np.array_equal(head.keypoints, p.keypoints[:2])
    mask = p.scores > 0.5
    assert np.array_equal(p[mask].scores, p.scores[mask])
    back = Poses.from_persons(p.persons, image_size=p.image_size)
    assert np.array_equal(back.keypoints, p.keypoints) and np.array_equal(back.boxes, p.boxes)


@settings(deadline=None, max_examples=50)
@given(poses(), st.floats(0.1, 4.0), st.floats(0.1, 4.0))
def test_scaled_and_to_original_move_coordinates_only(p: Poses, sx: float, sy: float) -> None:
    f = np.array([sx, sy], np.float32)
    s = p.scaled(sx, sy)
    assert np.allclose(s.keypoints[..., :2], p.keypoints[..., :2] * f, rtol=1e-5, atol=1e-3)
    assert np.allclose(s.boxes, p.boxes * np.tile(f, 2), rtol=1e-5, atol=1e-3)
    assert np.array_equal(s.keypoints[..., 2], p.keypoints[..., 2])
    o = to_original(p, (sx, sy), (1000, 900))
    assert o.image_size == (1000, 900)
    want = to_original_xy(p.keypoints[..., :2], (sx, sy))
    assert np.allclose(o.keypoints[..., :2], want, atol=1e-3)
    assert np.array_equal(o.scores, p.scores)


@settings(deadline=None, max_examples=50)
@given(poses())
def test_to_coco_is_the_columns_flat(p: Poses) -> None:
    results = p.to_coco(7)
    assert len(results) == len(p)
    for r, i in zip(results, range(len(p)), strict=True):
        assert r["image_id"] == 7 and r["category_id"] == 1 and len(r["keypoints"]) == 51
        np.testing.assert_allclose(r["keypoints"], p.keypoints[i].reshape(-1), atol=1e-3)
        x1, y1, x2, y2 = p.boxes[i]
        np.testing.assert_allclose(r["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=0.01)


def test_the_old_names_still_work() -> None:
    assert PoseResult is Poses
    empty = Poses.empty(image_size=(4, 3))
    assert len(empty) == 0 and empty.persons == [] and empty.to_coco() == []


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"keypoints": np.zeros((2, 16, 3))}, "keypoints: expected shape (N, 17, 3)"),
        ({"boxes": np.zeros((3, 4))}, "boxes: expected shape (2, 4)"),
        ({"box_scores": np.zeros(1)}, "box_scores: expected shape (2,)"),
        ({"scores": np.zeros((2, 1))}, "scores: expected shape (2,)"),
    ],
)
def test_inconsistent_columns_are_a_typed_error(columns: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {
        "boxes": np.zeros((2, 4)),
        "box_scores": np.zeros(2),
        "keypoints": np.zeros((2, 17, 3)),
        "scores": np.zeros(2),
    }
    with pytest.raises(InvalidParameter, match=re.escape(message)):
        Poses(**{**base, **columns})
