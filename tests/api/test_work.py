"""Units of the request-bounding pieces: memory budget, job deadline, multipart parser."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

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
    estimate_request_cost,
    hold_work,
    release_after_work,
)
from darkpose.service.core.errors import InvalidImage, Overloaded, PayloadTooLarge
from tests import hostile_payloads as hp
from tests.conftest import wait_until


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


SHAPE = {"crop_size": (192, 256), "heatmap_size": (48, 64), "keypoints": 17}


def test_estimate_covers_every_stage_and_follows_the_parameters() -> None:
    small = estimate_request_cost(640, 480, "RGB", persons=30, crops_per_person=1, **SHAPE)  # type: ignore[arg-type]
    flip = estimate_request_cost(640, 480, "RGB", persons=30, crops_per_person=2, **SHAPE)  # type: ignore[arg-type]
    more = estimate_request_cost(640, 480, "RGB", persons=100, crops_per_person=1, **SHAPE)  # type: ignore[arg-type]
    big = estimate_request_cost(6000, 6000, "RGB", persons=30, crops_per_person=1, **SHAPE)  # type: ignore[arg-type]
    render = estimate_request_cost(
        640,
        480,
        "RGB",
        persons=30,
        crops_per_person=1,
        render_pixels=640 * 480,
        **SHAPE,  # type: ignore[arg-type]
    )
    assert all(v > 0 for k, v in small.as_dict().items() if k != "render")
    assert flip.crops == 2 * small.crops and flip.heatmaps == 2 * small.heatmaps
    assert more.crops * 30 == small.crops * 100
    assert big.image_decode - small.image_decode == (6000 * 6000 - 640 * 480) * 11  # 4+4+3 B/px
    assert big.image_held - small.image_held == (6000 * 6000 - 640 * 480) * 3  # BGR
    # the peak is the larger phase: decoding (a big image) or the pipeline (many crops)
    assert big.total == big.decode_phase > big.pipeline_phase
    assert small.total == small.pipeline_phase > small.decode_phase
    assert render.total - small.total == render.render > 0
    assert big.without_image == small.without_image  # the query's part does not see the image
    same = estimate_request_bytes(640, 480, "RGB", persons=30, crops_per_person=1, **SHAPE)  # type: ignore[arg-type]
    assert same == small.total
    wide = estimate_request_cost(
        640,
        480,
        "RGB",
        persons=30,
        crops_per_person=1,
        candidates=3549,
        **SHAPE,  # type: ignore[arg-type]
    )
    assert small.detect < wide.detect < small.detect + 3549 * 200  # NMS: linear in candidates


def test_work_hold_releases_only_when_the_work_has_stopped() -> None:
    def in_thread(fn: Callable[[], object]) -> None:
        t = threading.Thread(target=fn)
        t.start()
        t.join()

    async def scenario() -> list[str]:
        events: list[str] = []
        released = asyncio.Event()
        scope: dict[str, object] = {}
        first, second = hold_work(scope), hold_work(scope)

        def release() -> None:
            events.append("released")
            released.set()

        release_after_work(scope, release)  # the route has returned, two workers still run
        events.append("route done")
        in_thread(first)  # one worker stops: a release would be scheduled on the loop now
        for _ in range(3):
            await asyncio.sleep(0)  # let any scheduled callback run
        events.append("one stopped")
        in_thread(lambda: (second(), second()))  # the last stops (twice: counted once)
        await asyncio.wait_for(released.wait(), 10)
        return events

    events = asyncio.run(scenario())
    assert events == ["route done", "one stopped", "released"]
    now: list[str] = []
    release_after_work({}, lambda: now.append("now"))  # no work held: released at once
    assert now == ["now"]


def test_job_cancel_and_deadline() -> None:
    job = Job(60.0)
    job.check()
    job.cancel("client disconnected")
    with pytest.raises(JobCancelled, match="client disconnected"):
        job.check()
    late = Job(0.001, retry_after=3.0)
    wait_until(late.expired, what="the 1 ms deadline passed")
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
