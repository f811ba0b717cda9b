"""``POST /pose``: one image in, the persons as JSON (or the overlay PNG) out.

The route is thin: :func:`serve_pose` reads the body under an upload slot, admits the request
(an in-flight slot) and runs :func:`run_pose` (decode → pipeline → response body) in one of the
state's worker threads, cancelling it when the client leaves or its deadline passes.  The
router is built per app by :func:`build_router` because the ``max_persons`` and
``score_threshold`` bounds of the query are settings and part of the OpenAPI document.
"""

import asyncio
import concurrent.futures
import enum
import time
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.types import Receive

from darkpose.service.api.body import ClientGoneError, extract_image
from darkpose.service.api.deps import StateDep
from darkpose.service.api.errors import request_id_of
from darkpose.service.api.schemas import PersonOut, PoseResponse, Timings, error_responses
from darkpose.service.api.state import ServiceState
from darkpose.service.api.work import Job, current_job, hold_work
from darkpose.service.core.choices import DecodeMethod, Probability
from darkpose.service.core.codec import DECODERS
from darkpose.service.core.errors import InvalidImage
from darkpose.service.core.options import given
from darkpose.service.core.pipeline import Pipeline, PipelineOptions, too_small_for_person
from darkpose.service.core.poses import Poses

RenderFormat = Literal["jpeg", "png"]
#: ``render_format`` → (cv2 suffix, encoder flags, media type); JPEG quality 90: a 640×427
#: photo overlay is ~97 KB against ~530 KB as PNG (photos do not compress losslessly).
RENDER_ENCODINGS: dict[str, tuple[str, list[int], str]] = {
    "jpeg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90], "image/jpeg"),
    "png": (".png", [cv2.IMWRITE_PNG_COMPRESSION, 3], "image/png"),
}

BINARY: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}
POSE_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the image: multipart field `image`, or the raw bytes as the body",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
            "image/jpeg": BINARY,
            "image/png": BINARY,
            "image/webp": BINARY,
            "image/bmp": BINARY,
            "application/octet-stream": BINARY,
        },
    }
}


@dataclass(frozen=True)
class PoseQuery:
    """The query parameters of one ``POST /pose`` (``None``: the service default)."""

    decode: DecodeMethod | None = None
    flip: bool | None = None
    score_threshold: float | None = None
    keypoint_threshold: float | None = None
    max_persons: int | None = None
    render: bool = False
    exif_orientation: bool = True
    render_format: RenderFormat = "jpeg"

    def options(self, defaults: PipelineOptions, default_max_persons: int) -> PipelineOptions:
        """``defaults`` with this request's overrides applied."""
        persons = self.max_persons if self.max_persons is not None else default_max_persons
        return defaults.replace(
            **given(
                decode=self.decode,
                flip=self.flip,
                det_score_threshold=self.score_threshold,
                keypoint_score_threshold=self.keypoint_threshold,
                max_persons=persons,
            )
        )


def render_overlay(
    image: npt.NDArray[np.uint8],
    poses: Poses,
    max_side: int,
    render_format: str,
    original_size: tuple[int, int] | None = None,
) -> tuple[bytes, str]:
    """The skeleton overlay, encoded per ``render_format`` and downscaled so its longest side is
    at most ``max_side`` (``max_render_side``: bounds the body a slow reader can pin).

    ``poses`` are in the coordinates of the original image of ``original_size`` (W, H)
    (default: ``image``'s own size); ``image`` may be that image at a working resolution: the
    overlay has the size the original would get and is drawn from ``image``."""
    from darkpose.service.core.visualize import overlay

    suffix, flags, media = RENDER_ENCODINGS[render_format]
    ok, enc = cv2.imencode(suffix, overlay(image, poses, max_side, original_size), flags)
    if not ok:
        raise InvalidImage(f"render: expected an encodable overlay, got a {suffix} encoder failure")
    return enc.tobytes(), media


