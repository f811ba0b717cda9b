"""MicroBatcher on a tiny real ONNX model: gathering, scattering, splitting, bounds, errors."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darkpose.service.core.errors import InvalidParameter, NotReady, Overloaded
from darkpose.service.core.types import PoseModel
from darkpose.service.runtime.batching import MicroBatcher
from tests.api.tiny_model import TINY_K, TinyOnnxPoseModel, random_crops
from tests.conftest import wait_until


@pytest.fixture(scope="module")
def tiny() -> TinyOnnxPoseModel:
    return TinyOnnxPoseModel()


def test_batcher_is_a_pose_model(tiny: TinyOnnxPoseModel) -> None:
    with MicroBatcher(tiny, max_batch=4, max_wait_ms=1.0, queue_size=16) as b:
        assert isinstance(b, PoseModel)
        assert b.spec is tiny.spec


def test_concurrent_calls_are_gathered_and_scattered_exactly() -> None:
    model = TinyOnnxPoseModel()
    inputs = [random_crops(1 + i % 3, seed=i) for i in range(24)]
    expected = [model.infer(x) for x in inputs]
    model.call_sizes.clear()
    sizes: list[int] = []
    waits: list[float] = []
    # A long wait window so that concurrent callers land in the same batch.
    with (
        MicroBatcher(
            model,
            max_batch=8,
            max_wait_ms=500.0,
            queue_size=256,
            on_batch=sizes.append,
            on_wait=waits.append,
        ) as b,
        ThreadPoolExecutor(max_workers=24) as pool,
    ):
        outs = list(pool.map(b.infer, inputs))
    for x, got, want in zip(inputs, outs, expected, strict=True):
        assert got.shape == (x.shape[0], TINY_K, x.shape[2], x.shape[3])
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    total = sum(x.shape[0] for x in inputs)
    assert sum(model.call_sizes) == total
    assert max(model.call_sizes) <= 8
    assert len(model.call_sizes) < len(inputs)  # calls were really merged
    assert sizes == model.call_sizes
    assert len(waits) == len(inputs) and all(w >= 0 for w in waits)


def test_several_workers_run_model_calls_at_the_same_time() -> None:
    gate = threading.Event()
    model = TinyOnnxPoseModel(gate=gate)
    inputs = [random_crops(2, seed=s) for s in range(6)]
    with (
        MicroBatcher(model, max_batch=2, max_wait_ms=0.0, queue_size=64, workers=3) as b,
        ThreadPoolExecutor(max_workers=6) as pool,
    ):
        futs = [pool.submit(b.infer, x) for x in inputs]
        wait_until(lambda: model.active >= 3, what="three batches in the model")
        assert model.active == 3  # three batches in the model at once, none more
        gate.set()
        outs = [f.result(10) for f in futs]
    assert model.max_active == 3
    ref = TinyOnnxPoseModel()
    for x, got in zip(inputs, outs, strict=True):
        np.testing.assert_allclose(got, ref.infer(x), atol=1e-5, rtol=0)


def test_call_larger_than_max_batch_is_split(tiny: TinyOnnxPoseModel) -> None:
    x = random_crops(11, seed=3)
    want = tiny.infer(x)
    model = TinyOnnxPoseModel()
    with MicroBatcher(model, max_batch=4, max_wait_ms=0.0, queue_size=64) as b:
        got = b.infer(x)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert max(model.call_sizes) <= 4
    assert sum(model.call_sizes) == 11


def test_empty_batch_passes_through(tiny: TinyOnnxPoseModel) -> None:
    with MicroBatcher(tiny, max_batch=4, max_wait_ms=0.0, queue_size=8) as b:
        out = b.infer(np.zeros((0, 3, 8, 6), np.float32))
    assert out.shape == (0, TINY_K, 8, 6)


def test_full_queue_raises_overloaded_with_retry_after() -> None:
    gate = threading.Event()
    model = TinyOnnxPoseModel(gate=gate)
    b = MicroBatcher(model, max_batch=2, max_wait_ms=0.0, queue_size=4, retry_after=3.0)
    pool = ThreadPoolExecutor(max_workers=4)
    try:
        first = pool.submit(b.infer, random_crops(2, seed=1))  # taken by the batcher thread
        assert model.entered.wait(5.0)
        queued = [pool.submit(b.infer, random_crops(2, seed=s)) for s in (2, 3)]
        wait_until(lambda: b.pending >= 4, what="4 crops waiting")
        assert b.pending == 4
        with pytest.raises(Overloaded) as exc_info:
            b.infer(random_crops(1, seed=9))
        assert exc_info.value.retry_after == 3.0
        assert exc_info.value.status_code == 503
        assert "expected at most 4 waiting crops" in exc_info.value.message
        gate.set()
        assert first.result(10).shape[0] == 2
        assert all(f.result(10).shape[0] == 2 for f in queued)
        # Once drained the batcher accepts work again.
        assert b.infer(random_crops(3, seed=4)).shape[0] == 3
    finally:
        gate.set()
        b.close()
        pool.shutdown()


def test_model_failure_reaches_every_waiting_caller() -> None:
    model = TinyOnnxPoseModel(fail=True)
    with (
        MicroBatcher(model, max_batch=8, max_wait_ms=100.0, queue_size=64) as b,
        ThreadPoolExecutor(max_workers=4) as pool,
    ):
        futs = [pool.submit(b.infer, random_crops(1, seed=s)) for s in range(4)]
        for f in futs:
            with pytest.raises(RuntimeError, match="on purpose"):
                f.result(10)
        # The batcher thread survived the failure.
        model.fail = False
        assert b.infer(random_crops(2)).shape[0] == 2


def test_closed_batcher_refuses_work(tiny: TinyOnnxPoseModel) -> None:
    b = MicroBatcher(tiny, max_batch=2, max_wait_ms=0.0, queue_size=8)
    b.close()
    with pytest.raises(NotReady):
        b.infer(random_crops(1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_batch": 0}, "max_batch: expected an integer >= 1, got 0"),
        ({"max_wait_ms": -1.0}, "max_wait_ms: expected a value >= 0, got -1.0"),
        ({"queue_size": 0}, "queue_size: expected an integer >= 1, got 0"),
        ({"workers": 0}, "workers: expected an integer >= 1, got 0"),
    ],
)
def test_bad_construction_parameters(
    tiny: TinyOnnxPoseModel, kwargs: dict[str, float], match: str
) -> None:
    with pytest.raises(InvalidParameter, match=match):
        MicroBatcher(tiny, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [np.zeros((3, 8, 6), np.float32), "crops", None])
def test_bad_batch_is_refused(tiny: TinyOnnxPoseModel, bad: object) -> None:
    with (
        MicroBatcher(tiny, max_batch=2, max_wait_ms=0.0, queue_size=8) as b,
        pytest.raises(InvalidParameter, match=r"expected an \(N, 3, H, W\) array"),
    ):
        b.infer(bad)  # type: ignore[arg-type]


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=7), min_size=1, max_size=8),
    max_batch=st.integers(min_value=1, max_value=9),
    workers=st.integers(min_value=1, max_value=3),
)
def test_any_split_of_a_batch_gives_the_single_call_result(
    tiny: TinyOnnxPoseModel, sizes: list[int], max_batch: int, workers: int
) -> None:
    total = sum(sizes)
    x = random_crops(total, seed=total)
    want = tiny.infer(x) if total else np.zeros((0, TINY_K, 8, 6), np.float32)
    bounds = np.cumsum([0, *sizes])
    parts = [x[bounds[i] : bounds[i + 1]] for i in range(len(sizes))]
    with (
        MicroBatcher(
            tiny, max_batch=max_batch, max_wait_ms=5.0, queue_size=1024, workers=workers
        ) as b,
        ThreadPoolExecutor(max_workers=len(parts)) as pool,
    ):
        outs = list(pool.map(b.infer, parts))
    got = np.concatenate(outs, axis=0) if outs else want
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
