"""/pose/stream WebSocket (TestClient, real models): answers, drops, limits, keys; and the
same tracks from POST /pose/video, the WebSocket and darkpose infer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.api.conftest import PINNED_ENV, serve_env, wait_ready
from tests.conftest import REPO
from tests.video.conftest import MMPOSE_CLIP, av, crowd_frames, video_settings


def jpeg(frame: Any) -> bytes:
    ok, enc = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return enc.tobytes()


def clip_frames(path: Path) -> list[tuple[float, Any]]:
    with av.open(str(path)) as c:
        return [(float(f.time), f.to_ndarray(format="bgr24")) for f in c.decode(video=0)]


def test_stream_answers_each_frame_with_tracks(vclient: TestClient) -> None:
    with vclient.websocket_connect("/pose/stream", subprotocols=["darkpose"]) as ws:
        ready = ws.receive_json()
        assert ready["type"] == "ready"
        assert ready["limits"] == {
            "max_fps": 5.0,
            "max_frame_bytes": 3 * 1024 * 1024,
            "idle_timeout_s": 2.0,
        }
        answers = []
        for frame in crowd_frames(4):
            ws.send_bytes(jpeg(frame))
            answers.append(ws.receive_json())
    assert [a["type"] for a in answers] == ["frame"] * 4
    assert [a["frame"] for a in answers] == [0, 1, 2, 3]
    assert all(a["skipped"] == [] for a in answers)
    first = {p["track_id"] for p in answers[0]["persons"]}
    last = {p["track_id"] for p in answers[-1]["persons"]}
    assert first & last  # persons keep their ids


def test_newer_frames_replace_waiting_ones_and_every_frame_is_accounted_for(
    vclient: TestClient,
) -> None:
    """Frames sent without waiting: the server never queues more than the newest waiting
    frame; each frame number is either answered or reported skipped, once."""
    frames = [jpeg(f) for f in crowd_frames(8)]
    with vclient.websocket_connect("/pose/stream") as ws:
        assert ws.receive_json()["type"] == "ready"
        for data in frames:
            ws.send_bytes(data)
        seen: dict[int, str] = {}
        while len(seen) < len(frames):
            msg = ws.receive_json()
            assert msg["type"] == "frame", msg
            for s in msg["skipped"]:
                assert s["frame"] not in seen
                seen[s["frame"]] = s["reason"]
            assert msg["frame"] not in seen
            seen[msg["frame"]] = "answered"
    assert sorted(seen) == list(range(8))
    assert seen[0] == "answered"  # the first frame starts at once
    assert "rate" in seen.values()  # 8 frames at once: over stream_max_fps=5 (burst 5)
    assert set(seen.values()) <= {"answered", "stale", "rate"}


def test_an_invalid_frame_is_reported_and_the_stream_goes_on(vclient: TestClient) -> None:
    with vclient.websocket_connect("/pose/stream") as ws:
        ws.receive_json()
        ws.send_bytes(b"not an image")
        err = ws.receive_json()
        assert err["type"] == "error" and err["frame"] == 0
        assert err["error"]["code"] == "invalid_image"
        ws.send_text("not json")
        bad = ws.receive_json()
        assert (
            bad["error"]["code"] == "invalid_parameter" and "timestamp" in bad["error"]["message"]
        )
        ws.send_text(json.dumps({"timestamp": 1.5}))
        ws.send_bytes(jpeg(crowd_frames(1)[0]))
        ok = ws.receive_json()
        assert ok["type"] == "frame" and ok["frame"] == 1 and ok["timestamp"] == 1.5


def test_an_idle_stream_is_closed(vclient: TestClient) -> None:
    with vclient.websocket_connect("/pose/stream") as ws:
        ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_json()  # nothing sent: closed after stream_idle_timeout_s
    assert info.value.code == 1001


def test_api_keys_apply_to_streams() -> None:
    from darkpose.service.api import create_app

    key = "k" * 24
    app = create_app(video_settings(api_keys=key))
    with TestClient(app) as c:
        wait_ready_with_key(c, key)
        with c.websocket_connect("/pose/stream", subprotocols=["darkpose"]) as ws:
            msg = ws.receive_json()
            assert msg["type"] == "error" and msg["error"]["code"] == "unauthorized"
            with pytest.raises(WebSocketDisconnect) as info:
                ws.receive_json()
            assert info.value.code == 4401
        with c.websocket_connect("/pose/stream", subprotocols=["darkpose", "bearer." + key]) as ws:
            assert ws.accepted_subprotocol == "darkpose"
            assert ws.receive_json()["type"] == "ready"
        with c.websocket_connect("/pose/stream", headers={"X-API-Key": key}) as ws:
            assert ws.receive_json()["type"] == "ready"
        r = c.post("/pose/video", content=b"x")
        assert r.status_code == 401


def wait_ready_with_key(client: TestClient, key: str) -> None:
    wait_ready(client)  # /readyz is open


def test_concurrent_stream_cap_per_client(vclient: TestClient) -> None:
    with (
        vclient.websocket_connect("/pose/stream") as a,
        vclient.websocket_connect("/pose/stream") as b,
    ):
        a.receive_json()
        b.receive_json()
        with vclient.websocket_connect("/pose/stream") as c:
            msg = c.receive_json()
            assert msg["type"] == "error" and msg["error"]["code"] == "overloaded"
            assert "video_max_jobs_per_client" in msg["error"]["message"] and msg["retry_after"] > 0
            with pytest.raises(WebSocketDisconnect) as info:
                c.receive_json()
            assert info.value.code == 1013
        r = vclient.post("/pose/video", content=b"x" * 100)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"


@pytest.mark.slow
def test_video_websocket_and_cli_give_the_same_tracks(vclient: TestClient, tmp_path: Path) -> None:
    """The real clip through POST /pose/video, the WebSocket (a client that waits for each
    answer and sends the clip's timestamps) and darkpose infer: the same track ids per frame
    and the same keypoints."""
    video = vclient.post("/pose/video?stream=false", content=MMPOSE_CLIP.read_bytes()).json()[
        "frames"
    ]
    streamed = []
    with vclient.websocket_connect("/pose/stream") as ws:
        ws.receive_json()
        for ts, frame in clip_frames(MMPOSE_CLIP):
            ok, png = cv2.imencode(".png", frame)  # lossless: the decoded frames exactly
            ws.send_text(json.dumps({"timestamp": ts}))
            ws.send_bytes(png.tobytes())
            streamed.append(ws.receive_json())
    out = tmp_path / "frames.ndjson"
    env = serve_env(8000, **PINNED_ENV)  # the settings of the apps above
    subprocess.run(
        [sys.executable, "-m", "darkpose.service.cli", "infer", str(MMPOSE_CLIP), "--json",
         str(out), "--out", str(tmp_path / "annotated.mp4"), "--no-progress"],
        cwd=REPO, env=env, check=True, capture_output=True,
    )  # fmt: skip
    cli = [json.loads(line) for line in out.read_text().splitlines()]

    def tracks(frames: list[dict[str, Any]]) -> list[list[int]]:
        return [[p["track_id"] for p in f["persons"]] for f in frames]

    assert len(video) == len(streamed) == len(cli) == 5
    assert tracks(video) == tracks(streamed) == tracks(cli)
    for a, b, c in zip(video, streamed, cli, strict=True):
        for pa, pb, pc in zip(a["persons"], b["persons"], c["persons"], strict=True):
            assert pa["keypoints"] == pytest.approx(pb["keypoints"], abs=1e-3)
            assert pa["keypoints"] == pytest.approx(pc["keypoints"], abs=1e-3)
    with av.open(str(tmp_path / "annotated.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 5