def run_pose(
    state: ServiceState,
    pipeline: Pipeline,
    data: bytes,
    options: PipelineOptions,
    query: PoseQuery,
    request_id: str,
    job: Job | None = None,
) -> tuple[bytes, str]:
    """Worker-thread part of ``POST /pose``: decode → pipeline → metrics → the response body
    (``PoseResponse`` JSON, or the overlay JPEG/PNG) as ``(content, media type)``.

    The image is turned upright per its EXIF orientation unless ``query.exif_orientation`` is
    false.  A valid image with a side under ``min_image_side`` holds no detectable person: it
    is answered with no persons (the pipeline does not run).  ``timings_ms.total`` spans
    decoding and the pipeline.  ``job`` (optional) is checked between stages; the request's
    estimated memory (every stage: :meth:`ServiceState.request_cost`) is reserved in
    ``state.memory`` once the image header is known (before decoding) and released when this
    returns, i.e. when the worker has stopped; a full pose queue refuses before detection.
    The body is produced by its schema, ``PoseResponse`` (the same model documents it in the
    OpenAPI document): validated from plain columns-turned-lists and serialised by pydantic's
    compiled serialiser, off the event loop (faster than ``json.dumps``: bench/response_json.py).
    """
    from darkpose.service.core.io import decode_working

    s = state.settings
    check = job.check if job is not None else (lambda: None)
    reserved = 0
    size = (0, 0, "RGB")  # the pixels the decoder holds (admit)
    crops = options.max_crops

    def admit(width: int, height: int, mode: str) -> None:
        # width × height: the pixels the decoder will hold (a JPEG's working size when it is
        # decoded at a reduced scale, else the full size; see decode_working)
        # refused (413) when it could never fit with max_persons; reserved without persons
        # until the detector has counted them (grow_memory)
        nonlocal reserved, size
        check()
        size = (width, height, mode)
        cost = state.request_cost(pipeline, options, query.render, width, height, mode)
        now = state.request_cost(pipeline, options, query.render, width, height, mode, 0)
        reserved = state.reserve_memory(cost, width, height, now)

    # an overlay is drawn at up to max_render_side: it is not worked on at fewer pixels
    working_side = s.working_side
    if query.render and working_side:
        working_side = max(working_side, s.max_render_side)
    token = current_job.set(job)
    try:
        check()
        t0 = time.perf_counter()
        decoded = decode_working(
            data,
            **s.image_limits,
            working_side=working_side,
            exif_orientation=query.exif_orientation,
            on_header=admit,
        )
        image = decoded.image
        decode_s = time.perf_counter() - t0
        check()
        # decode / blur kernel from the model card where the request and settings leave them
        # open (a request asking an in-graph-decoded model for another decode: 422 here)
        options = pipeline.resolve_options(options)
        w, h = decoded.original_size
        if too_small_for_person(decoded.original_shape, s.min_image_side):
            result = Poses.empty(
                keypoint_names=tuple(pipeline.spec.keypoint_names), image_size=(int(w), int(h))
            )
        else:
            state.check_queue_room(pipeline, crops)
            t1 = time.perf_counter()
            boxes, box_scores = pipeline.person_boxes(image, options)
            detect_s = time.perf_counter() - t1
            check()
            if reserved:  # the persons found: their crops and heatmaps join the reservation
                cost = state.request_cost(
                    pipeline, options, query.render, *size, persons=len(boxes)
                )
                reserved = state.grow_memory(reserved, cost)
            # found on the working image, answered in the original image's coordinates
            found = pipeline(image, options=options, boxes=boxes, box_scores=box_scores)
            timings = {**found.timings, "detect": detect_s + found.timings.get("detect", 0.0)}
            result = replace(found, timings=timings).to_original(
                decoded.scale, decoded.original_size
            )
        total_s = time.perf_counter() - t0
        timings = {**result.timings, "image_decode": decode_s, "total": total_s}
        state.metrics.observe_timings(timings)
        state.metrics.persons.observe(len(result))
        check()
        if query.render:
            return render_overlay(
                image,
                result,
                s.max_render_side,
                query.render_format,
                decoded.original_size,
            )
        stage_ms = dict.fromkeys(Timings.model_fields, 0.0)
        for k, v in timings.items():
            if k in stage_ms:
                stage_ms[k] = 1000.0 * float(v)
        body = {
            "request_id": request_id,
            "image": {"width": int(w), "height": int(h)},
            "persons": PersonOut.rows(result),
            "model": {
                **state.response_model_info(),
                "decode": str(options.decode),
                "blur_kernel": int(options.blur_kernel or 0),
                "decode_in_graph": bool(pipeline.spec.decoded_output),
                "flip": bool(options.flip),
            },
            "timings_ms": stage_ms,
        }
        return PoseResponse.model_validate(body).model_dump_json().encode(), "application/json"
    finally:
        current_job.reset(token)
        if reserved:
            state.memory.release(reserved)


