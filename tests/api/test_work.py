"""Units of the request-bounding pieces: memory budget, job deadline, multipart parser."""

from __future__ import annotations

import time

import pytest

from darkpose.service.api.body import image_from_multipart
from darkpose.service.api.multipart import parse_multipart
from darkpose.service.api.work import (
    MB,
    DeadlineExceeded,
    Job,
    JobCancelled,
    MemoryBudget,
    estimate_request_bytes,
)
from darkpose.service.core.errors import InvalidImage, Overloaded, PayloadTooLarge
from tests import hostile_payloads as hp


def test_memory_budget_admits_refuses_and_releases() -> None:
    budget = MemoryBudget(100 * MB, retry_after=2.0)
    budget.reserve(60 * MB)
    with pytest.raises(Overloaded, match="expected 50 MB free of 100 MB, got 40 MB free") as ei:
        budget.reserve(50 * MB)
    assert ei.value.retry_after == 2.0
    with pytest.raises(PayloadTooLarge, match="expected at most 100 MB"):
        budget.reserve(101 * MB)
    budget.release(60 * MB)
    budget.reserve(100 * MB)
    assert budget.used == 100 * MB


def test_estimate_grows_with_pixels_crops_and_render() -> None:
    kw = {"crop_size": (192, 256), "heatmap_size": (48, 64), "keypoints": 17}
    small = estimate_request_bytes(640, 480, "RGB", crops=30, **kw)  # type: ignore[arg-type]
    flip = estimate_request_bytes(640, 480, "RGB", crops=60, **kw)  # type: ignore[arg-type]
    big = estimate_request_bytes(6000, 6000, "RGB", crops=30, **kw)  # type: ignore[arg-type]
    render = estimate_request_bytes(640, 480, "RGB", crops=30, render_pixels=640 * 480, **kw)  # type: ignore[arg-type]
    assert small < flip and small < big and small < render
    assert big - small == (6000 * 6000 - 640 * 480) * 11  # 4 (PIL) + 4 (copy) + 3 (BGR) B/px


def test_job_cancel_and_deadline() -> None:
    job = Job(60.0)
    job.check()
    job.cancel("client disconnected")
    with pytest.raises(JobCancelled, match="client disconnected"):
        job.check()
    late = Job(0.001, retry_after=3.0)
    time.sleep(0.01)
    with pytest.raises(DeadlineExceeded) as ei:
        late.check()
    assert ei.value.status_code == 503 and ei.value.code == "deadline_exceeded"
    assert ei.value.retry_after == 3.0


def test_multipart_parser_reads_parts_and_quoted_boundaries() -> None:
    body = (
        b"preamble\r\n--a b\r\n"
        b'Content-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
        b"--a b\r\n"
        b'Content-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff\r\n--a\r\n--a b--\r\n"
    )
    parts = parse_multipart(body, 'multipart/form-data; boundary="a b"')
    assert [(p.name, p.filename) for p in parts] == [("note", None), ("image", "x.jpg")]
    assert parts[1].data == b"\xff\xd8\xff\r\n--a"


@pytest.mark.parametrize(
    ("body", "ctype", "needle"),
    [
        (b"--x\r\n\r\n", "multipart/form-data", "expected a boundary"),
        (b"garbage", "multipart/form-data; boundary=x", "expected the boundary"),
        (
            b"--x\r\nContent-Disposition: form-data; name=image\r\n\r\nabc",
            "multipart/form-data; boundary=x",
            "closing boundary",
        ),  # fmt: skip
        (b"--x\r\n" + b"H" * 9000, "multipart/form-data; boundary=x", "headers of at most"),
    ],
)
def test_multipart_parser_errors(body: bytes, ctype: str, needle: str) -> None:
    with pytest.raises(InvalidImage, match=needle):
        parse_multipart(body, ctype)


def test_near_boundary_bytes_are_refused_quickly() -> None:
    body, ctype = hp.near_boundary_multipart(4 * 1024 * 1024)
    with pytest.raises(InvalidImage, match="line break after a boundary"):
        image_from_multipart(body, ctype, 8 * 1024 * 1024)


def test_image_part_without_filename_is_the_image() -> None:
    body, ctype = hp.multipart_without_filename(b"\xff\xd8\xffDATA")
    assert image_from_multipart(body, ctype, 1024) == b"\xff\xd8\xffDATA"


def test_batcher_drops_the_crops_of_a_stopped_job() -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from darkpose.service.api.work import current_job
    from darkpose.service.runtime.batching import MicroBatcher
    from tests.api.tiny_model import TINY_IN, TinyOnnxPoseModel

    gate = threading.Event()
    model = TinyOnnxPoseModel(gate=gate)
    batcher = MicroBatcher(model, max_batch=2, max_wait_ms=0.0, queue_size=16)
    crops = np.zeros((2, 3, TINY_IN[1], TINY_IN[0]), np.float32)
    job = Job(60.0)

    def as_the_job() -> np.ndarray:
        token = current_job.set(job)
        try:
            return batcher.infer(crops)
        finally:
            current_job.reset(token)

    pool = ThreadPoolExecutor(max_workers=2)
    try:
        first = pool.submit(batcher.infer, crops)  # holds the batcher thread (gate closed)
        assert model.entered.wait(5.0)
        queued = pool.submit(as_the_job)
        deadline = time.monotonic() + 5
        while batcher.pending < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.pending == 2
        job.cancel("client disconnected")
        gate.set()
        with pytest.raises(JobCancelled, match="client disconnected"):
            queued.result(10)
        assert first.result(10).shape[0] == 2
        assert model.call_sizes == [2]  # the cancelled job's crops never reached the model
        with pytest.raises(JobCancelled):
            as_the_job()  # a stopped job cannot enqueue either
    finally:
        gate.set()
        batcher.close()
        pool.shutdown()
