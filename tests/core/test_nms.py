"""NMS / OKS / rescoring against straightforward loop implementations (mmpose's code)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darkpose.service.core.errors import InvalidParameter
from darkpose.service.core.nms import nms_boxes, oks_iou, oks_nms, rescore, soft_oks_nms, top_k
from darkpose.service.core.types import COCO_SIGMAS

SIG = np.array(COCO_SIGMAS)


# ---- reference implementations (loops, as in mmpose / classic NMS) -------------------------
def ref_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def ref_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        order = [j for j in order if ref_iou(boxes[i], boxes[j]) <= thr]
    return keep


def ref_oks_iou(g, d, a_g, a_d, sigmas, vis_thr=None):  # type: ignore[no-untyped-def]
    """mmpose.evaluation.functional.nms.oks_iou, verbatim apart from names."""
    vars_ = (sigmas * 2) ** 2
    xg, yg, vg = g[0::3], g[1::3], g[2::3]
    ious = np.zeros(len(d), dtype=np.float32)
    for n_d in range(0, len(d)):
        xd, yd, vd = d[n_d, 0::3], d[n_d, 1::3], d[n_d, 2::3]
        dx, dy = xd - xg, yd - yg
        e = (dx**2 + dy**2) / vars_ / ((a_g + a_d[n_d]) / 2 + np.spacing(1)) / 2
        if vis_thr is not None:
            ind = list((vg > vis_thr) & (vd > vis_thr))
            e = e[ind]
        ious[n_d] = np.sum(np.exp(-e)) / len(e) if len(e) != 0 else 0.0
    return ious


def ref_oks_nms(kpts, scores, areas, thr, sigmas, vis_thr=None):  # type: ignore[no-untyped-def]
    """mmpose oks_nms (order: score desc; stable ties for determinism)."""
    flat = kpts.reshape(len(kpts), 17 * 3)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order) > 0:
        i = order[0]
        keep.append(int(i))
        ovr = ref_oks_iou(flat[i], flat[order[1:]], areas[i], areas[order[1:]], sigmas, vis_thr)
        order = order[np.where(ovr <= thr)[0] + 1]
    return keep


def ref_soft_oks_nms(kpts, scores, areas, sigma, thr, sigmas):  # type: ignore[no-untyped-def]
    """Gaussian soft-NMS as written by Bodla et al. (Algorithm 1), with OKS as the overlap and
    the hard drop above ``thr``: a plain loop over the remaining set."""
    flat = kpts.reshape(len(kpts), 17 * 3)
    s = np.asarray(scores, np.float64).copy()
    rest = list(range(len(s)))
    keep = []
    while rest:
        m = max(rest, key=lambda j: (s[j], -j))
        keep.append(m)
        rest.remove(m)
        if not rest:
            break
        ovr = ref_oks_iou(flat[m], flat[rest], areas[m], areas[rest], sigmas)
        for j, o in zip(list(rest), ovr, strict=True):
            if o > thr:
                s[j] = 0.0
                rest.remove(j)
            else:
                s[j] *= np.exp(-(float(o) ** 2) / sigma)
    return keep, s


def ref_rescore(box_scores, kpt_scores, thr):  # type: ignore[no-untyped-def]
    out = []
    for b, ks in zip(box_scores, kpt_scores, strict=True):
        good = [k for k in ks if k > thr]
        out.append(b * (sum(good) / len(good) if good else 0.0))
    return np.array(out)


# ---- strategies ----------------------------------------------------------------------------
@st.composite
def box_sets(draw: Any) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(0, 25))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    xy = rng.uniform(0, 100, (n, 2))
    wh = rng.uniform(0, 60, (n, 2))  # includes near-degenerate boxes
    scores = rng.choice([0.1, 0.5, 0.9], n) if draw(st.booleans()) else rng.uniform(0, 1, n)
    return np.concatenate([xy, xy + wh], 1), scores


@st.composite
def pose_sets(draw: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = draw(st.integers(0, 15))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    base = rng.uniform(0, 200, (max(n // 2, 1), 17, 2))
    which = rng.integers(0, base.shape[0], n)
    xy = base[which] + rng.normal(0, draw(st.sampled_from([0.5, 3.0, 10.0])), (n, 17, 2))
    sc = rng.uniform(0, 1, (n, 17, 1))
    areas = rng.uniform(100, 5000, n)
    return np.concatenate([xy, sc], 2), rng.uniform(0, 1, n), areas


# ---- tests ---------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(data=box_sets(), thr=st.sampled_from([0.0, 0.3, 0.5, 0.65, 0.9, 1.0]))
def test_nms_boxes_matches_loop(data: tuple, thr: float) -> None:
    boxes, scores = data
    keep = nms_boxes(boxes, scores, thr)
    assert keep.dtype == np.int64
    assert keep.tolist() == ref_nms(boxes, scores, thr)


def test_nms_boxes_simple_case() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]])
    keep = nms_boxes(boxes, [0.8, 0.9, 0.7, 0.1], 0.5)
    assert keep.tolist() == [1, 2]


@settings(max_examples=100, deadline=None)
@given(data=pose_sets(), vis=st.sampled_from([None, 0.2, 0.6]))
def test_oks_iou_matches_mmpose(data: tuple, vis: float | None) -> None:
    kpts, _, areas = data
    got = oks_iou(kpts, areas, COCO_SIGMAS, vis_thr=vis)
    assert got.shape == (len(kpts), len(kpts))
    flat = kpts.reshape(len(kpts), 17 * 3)
    for i in range(len(kpts)):
        ref = ref_oks_iou(flat[i], flat, areas[i], areas, SIG, vis)
        np.testing.assert_allclose(got[i], ref, rtol=1e-5, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(data=pose_sets(), thr=st.sampled_from([0.3, 0.5, 0.9]), vis=st.sampled_from([None, 0.2]))
def test_oks_nms_matches_mmpose(data: tuple, thr: float, vis: float | None) -> None:
    kpts, scores, areas = data
    keep = oks_nms(kpts, scores, areas, threshold=thr, sigmas=COCO_SIGMAS, vis_thr=vis)
    assert keep.dtype == np.int64
    assert keep.tolist() == ref_oks_nms(kpts, scores, areas, thr, SIG, vis)


@settings(max_examples=100, deadline=None)
@given(
    data=pose_sets(), sigma=st.sampled_from([0.1, 0.5, 2.0]), thr=st.sampled_from([0.5, 0.9, 1.0])
)
def test_soft_oks_nms_matches_the_loop(data: tuple, sigma: float, thr: float) -> None:
    kpts, scores, areas = data
    keep, new = soft_oks_nms(kpts, scores, areas, sigma, threshold=thr, sigmas=COCO_SIGMAS)
    ref_keep, ref_new = ref_soft_oks_nms(kpts, scores, areas, sigma, thr, SIG)
    assert keep.dtype == np.int64 and keep.tolist() == ref_keep
    np.testing.assert_allclose(new, ref_new, rtol=1e-5, atol=1e-6)
    # scores only fall; the best person keeps its score; the kept ones come best first
    assert np.all(new <= np.asarray(scores) + 1e-12)
    if len(scores):
        best = int(np.argmax(scores))
        assert keep[0] == best and new[best] == scores[best]
        assert np.all(np.diff(new[keep]) <= 1e-12)
    # no two persons kept are the same person by the hard rule (OKS above the threshold); the
    # hard OKS-NMS's kept set need not be a subset: a decayed score can change which of two
    # overlapping persons is taken first
    kept = keep.tolist()
    if len(kept) > 1:
        sim = oks_iou(kpts[kept], areas[kept], sigmas=COCO_SIGMAS)
        assert np.all(sim[~np.eye(len(kept), dtype=bool)] <= thr)


def test_soft_oks_nms_ranks_a_duplicate_below_another_person() -> None:
    rng = np.random.default_rng(5)
    a = np.concatenate([rng.uniform(0, 100, (17, 2)), np.ones((17, 1))], 1)
    dup = a.copy()
    dup[:, :2] += 2.0  # the same person, a few px off: OKS ~0.9 < the hard threshold 0.95
    other = a.copy()
    other[:, :2] += 400.0
    kpts = np.stack([a, dup, other])
    keep, new = soft_oks_nms(kpts, [0.9, 0.8, 0.5], [900.0] * 3, 0.5, threshold=0.95)
    assert keep.tolist() == [0, 2, 1]  # hard NMS at 0.95 would rank the duplicate second
    assert new[2] == pytest.approx(0.5) and new[1] < 0.5


def test_oks_identical_poses_is_one_and_duplicates_are_removed() -> None:
    rng = np.random.default_rng(3)
    k = np.concatenate([rng.uniform(0, 100, (17, 2)), np.ones((17, 1))], 1)
    far = k.copy()
    far[:, :2] += 500
    kpts = np.stack([k, k, far])
    sim = oks_iou(kpts, np.array([900.0, 900.0, 900.0]))
    np.testing.assert_allclose(np.diag(sim), 1.0)
    assert sim[0, 1] == pytest.approx(1.0) and sim[0, 2] < 1e-6
    assert oks_nms(kpts, [0.5, 0.7, 0.1], [900.0] * 3).tolist() == [1, 2]


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(0, 10),
    k=st.integers(1, 17),
    thr=st.sampled_from([0.0, 0.2, 0.5]),
    seed=st.integers(0, 2**31),
)
def test_rescore_matches_loop(n: int, k: int, thr: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    box = rng.uniform(0, 1, n)
    ks = rng.uniform(0, 1, (n, k)) * rng.choice([0.3, 1.0], (n, 1))
    got = rescore(box, ks, thr)
    assert got.shape == (n,) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref_rescore(box, ks, thr), rtol=1e-6, atol=1e-7)


def test_rescore_none_above_threshold_gives_zero() -> None:
    out = rescore([0.9, 0.8], [[0.1, 0.2, 0.05], [0.3, 0.1, 0.5]], 0.2)
    np.testing.assert_allclose(out, [0.0, 0.8 * 0.4])


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: nms_boxes(np.zeros((3, 5)), np.zeros(3), 0.5), "expected (N, 4) and (N,)"),
        (lambda: nms_boxes(np.zeros((3, 4)), np.zeros(2), 0.5), "expected (N, 4) and (N,)"),
        (lambda: nms_boxes(np.zeros((3, 4)), np.zeros(3), 1.5), "expected a value in [0, 1]"),
        (lambda: nms_boxes(np.zeros(4), np.zeros(1), 0.5), "expected shape (N, 4)"),
        (lambda: oks_iou(np.zeros((2, 17, 2)), np.ones(2)), "expected (N, K, 3)"),
        (lambda: oks_iou(np.zeros((2, 17, 3)), np.ones(3)), "expected (N, K, 3) and (N,)"),
        (lambda: oks_iou(np.zeros((2, 5, 3)), np.ones(2)), "sigmas: expected shape (5,)"),
        (lambda: oks_nms(np.zeros((2, 17, 3)), np.ones(3), np.ones(2)), "expected the same N"),
        (lambda: rescore(np.ones(2), np.ones((3, 17))), "expected the same N"),
        (lambda: rescore(np.ones(2), np.ones(2)), "expected shape (N, K)"),
        (lambda: rescore("x", np.ones((1, 1))), "expected a numeric array"),
        (
            lambda: soft_oks_nms(np.zeros((2, 17, 3)), np.ones(2), np.ones(2), 0.0),
            "sigma: expected",
        ),
        (lambda: soft_oks_nms(np.zeros((2, 17, 3)), np.ones(3), np.ones(2), 0.5), "the same N"),
    ],
)
def test_errors(call: Any, needle: str) -> None:
    with pytest.raises(InvalidParameter) as ei:
        call()
    assert needle in str(ei.value)


def test_empty_inputs() -> None:
    assert nms_boxes(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    assert oks_nms(np.zeros((0, 17, 3)), np.zeros(0), np.zeros(0)).shape == (0,)
    assert rescore(np.zeros(0), np.zeros((0, 17))).shape == (0,)
    keep, new = soft_oks_nms(np.zeros((0, 17, 3)), np.zeros(0), np.zeros(0), 0.5)
    assert keep.shape == (0,) and new.shape == (0,)


# ---- linear-memory NMS against the (N, N) matrix version it replaced ------------------------
def matrix_nms_boxes(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """The former nms_boxes: the full (N, N) IoU matrix, then the greedy pass over it."""
    b = np.asarray(boxes, np.float64)
    x1, y1, x2, y2 = b.T
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    iw = np.clip(np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]), 0, None)
    ih = np.clip(np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]), 0, None)
    inter = iw * ih
    union = area[:, None] + area[None] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = np.where(union > 0, inter / union, 0.0)
    suppressed = np.zeros(len(b), bool)
    keep: list[int] = []
    for i in np.argsort(-np.asarray(scores, np.float64), kind="stable"):
        if not suppressed[i]:
            keep.append(int(i))
            suppressed |= sim[i] > thr
    return keep


@st.composite
def crowded_box_sets(draw: Any) -> tuple[np.ndarray, np.ndarray]:
    """Up to 400 boxes clustered like detector anchors (many overlaps, duplicates, ties)."""
    n = draw(st.integers(0, 400))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    centres = rng.uniform(0, 400, (max(n // 8, 1), 2))
    xy = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 6, (n, 2))
    wh = rng.uniform(0, 80, (n, 2))
    if n and draw(st.booleans()):
        xy[: n // 3] = xy[0]  # exact duplicates
        wh[: n // 3] = wh[0]
    scores = rng.choice([0.05, 0.5], n) if draw(st.booleans()) else rng.uniform(0, 1, n)
    return np.concatenate([xy, xy + wh], 1).astype(np.float32), scores.astype(np.float32)


@settings(max_examples=120, deadline=None)
@given(data=crowded_box_sets(), thr=st.sampled_from([0.0, 0.3, 0.5, 0.65, 0.9, 1.0]))
def test_nms_boxes_identical_to_matrix_version(data: tuple, thr: float) -> None:
    boxes, scores = data
    assert nms_boxes(boxes, scores, thr).tolist() == matrix_nms_boxes(boxes, scores, thr)


@settings(max_examples=80, deadline=None)
@given(
    data=pose_sets(), thr=st.sampled_from([0.0, 0.5, 0.9, 1.0]), vis=st.sampled_from([None, 0.2])
)
def test_oks_nms_identical_to_matrix_version(data: tuple, thr: float, vis: float | None) -> None:
    kpts, scores, areas = data
    if len(kpts) == 0:
        return
    sim = oks_iou(kpts, areas, SIG, vis)  # the (N, N) matrix the former oks_nms used
    suppressed = np.zeros(len(kpts), bool)
    keep: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if not suppressed[i]:
            keep.append(int(i))
            suppressed |= sim[i] > thr
    assert oks_nms(kpts, scores, areas, thr, SIG, vis).tolist() == keep


def test_nms_memory_is_linear_in_the_candidates() -> None:
    """3,549 candidates (every YOLOX-416 anchor): the (N, N) float64 matrices of the former
    version took ~100 MB each; one IoU row per kept box stays far below one such matrix."""
    import tracemalloc

    rng = np.random.default_rng(0)
    n = 3549
    xy = rng.uniform(0, 400, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 40, (n, 2))], 1)
    scores = rng.uniform(0, 1, n)
    tracemalloc.start()
    try:
        nms_boxes(boxes, scores, 0.65)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * n * 8 / 10, f"peak {peak / 2**20:.1f} MB"


@settings(max_examples=100, deadline=None)
@given(
    scores=st.lists(st.sampled_from([0.0, 0.1, 0.5, 0.5, 0.9, 1.0]), max_size=60),
    k=st.integers(1, 70),
)
def test_top_k_is_the_k_highest_scores_ties_by_index(scores: list[float], k: int) -> None:
    idx = top_k(np.array(scores, np.float32), k)
    expected = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    assert idx.dtype == np.int64
    assert idx.tolist() == expected