async def _next_disconnect(receive: Receive) -> None:
    """Return once the client has gone (``http.disconnect``); the body was read before."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _retrieve(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()


async def await_work(
    future: concurrent.futures.Future[tuple[bytes, str]], job: Job, receive: Receive
) -> tuple[bytes, str]:
    """The worker's result, or: the client left → cancel the job, ``ClientGoneError``; the
    deadline passed → cancel the job, ``DeadlineExceeded``.  A cancelled job's worker stops at
    its next check and only then frees its slot (the future's done-callback)."""
    work: asyncio.Future[Any] = asyncio.wrap_future(future)
    work.add_done_callback(_retrieve)  # an abandoned job's error is expected, not "unretrieved"
    gone: asyncio.Future[Any] = asyncio.ensure_future(_next_disconnect(receive))
    try:
        done, _ = await asyncio.wait(
            {work, gone}, timeout=job.timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    except BaseException:  # cancelled (shutdown past the grace period): stop the work too
        job.cancel("request cancelled")
        future.cancel()
        gone.cancel()
        raise
    if work in done:
        gone.cancel()
        return work.result()
    future.cancel()  # not started yet: never starts
    if gone in done:
        job.cancel("client disconnected")
        raise ClientGoneError("response: expected the client to wait for it, the client left")
    gone.cancel()
    job.cancel("deadline exceeded")
    raise job.deadline_error()


async def serve_pose(request: Request, state: ServiceState, query: PoseQuery) -> Response:
    """Admit, read the image, run :func:`run_pose` in a worker thread, answer.

    Order: ready? → the query's own memory estimate fits the budget (else 422 naming
    ``max_persons``) → an upload slot while the body arrives (``max_concurrent_uploads``) → an
    in-flight slot once it has (``max_inflight_requests``) → the work, bounded by
    ``work_timeout_s`` and cancelled when the client leaves.  The in-flight slot, the memory
    reservation and the client's own slot (access control, :func:`hold_work`) are freed when
    the worker has stopped, not when the client leaves: abandoned work counts against the
    client that abandoned it.
    """
    settings = state.settings
    request_id = request_id_of(request.scope)
    pipeline = state.require_ready()
    options = query.options(state.options(), settings.pipeline.max_persons)
    state.check_parameters_fit(pipeline, options, query.render)
    state.metrics.inflight.inc()
    try:
        with state.upload_slot():
            data = await extract_image(
                request, settings.max_image_bytes, settings.request_timeout_s
            )
        job = Job(settings.work_timeout_s, settings.retry_after_s)
        state.enter()
        stopped = hold_work(request.scope)
        state.metrics.work_running.inc()

        def worker_stopped(_: object = None) -> None:
            state.metrics.work_running.dec()
            state.leave()
            stopped()

        try:
            future = state.executor.submit(
                run_pose, state, pipeline, data, options, query, request_id, job
            )
        except BaseException:
            worker_stopped()
            raise

        future.add_done_callback(worker_stopped)
        del data
        content, media_type = await await_work(future, job, request.receive)
    finally:
        state.metrics.inflight.dec()
    return Response(content, media_type=media_type)


def build_router(person_cap: int, min_score: float = 0.0) -> APIRouter:
    """The ``POST /pose`` router; ``person_cap`` bounds the ``max_persons`` query and
    ``min_score`` the ``score_threshold`` query from below (settings ``max_persons``,
    ``min_score_threshold``).

    (No ``from __future__ import annotations`` in this module: the bound is read from the
    enclosing scope when FastAPI evaluates the signature.)
    """
    router = APIRouter()
    # the query's choices are the decoder table's keys (one table:
    # darkpose.service.core.codec.DECODERS)
    decode_choice = enum.Enum("DecodeMethod", {m: m for m in DECODERS}, type=str)  # type: ignore[misc]

    @router.post(
        "/pose",
        response_model=PoseResponse,
        summary="Estimate the poses of all persons in an image",
        responses={
            200: {
                "description": "persons as JSON, or the overlay image when render=true "
                "(image/jpeg, or image/png with render_format=png)",
                "content": {"image/jpeg": BINARY, "image/png": BINARY},
            },
            **error_responses(400, 408, 413, 415, 422, 500, 503),
        },
        openapi_extra=POSE_REQUEST_BODY,
    )
    async def pose(
        request: Request,
        state: StateDep,
        decode: Annotated[
            decode_choice | None,  # type: ignore[valid-type]
            Query(
                description="heatmap decoding (default: the service setting, else the pose "
                "model's card; a model that decodes in its graph accepts only its own: 422)"
            ),
        ] = None,
        flip: Annotated[bool | None, Query(description="flip test-time augmentation")] = None,
        score_threshold: Annotated[
            float | None,
            Query(
                ge=min_score,
                le=1.0,
                description="person detection score threshold (at least the service's "
                "min_score_threshold: below it every weak candidate becomes a person)",
            ),
        ] = None,
        keypoint_threshold: Annotated[
            Probability | None, Query(description="keypoint score threshold used in rescoring")
        ] = None,
        max_persons: Annotated[
            int | None,
            Query(
                ge=1,
                le=person_cap,
                description="most persons returned (each costs a pose crop, two with flip)",
            ),
        ] = None,
        render: Annotated[
            bool, Query(description="return the skeleton overlay image instead of JSON")
        ] = False,
        render_format: Annotated[
            RenderFormat,
            Query(description="overlay encoding with render=true: jpeg (quality 90) or png"),
        ] = "jpeg",
        exif_orientation: Annotated[
            bool,
            Query(
                description="turn the photo upright per its EXIF orientation first (answer "
                "in the upright frame); false = the pixels as stored (COCO convention)"
            ),
        ] = True,
    ) -> Any:
        query = PoseQuery(
            None if decode is None else str(decode.value),
            flip,
            score_threshold,
            keypoint_threshold,
            max_persons,
            render,
            exif_orientation,
            render_format,
        )
        return await serve_pose(request, state, query)

    return router
