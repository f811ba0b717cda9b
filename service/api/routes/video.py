"""``POST /pose/video``: a video file in, tracked persons per frame out (NDJSON or one JSON).

Order of one request: ready? → a video slot
(:class:`~darkpose.service.api.tracking.VideoJobs`: ``video_max_jobs`` in total,
``video_max_jobs_per_client`` per client, shared with the live streams of
:mod:`darkpose.service.api.routes.stream`; 503 + ``Retry-After`` beyond) → the body (multipart
field ``video`` or the raw bytes, at most ``video_max_bytes``) → the container header checked
(:func:`darkpose.service.core.video.open_video`: container, codec, duration, frame count, frame
size; a refusal is a 4xx JSON answer) → the frames decoded and tracked in one worker thread
(:class:`darkpose.service.core.tracking.PoseTracker`; its pose crops go through the app's
micro-batcher, so concurrent videos and images share pose-model calls).

``render=true`` answers the video with the skeletons drawn instead (``video/mp4``, H.264, each
frame downscaled to at most ``max_render_side``; written to a temporary file while the frames are
tracked, sent when the run ends), or the JSON error that stopped it.
``stream=true`` (default) answers ``application/x-ndjson``, one JSON object per line: first
``{"type": "video", …}`` (the header), then ``{"type": "frame", …}`` per processed frame as soon
as it is ready, last ``{"type": "end", …}``, or ``{"type": "error", …}`` when the video turns
out corrupt or over a limit while decoding (the frames before it stay valid).  ``stream=false``
answers one JSON object with every frame, or a 4xx JSON error.  A client that goes away stops
the work at the next frame.  ``work_timeout_s`` bounds the work of each frame.
"""

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from darkpose.service.api import tracking
from darkpose.service.api.body import MULTIPART, media_type, read_body
from darkpose.service.api.deps import StateDep
from darkpose.service.api.errors import error_body, request_id_of
from darkpose.service.api.multipart import parse_multipart
from darkpose.service.api.routes.pose import BINARY
from darkpose.service.api.schemas import error_responses
from darkpose.service.api.state import ServiceState
from darkpose.service.api.work import MB, Job, JobCancelled, current_job
from darkpose.service.core.errors import DarkPoseError, PayloadTooLarge
from darkpose.service.core.pipeline import Pipeline, PipelineOptions
from darkpose.service.core.tracking import PoseTracker, TrackerConfig
from darkpose.service.core.video import (
    CONTAINER_TEXT,
    VIDEO_MEDIA_TYPES,
    InvalidVideo,
    VideoReader,
    VideoWriter,
    check_fps,
    open_video,
)
from darkpose.service.core.visualize import overlay

logger = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
#: Bytes per read of a rendered video sent back.
RENDER_CHUNK = 1 << 16
#: Frame lines a worker may run ahead of a slow reader of the NDJSON answer.
AHEAD_LINES = 8
VIDEO_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the video: multipart field `video`, or the raw bytes as the body",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["video"],
                    "properties": {"video": {"type": "string", "format": "binary"}},
                }
            },
            **{t: BINARY for t in sorted(VIDEO_MEDIA_TYPES)},
        },
    }
}


def _json_line(obj: dict[str, Any]) -> bytes:
    return (
        json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n"
    ).encode()


def run_video(
    state: ServiceState,
    pipeline: Pipeline,
    reader: VideoReader,
    options: PipelineOptions,
    config: TrackerConfig,
    fps: float | None,
    job: Job,
    emit: Callable[[dict[str, Any]], None],
    out: Any | None = None,
) -> None:
    """Worker thread: decode, track, ``emit`` each frame line, then the end line (or raise);
    with ``out`` (a seekable binary file) also write the overlay video there (MP4, each frame
    downscaled to at most ``max_render_side``)."""
    token = current_job.set(job)
    writer: VideoWriter | None = None
    tracker = PoseTracker(
        pipeline,
        config,
        options,
        run=tracking.make_runner(state, pipeline, options, job),
        min_side=state.settings.min_image_side,
    )
    try:
        for vf in reader.frames(fps=fps, check=job.check):
            frame = tracker.process(vf.image, vf.timestamp, index=vf.index)
            tracking.observe_frame(state, "video", frame)
            emit(tracking.frame_json(frame))
            if out is not None:
                image = overlay(vf.image, frame.poses, state.settings.max_render_side)
                if writer is None:
                    rate = fps or reader.info.rate
                    writer = VideoWriter(out, image.shape[1], image.shape[0], rate)
                writer.write(image)
        if writer is not None:
            writer.close()
        emit(
            {
                "type": "end",
                "frames": tracker.frames,
                "detector_runs": tracker.detections,
                "tracks": tracker.tracker.ids_issued,
            }
        )
    finally:
        if writer is not None:
            writer.close()
        current_job.reset(token)
        reader.close()


