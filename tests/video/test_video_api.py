"""POST /pose/video on the real models (TestClient): answers, sampling, rotation, errors."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.video.conftest import MMPOSE_CLIP, crowd_frames, make_video


def post_video(client: TestClient, body: bytes, query: str = "", **headers: str) -> Any:
    return client.post(
        "/pose/video" + query, content=body, headers={"content-type": "video/mp4", **headers}
    )


def ndjson(
    client: TestClient, body: bytes, query: str = "", **headers: str
) -> list[dict[str, Any]]:
    r = post_video(client, body, query, **headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines() if line]


def live_webm(n: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A WebM written as a live stream: no duration and no frame count in its header."""
    frames = [np.full((size[1], size[0], 3), (i * 20) % 255, np.uint8) for i in range(n)]
    return make_video(frames, codec="libvpx", container="webm", options={"live": "1"})


def test_ndjson_header_frames_with_stable_track_ids_and_end(
    vclient: TestClient, crowd_mp4: bytes
) -> None:
    lines = ndjson(vclient, crowd_mp4)
    header, frames, end = lines[0], lines[1:-1], lines[-1]
    assert header["type"] == "video"
    assert header["video"]["width"] == 320 and header["video"]["height"] == 224
    assert header["video"]["codec"] == "h264" and header["video"]["fps"] == 10.0
    assert [f["type"] for f in frames] == ["frame"] * 12
    assert [f["frame"] for f in frames] == list(range(12))
    assert [f["timestamp"] for f in frames] == pytest.approx([i / 10 for i in range(12)])
    assert frames[0]["detected"] is True
    assert end == {
        "type": "end",
        "frames": 12,
        "detector_runs": sum(f["detected"] for f in frames),
        "tracks": end["tracks"],
    }
    assert end["detector_runs"] < 12  # detection every k frames, boxes from keypoints between
    ids = Counter(p["track_id"] for f in frames for p in f["persons"])
    assert ids and max(ids.values()) == 12  # someone is tracked on every frame of the pan
    for f in frames:
        track_ids = [p["track_id"] for p in f["persons"]]
        assert len(track_ids) == len(set(track_ids))
        for p in f["persons"]:
            kpts = p["keypoints"]  # COCO results format: [x1, y1, s1, ...]
            assert len(kpts) == 51 and all(0 <= s <= 1 for s in kpts[2::3])


def test_stream_false_answers_one_json_with_every_frame(
    vclient: TestClient, crowd_mp4: bytes
) -> None:
    streamed = ndjson(vclient, crowd_mp4)
    r = post_video(vclient, crowd_mp4, "?stream=false")
    assert r.status_code == 200
    body = r.json()
    assert body["video"] == streamed[0]["video"]
    assert body["frames"] == streamed[1:-1]  # the same tracks, the same numbers
    assert body["summary"]["frames"] == 12


