"""Fixtures of the video tests: small real videos made with PyAV, one app on the real models."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.api.conftest import CROWD_IMAGE, api_settings, wait_ready
from tests.conftest import SHARED

warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
from fastapi.testclient import TestClient  # noqa: E402

av = pytest.importorskip("av")

VIDEOS = SHARED / "data" / "video"
#: A real H.264 clip with several people (5 frames, 960 × 540, 5 frames/s).
MMPOSE_CLIP = VIDEOS / "mmpose_demo_960x540_5f.mp4"
#: A real MPEG-4 Part 2 clip (5 frames, 1280 × 720, 30 frames/s).
POSETRACK_CLIP = VIDEOS / "posetrack18_000001_mpiinew_test_1280x720_5f.mp4"


def crowd_frames(n: int, size: tuple[int, int] = (320, 224), step: int = 2) -> list[np.ndarray]:
    """``n`` BGR frames of the coco-mini crowd photo resized to ``size`` (W, H), panned by
    ``step`` px a frame (a moving camera)."""
    img = cv2.imread(str(CROWD_IMAGE), cv2.IMREAD_COLOR)
    w, h = size
    big = cv2.resize(img, (w + step * n, h + step * n // 2))
    return [
        np.ascontiguousarray(big[(i * step) // 2 : (i * step) // 2 + h, i * step : i * step + w])
        for i in range(n)
    ]


def make_video(
    frames: list[np.ndarray],
    *,
    codec: str = "libx264",
    container: str = "mp4",
    fps: int = 10,
    rotation: int = 0,
    options: dict[str, str] | None = None,
) -> bytes:
    """Encode BGR ``frames`` (equal even sizes) into ``container`` bytes with PyAV;
    ``rotation``: the display matrix's counter-clockwise degrees; ``options``: the muxer's
    (``{"live": "1"}``: a WebM without duration or frame count in its header)."""
    buf = io.BytesIO()
    out = av.open(buf, mode="w", format=container, options=options)
    stream = out.add_stream(codec, rate=Fraction(fps))
    h, w = frames[0].shape[:2]
    stream.width, stream.height = w, h
    stream.pix_fmt = "yuv420p"
    if rotation:
        stream.set_display_rotation(rotation)
    for f in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="bgr24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return buf.getvalue()


def video_settings(**overrides: Any) -> Any:
    base: dict[str, Any] = {
        "video_max_bytes": 4 * 1024 * 1024,
        "video_max_frames": 60,
        "video_max_duration_s": 20.0,
        "video_max_jobs_per_client": 2,
        "stream_max_fps": 5.0,
        "stream_idle_timeout_s": 2.0,
        "max_image_side": 1400,
        "demo": True,
    }
    base.update(overrides)
    return api_settings(**base)


@pytest.fixture(scope="package")
def vclient() -> Iterator[TestClient]:
    """One ready app (batching on, demo on, small video limits) shared by the video tests."""
    from darkpose.service.api import create_app

    with TestClient(create_app(video_settings()), raise_server_exceptions=False) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="session")
def crowd_mp4() -> bytes:
    """12 frames, 320 × 224, H.264 in MP4, 10 frames/s, a panning camera over the crowd."""
    return make_video(crowd_frames(12))


def clip_bytes(path: Path) -> bytes:
    return path.read_bytes()