async def read_video_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The video bytes: multipart field ``video`` (exactly one file) or the raw body."""
    if media_type(request) == MULTIPART:
        body = await read_body(request, max_bytes + 64 * 1024, timeout_s)
        parts = await asyncio.to_thread(
            parse_multipart, body, request.headers.get("content-type", "")
        )
        files = [p for p in parts if p.filename is not None or p.name == "video"]
        videos = [p for p in files if p.name == "video"]
        if len(files) != 1 or not videos:
            raise InvalidVideo(
                f"multipart body: expected exactly one file field 'video', got fields "
                f"{sorted({p.name for p in parts}) or 'none'}"
            )
        data = videos[0].data
        if len(data) > max_bytes:
            raise PayloadTooLarge(
                f"video: expected at most {max_bytes} bytes (video_max_bytes), got {len(data)}"
            )
    else:
        data = await read_body(request, max_bytes, timeout_s)
    if not data:
        raise InvalidVideo(f"request body: expected {CONTAINER_TEXT}, got an empty body")
    return data


class _Channel:
    """Lines from the worker thread to the event loop, at most :data:`AHEAD_LINES` ahead."""

    def __init__(self, loop: asyncio.AbstractEventLoop, job: Job) -> None:
        self.loop = loop
        self.job = job
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.room = threading.Semaphore(AHEAD_LINES)

    def emit(self, line: dict[str, Any]) -> None:  # worker thread
        while not self.room.acquire(timeout=0.5):
            self.job.check()
        self.loop.call_soon_threadsafe(self.queue.put_nowait, line)

    def close(self) -> None:  # worker thread, from the future's done-callback
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


def error_line(exc: BaseException, request_id: str) -> dict[str, Any]:
    if isinstance(exc, DarkPoseError):
        body = error_body(exc.code, exc.message, request_id)
    else:
        logger.error("request %s: video failed: %s", request_id, exc, exc_info=exc)
        body = error_body(
            "internal_error",
            f"internal error ({type(exc).__name__}); quote request id {request_id}",
            request_id,
        )
    return {"type": "error", **body}


async def serve_video(
    request: Request,
    state: ServiceState,
    *,
    fps: float | None,
    stream: bool,
    render: bool,
    max_persons: int | None,
    det_every: int | None,
    smooth: bool | None,
) -> Response:
    s = state.settings
    request_id = request_id_of(request.scope)
    pipeline = state.require_ready()
    fps = check_fps(fps)
    config = tracking.tracker_config(s, det_every, smooth)
    options = state.options().replace(
        max_persons=max_persons if max_persons is not None else s.pipeline.max_persons
    )
    jobs = tracking.video_jobs(request.app.state)
    client = tracking.client_of(request.scope)
    jobs.take(client)
    released = False
    reserved = 0

    def release() -> None:
        nonlocal released, reserved
        if not released:
            released = True
            jobs.give(client)
            state.metrics.video_active.labels(kind="video").dec()
            if reserved:
                state.memory.release(reserved)
                reserved = 0

    state.metrics.video_active.labels(kind="video").inc()
    try:
        with state.upload_slot():
            data = await read_video_body(request, s.video_max_bytes, s.request_timeout_s)
        reader = await asyncio.to_thread(functools.partial(open_video, data, **s.video_limits))
        w, h = reader.info.width, reader.info.height
        # the upload, a decoded frame and its copies (+ the overlay's with render)
        need = len(data) + (24 if render else 16) * w * h + 8 * MB
        try:
            state.memory.reserve(need)
        except BaseException:
            reader.close()
            raise
        reserved = need
        del data
    except BaseException:
        release()
        raise
    header = {
        "type": "video",
        "request_id": request_id,
        "video": reader.info.to_json(),
        "fps": fps,
        "tracking": {"det_every": config.det_every, "smooth": config.smoothing},
        "model": state.response_model_info(),
    }
    job = Job(s.work_timeout_s, s.retry_after_s)
    loop = asyncio.get_running_loop()
    channel = _Channel(loop, job)
    # on disk, not in memory; closed by whoever ends its life (error, or the sent response)
    out = tempfile.TemporaryFile() if render else None  # noqa: SIM115
    try:
        future = state.executor.submit(
            run_video, state, pipeline, reader, options, config, fps, job, channel.emit, out
        )
    except BaseException:
        reader.close()
        release()
        if out is not None:
            out.close()
        raise

    def done(f: concurrent.futures.Future[None]) -> None:
        release()
        channel.close()

    future.add_done_callback(done)

    async def lines() -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                line = await channel.queue.get()
                if line is None:
                    break
                channel.room.release()
                yield line
            exc = future.exception() if future.done() and not future.cancelled() else None
            if exc is not None and not isinstance(exc, JobCancelled):
                yield error_line(exc, request_id)
        finally:
            job.cancel("client disconnected")
            future.cancel()

    if out is not None:
        _, end, failed = await _collected(request, lines(), future, job, keep_frames=False)
        if failed is not None:
            out.close()
            return failed
        return _rendered(end, out)

    if not stream:
        frames, end, failed = await _collected(request, lines(), future, job, keep_frames=True)
        if failed is not None:
            return failed
        body = {**header, "frames": frames, "summary": end}
        body.pop("type", None)
        return JSONResponse(body)

    async def ndjson() -> AsyncIterator[bytes]:
        yield _json_line(header)
        async for line in lines():
            yield _json_line(line)

    return StreamingResponse(ndjson(), media_type=NDJSON)


async def _collected(
    request: Request,
    lines: AsyncIterator[dict[str, Any]],
    future: concurrent.futures.Future[None],
    job: Job,
    *,
    keep_frames: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any], JSONResponse | None]:
    """Wait for the worker's lines (an answer sent at the end: ``stream=false``, ``render``):
    the frame lines (with ``keep_frames``), the end line (empty when the run stopped early) and
    the JSON error answer when the run failed.  A client that goes away cancels the work."""
    frames: list[dict[str, Any]] = []
    end: dict[str, Any] = {}
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        async for line in lines:
            if gone.done():
                job.cancel("client disconnected")
                break
            if line["type"] == "frame":
                if keep_frames:
                    frames.append(line)
            elif line["type"] == "end":
                end = line
            elif line["type"] == "error":
                failed = JSONResponse(
                    {k: v for k, v in line.items() if k != "type"}, status_code=_status_of(future)
                )
                return frames, end, failed
    finally:
        gone.cancel()
    return frames, end, None


def _rendered(end: dict[str, Any], out: Any) -> Response:
    """``render=true``: the overlay video the worker wrote to ``out`` (``video/mp4``; the run's
    frame and track counts in ``X-Darkpose-Frames`` / ``X-Darkpose-Tracks``), given the run's
    end line."""
    if not end or not end["frames"]:
        out.close()
        raise InvalidVideo(
            "render: expected a video with at least one frame to draw, got none"
            if end
            else "render: expected the whole video processed, got a cancelled run"
        )

    def chunks() -> Iterator[bytes]:
        try:
            out.seek(0)
            while chunk := out.read(RENDER_CHUNK):
                yield chunk
        finally:
            out.close()

    headers = {
        "Content-Disposition": 'attachment; filename="poses.mp4"',
        "X-Darkpose-Frames": str(end["frames"]),
        "X-Darkpose-Tracks": str(end["tracks"]),
    }
    return StreamingResponse(chunks(), media_type="video/mp4", headers=headers)


def _status_of(future: concurrent.futures.Future[None]) -> int:
    exc = future.exception() if future.done() and not future.cancelled() else None
    return int(exc.status_code) if isinstance(exc, DarkPoseError) else 500


async def _disconnected(request: Request) -> None:
    with contextlib.suppress(Exception):
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return


def build_router(person_cap: int) -> APIRouter:
    """The ``POST /pose/video`` router; ``person_cap`` bounds ``max_persons`` (a setting)."""
    router = APIRouter()

    @router.post(
        "/pose/video",
        summary="Tracked poses of every frame of a video file",
        responses={
            200: {
                "description": "NDJSON lines (video header, one per frame, end or error); "
                "with stream=false one JSON object; with render=true the overlay video",
                "content": {
                    NDJSON: {"schema": {"type": "string"}},
                    "video/mp4": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **error_responses(400, 408, 413, 415, 422, 500, 503),
        },
        openapi_extra=VIDEO_REQUEST_BODY,
    )
    async def pose_video(
        request: Request,
        state: StateDep,
        fps: Annotated[
            float | None,
            Query(gt=0, le=1000, description="sample at most this many frames per second"),
        ] = None,
        stream: Annotated[
            bool, Query(description="NDJSON lines as frames are ready (false: one JSON)")
        ] = True,
        render: Annotated[
            bool,
            Query(
                description="answer the video with the skeletons drawn (MP4, H.264, frames "
                "at most max_render_side) instead of JSON"
            ),
        ] = False,
        max_persons: Annotated[
            int | None, Query(ge=1, le=person_cap, description="most persons per frame")
        ] = None,
        det_every: Annotated[
            int | None,
            Query(ge=1, le=1000, description="run the detector every this many frames"),
        ] = None,
        smooth: Annotated[
            bool | None, Query(description="One-Euro smoothing of the keypoints")
        ] = None,
    ) -> Any:
        return await serve_video(
            request,
            state,
            fps=fps,
            stream=stream,
            render=render,
            max_persons=max_persons,
            det_every=det_every,
            smooth=smooth,
        )

    return router
