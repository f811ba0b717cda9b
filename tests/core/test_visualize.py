"""Overlay drawing: score labels stay inside the image wherever the box is."""

from __future__ import annotations

import cv2
from hypothesis import given, settings
from hypothesis import strategies as st

from darkpose.service.core.visualize import label_origin


@settings(max_examples=200, deadline=None)
@given(
    w=st.integers(40, 2000),
    h=st.integers(20, 2000),
    fx=st.floats(-0.2, 1.2),
    fy=st.floats(-0.2, 1.2),
    thick=st.integers(1, 5),
)
def test_label_box_is_inside_the_image(w: int, h: int, fx: float, fy: float, thick: int) -> None:
    text, scale = "0.87", 0.4 * thick
    (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x, y = label_origin(text, (fx * w, fy * h), (w, h), scale, thick)
    if tw < w and th + baseline < h:
        assert x >= 0 and x + tw <= w - 1
        assert y - th >= 0 and y + baseline <= h - 1
