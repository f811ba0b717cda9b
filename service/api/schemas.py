"""Pydantic response schemas of the HTTP API (they appear in the OpenAPI document)."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from darkpose.service.core.poses import Poses


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable error code, e.g. invalid_image")
    message: str = Field(description="what was expected and what came")


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx answer."""

    error: ErrorDetail
    request_id: str


class ImageInfo(BaseModel):
    width: int
    height: int


class PersonOut(BaseModel):
    """One detected person; coordinates in image pixels (pixel centres at integers)."""

    bbox: list[float] = Field(description="[x1, y1, x2, y2]", min_length=4, max_length=4)
    box_score: float = Field(description="detector score")
    score: float = Field(description="rescored instance score (box × mean confident keypoint)")
    keypoints: list[float] = Field(
        description="COCO results format: [x1, y1, s1, x2, y2, s2, ...], 3K values in the "
        "model's keypoint order (`model.keypoint_names`; K = 17 for COCO models); scores in "
        "[0, 1]. Keypoint k is at indices 3k, 3k + 1, 3k + 2."
    )

    @staticmethod
    def rows(poses: Poses) -> list[dict[str, Any]]:
        """``poses`` (columns) → one :class:`PersonOut`-shaped dict per person (non-finite
        numbers become 0); ``PoseResponse`` validates and serialises them."""
        n = len(poses)
        clean = partial(np.nan_to_num, nan=0.0, posinf=0.0, neginf=0.0)
        boxes = clean(poses.boxes.astype(np.float64)).tolist()
        box_scores = clean(poses.box_scores.astype(np.float64)).tolist()
        scores = clean(poses.scores.astype(np.float64)).tolist()
        kpts = clean(
            poses.keypoints.astype(np.float64).reshape(n, 3 * poses.num_keypoints)
        ).tolist()
        return [
            {"bbox": boxes[i], "box_score": box_scores[i], "score": scores[i], "keypoints": kpts[i]}
            for i in range(n)
        ]


class ModelInfo(BaseModel):
    pose_models: list[str]
    detector: str
    decode: str = Field(description="the decode that ran (the model card's unless overridden)")
    blur_kernel: int = Field(0, description="DARK blur kernel used")
    decode_in_graph: bool = Field(False, description="the pose model decodes in its own graph")
    flip: bool
    keypoint_names: list[str]
    input_size: list[int] = Field(description="pose network input [W, H]")
    heatmap_size: list[int] = Field(description="heatmap [W, H]")
    batching: bool


class Timings(BaseModel):
    """Per-stage server time in milliseconds."""

    detect: float = 0.0
    crop: float = 0.0
    pose: float = 0.0
    decode: float = 0.0
    postprocess: float = 0.0
    total: float = 0.0
    image_decode: float = Field(0.0, description="decoding the uploaded image bytes")


class PoseResponse(BaseModel):
    request_id: str
    image: ImageInfo
    persons: list[PersonOut]
    model: ModelInfo
    timings_ms: Timings


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    status: str
    ready: bool
    detail: str = ""


class PoseModelEntry(BaseModel):
    name: str
    path: str
    arch: str
    input_size: list[int]
    heatmap_size: list[int]
    keypoints: int
    codec: str
    decoded_output: bool
    backend: str = Field("onnxruntime", description="runtime: onnxruntime | openvino")
    precision: str = Field("fp32", description="fp32 | bf16 | int8 (a quantised file)")


class BatchingInfo(BaseModel):
    """The pose models' micro-batching and the service's concurrency limits."""

    enabled: bool = Field(description="the pose models run behind the micro-batcher")
    max_batch: int = Field(description="most crops in one micro-batched model call")
    max_wait_ms: float = Field(description="longest a crop waits for its batch to fill")
    queue_size: int = Field(description="most crops waiting for the pose model")
    workers: int = Field(description="batch workers per pose model")
    max_inflight_requests: int = Field(description="most requests worked on at once")


class ProfileSetting(BaseModel):
    value: Any = Field(description="the setting's value")
    source: str = Field(
        description='where it comes from: "from profile <name>", "from DARKPOSE_<NAME>", '
        '"set explicitly" or "default"'
    )


class ProfileInfo(BaseModel):
    name: str = Field(description="the profile (fast | balanced | accurate)")
    settings: dict[str, ProfileSetting] = Field(
        description="every setting the profile governs, by name"
    )


class ModelsResponse(BaseModel):
    """The loaded models and the settings they run with."""

    ready: bool
    pose_models: list[PoseModelEntry]
    detector: str
    providers: str = Field(description="execution providers in use, comma-separated")
    decode: str = Field(description="the default decode (the setting, else the model card's)")
    batching: BatchingInfo
    profile: ProfileInfo


#: OpenAPI ``responses=`` entry shared by the error statuses.
def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "invalid input (unreadable image, empty body, missing field, ...)",
        408: "the upload did not finish within the request timeout",
        413: "image over the byte / pixel / side limit",
        415: "unsupported content type or image format",
        422: "invalid query parameter",
        500: "internal error (logged with the request id)",
        503: "not ready, or overloaded (Retry-After)",
    }
    return {
        s: {"model": ErrorResponse, "description": descriptions.get(s, "error")} for s in statuses
    }
