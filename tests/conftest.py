"""Shared fixtures: paths to the read-only assets in ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = (REPO.parent / "shared").resolve()
MODELS = SHARED / "models"
COCO_MINI = SHARED / "data" / "coco-mini"
GOLDEN = SHARED / "golden" / "mmpose_decode_coco_mini_train.npz"
POSE_ONNX = MODELS / "pose_simplepose_256x192.onnx"
YOLOX_ONNX = MODELS / "yolox_nano_416.onnx"
#: Metric names fixed in docs/contracts.md (the app exports them; dashboards may only use these).
CONTRACT_METRICS: tuple[str, ...] = (
    "darkpose_requests_total",
    "darkpose_stage_seconds",
    "darkpose_request_seconds",
    "darkpose_queue_wait_seconds",
    "darkpose_batch_size",
    "darkpose_inflight_requests",
    "darkpose_persons_per_image",
    "darkpose_model_info",
)
KPT_ANN = COCO_MINI / "annotations" / "person_keypoints_train2017.json"
IMAGES = COCO_MINI / "train2017"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"expected the shared assets at {SHARED}, got nothing there")
    return SHARED