def test_multipart_field_video_and_fps_sampling(vclient: TestClient, crowd_mp4: bytes) -> None:
    r = vclient.post(
        "/pose/video?stream=false&fps=5", files={"video": ("clip.mp4", crowd_mp4, "video/mp4")}
    )
    assert r.status_code == 200, r.text
    frames = r.json()["frames"]
    assert [f["frame"] for f in frames] == [0, 2, 4, 6, 8, 10]
    assert r.json()["fps"] == 5.0


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_container_rotation_is_applied(vclient: TestClient, rotation: int) -> None:
    """Frames stored turned (as phones store them) with the display rotation that turns them
    upright: the answers are those of the upright video, in its coordinates."""
    upright = crowd_frames(2)
    stored = [np.ascontiguousarray(np.rot90(f, k=-(rotation // 90))) for f in upright]
    query = "?det_every=1&smooth=false"
    plain = ndjson(vclient, make_video(upright), query)
    turned = ndjson(vclient, make_video(stored, rotation=rotation), query)
    assert (turned[0]["video"]["width"], turned[0]["video"]["height"]) == (320, 224)
    assert turned[0]["video"]["rotation"] == rotation % 360
    for a, b in zip(plain[1:-1], turned[1:-1], strict=True):
        # every clearly detected person of the upright video is found at the same place
        # (the encoder's artefacts differ between the two: weak detections may differ)
        clear = [p for p in a["persons"] if p["box_score"] >= 0.5]
        assert clear
        centres = np.asarray([_centre(p) for p in b["persons"]])
        for p in clear:
            assert np.linalg.norm(centres - _centre(p), axis=1).min() < 8.0


def _centre(person: dict[str, Any]) -> np.ndarray:
    x0, y0, x1, y1 = person["bbox"]
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2])


def test_real_clip_streams_tracked_persons(vclient: TestClient) -> None:
    lines = ndjson(vclient, MMPOSE_CLIP.read_bytes())
    assert lines[0]["video"]["width"] == 960 and lines[-1]["type"] == "end"
    assert all(len(f["persons"]) > 0 for f in lines[1:-1])


def test_endless_stream_past_the_frame_limit_ends_with_an_error_line(vclient: TestClient) -> None:
    """A live WebM declares no duration or frame count: the limit is enforced while decoding;
    the frames answered before it stay valid."""
    lines = ndjson(vclient, live_webm(70), **{"content-type": "video/webm"})
    assert [x["type"] for x in lines[1:-1]] == ["frame"] * 60
    assert lines[-1]["type"] == "error"
    assert lines[-1]["error"]["code"] == "payload_too_large"
    assert "at most 60 frames (video_max_frames)" in lines[-1]["error"]["message"]


def test_truncated_video_ends_with_an_error_line(vclient: TestClient) -> None:
    data = make_video(crowd_frames(30, size=(64, 48)), codec="libvpx", container="webm")
    cut = data[: len(data) // 2]
    lines = ndjson(vclient, cut, **{"content-type": "video/webm"})
    assert lines[0]["type"] == "video" and lines[0]["video"]["frames"] == 30
    assert 0 < sum(x["type"] == "frame" for x in lines) < 30
    assert lines[-1]["type"] == "error" and lines[-1]["error"]["code"] == "invalid_video"
    assert "truncated or corrupt" in lines[-1]["error"]["message"]
    r = vclient.post("/pose/video?stream=false", content=cut)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_video"


def _frames(n: int, size: tuple[int, int] = (64, 48)) -> list[np.ndarray]:
    return [np.full((size[1], size[0], 3), 40 * i % 255, np.uint8) for i in range(n)]


BAD_VIDEOS: list[tuple[str, Any, int, str, str]] = [
    (
        "not a video",
        lambda: b"not a video at all " * 50,
        400,
        "invalid_video",
        "FFmpeg cannot open",
    ),
    ("empty", lambda: b"", 400, "invalid_video", "got an empty body"),
    (
        "wrong codec",
        lambda: make_video(_frames(3), codec="mpeg2video", container="matroska"),
        415,
        "unsupported_media_type",
        "video codec: expected one of",
    ),
    (
        "wrong container",
        lambda: make_video(_frames(3), codec="mpeg4", container="avi"),
        415,
        "unsupported_media_type",
        "got the avi container",
    ),
    (
        "too many frames",
        lambda: make_video(_frames(70)),
        413,
        "payload_too_large",
        "at most 60 frames (video_max_frames), got 70",
    ),
    (
        "too long",
        lambda: make_video(_frames(25), fps=1),
        413,
        "payload_too_large",
        "at most 20 s (video_max_duration_s), got 25.0 s",
    ),
    (
        "frames too large",
        lambda: make_video(_frames(2, size=(1600, 32))),
        413,
        "payload_too_large",
        "at most 1400 px a side",
    ),
    (
        "truncated header",
        lambda: make_video(crowd_frames(4))[:2000],
        400,
        "invalid_video",
        "",
    ),
    (
        "too many bytes",
        lambda: b"\x00" * (4 * 1024 * 1024 + 1),
        413,
        "payload_too_large",
        "",
    ),
]


@pytest.mark.parametrize(
    ("name", "make", "status", "code", "message"), BAD_VIDEOS, ids=[b[0] for b in BAD_VIDEOS]
)
def test_bad_videos_get_a_clear_4xx(
    vclient: TestClient, name: str, make: Any, status: int, code: str, message: str
) -> None:
    r = vclient.post("/pose/video", content=make(), headers={"content-type": "video/mp4"})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code
    assert message in body["error"]["message"]
    assert "expected" in body["error"]["message"]


@pytest.mark.parametrize(
    ("query", "message"),
    [("?fps=0", "fps"), ("?det_every=0", "det_every"), ("?colour=1", "colour")],
)
def test_bad_query_parameters_are_422(
    vclient: TestClient, crowd_mp4: bytes, query: str, message: str
) -> None:
    r = vclient.post("/pose/video" + query, content=crowd_mp4)
    assert r.status_code == 422 and message in r.text


def test_video_metrics(vclient: TestClient, crowd_mp4: bytes) -> None:
    def value(text: str, name: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + "{") and 'kind="video"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = vclient.get("/metrics").text
    lines = ndjson(vclient, crowd_mp4)
    after = vclient.get("/metrics").text
    for name, expected in [
        ("darkpose_video_frames_total", 12),
        ("darkpose_video_detector_runs_total", lines[-1]["detector_runs"]),
        ("darkpose_track_births_total", lines[-1]["tracks"]),
    ]:
        assert value(after, name) - value(before, name) == expected, name
    assert value(after, "darkpose_video_active") == 0


def test_frames_under_the_minimum_side_have_no_persons(vclient: TestClient) -> None:
    lines = ndjson(vclient, make_video(_frames(3, size=(6, 6))))
    assert [len(f["persons"]) for f in lines[1:-1]] == [0, 0, 0]
    assert lines[-1]["detector_runs"] == 0


def test_render_answers_the_overlay_video_with_a_frame_per_tracked_frame(
    vclient: TestClient, crowd_mp4: bytes
) -> None:
    import io

    import av

    streamed = ndjson(vclient, crowd_mp4)
    r = post_video(vclient, crowd_mp4, "?render=true")
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"] == "video/mp4"
    assert int(r.headers["x-darkpose-frames"]) == streamed[-1]["frames"] == 12
    assert int(r.headers["x-darkpose-tracks"]) == streamed[-1]["tracks"]
    with av.open(io.BytesIO(r.content)) as container:
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    assert len(frames) == 12 and frames[0].shape == (224, 320, 3)
    # the skeletons are drawn: the overlay differs from the video's own frames
    originals = [
        f.to_ndarray(format="bgr24") for f in av.open(io.BytesIO(crowd_mp4)).decode(video=0)
    ]
    diff = [
        np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames, originals, strict=True)
    ]
    assert max(diff) > 1.0


def test_render_of_a_bad_video_is_a_json_error(vclient: TestClient) -> None:
    r = post_video(vclient, b"not a video", "?render=true")
    assert 400 <= r.status_code < 500
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]
