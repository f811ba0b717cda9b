"""POST /pose/video and /pose/stream on a real server (darkpose serve, uvicorn): the first
frames arrive before the video is processed to the end, a client that leaves stops the work,
and the WebSocket works over uvicorn's protocol with an API key subprotocol."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.api.conftest import ServerProcess, running_server
from tests.conftest import wait_until
from tests.video.conftest import crowd_frames, make_video

KEY = "video-test-key-0123456789"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server(
        env={
            "DARKPOSE_API_KEYS": KEY,
            "DARKPOSE_VIDEO_MAX_FRAMES": "200",
            "DARKPOSE_DEMO": "true",
        }
    ) as srv:
        yield srv


def metric(server: ServerProcess, name: str, kind: str = "video") -> float:
    text = httpx.get(server.base + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + "{") and f'kind="{kind}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def long_video() -> bytes:
    """40 frames (4 s at 10 frames/s), 320 × 224."""
    return make_video(crowd_frames(40))


@pytest.mark.slow
def test_first_frames_arrive_before_the_video_is_processed(
    server: ServerProcess, long_video: bytes
) -> None:
    before = metric(server, "darkpose_video_frames_total")
    headers = {"X-API-Key": KEY, "content-type": "video/mp4"}
    with httpx.stream(
        "POST", server.base + "/pose/video", content=long_video, headers=headers, timeout=120
    ) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert json.loads(next(lines))["type"] == "video"
        first = json.loads(next(lines))
        assert first["type"] == "frame" and first["frame"] == 0
        # the worker runs at most a few lines ahead of this reader: far from the end
        assert metric(server, "darkpose_video_frames_total") - before < 40
        rest = [json.loads(line) for line in lines if line]
    assert rest[-1]["type"] == "end" and rest[-1]["frames"] == 40
    assert metric(server, "darkpose_video_frames_total") - before == 40


@pytest.mark.slow
def test_a_client_that_leaves_stops_the_work(server: ServerProcess, long_video: bytes) -> None:
    before = metric(server, "darkpose_video_frames_total")
    headers = {"X-API-Key": KEY, "content-type": "video/mp4"}
    with httpx.stream(
        "POST", server.base + "/pose/video", content=long_video, headers=headers, timeout=120
    ) as r:
        lines = r.iter_lines()
        next(lines)
        next(lines)  # one frame answered, then the client goes away
    wait_until(
        lambda: metric(server, "darkpose_video_active") == 0, what="the video's work to stop"
    )
    assert metric(server, "darkpose_video_frames_total") - before < 40


@pytest.mark.slow
@pytest.mark.parametrize("query", ["?stream=false", "?render=true"])
def test_a_client_that_leaves_a_one_answer_video_stops_the_work(
    server: ServerProcess, long_video: bytes, query: str
) -> None:
    """The answers sent at the end (one JSON, the rendered video): a client that goes away
    while its video is being processed stops the work too."""
    before = metric(server, "darkpose_video_frames_total")
    head = (
        f"POST /pose/video{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\n"
        f"Content-Type: video/mp4\r\nContent-Length: {len(long_video)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode() + long_video)
        wait_until(
            lambda: metric(server, "darkpose_video_frames_total") > before,
            what="the video's first frame to be processed",
        )
    wait_until(
        lambda: metric(server, "darkpose_video_active") == 0, what="the video's work to stop"
    )
    assert metric(server, "darkpose_video_frames_total") - before < 40


def test_videos_need_the_api_key(server: ServerProcess) -> None:
    r = httpx.post(server.base + "/pose/video", content=b"x", timeout=10)
    assert r.status_code == 401


@pytest.mark.slow
def test_websocket_over_uvicorn_with_a_key_subprotocol(server: ServerProcess) -> None:
    websockets = pytest.importorskip("websockets.sync.client")
    import cv2

    url = f"ws://127.0.0.1:{server.port}/pose/stream"
    with websockets.connect(url, subprotocols=["darkpose", "bearer." + KEY]) as ws:
        assert ws.subprotocol == "darkpose"
        assert json.loads(ws.recv())["type"] == "ready"
        for frame in crowd_frames(2):
            ws.send(cv2.imencode(".jpg", frame)[1].tobytes())
            answer = json.loads(ws.recv())
            assert answer["type"] == "frame" and answer["persons"]
    with websockets.connect(url) as ws:
        msg = json.loads(ws.recv())
        assert msg["error"]["code"] == "unauthorized"
        with pytest.raises(Exception) as info:
            ws.recv()
        assert "4401" in str(info.value)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass  # the server still takes connections


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from pathlib import Path

    from tests.conftest import missing_requirement

    if not Path(CHROMIUM).exists():
        missing_requirement(f"{CHROMIUM} (Debian package chromium) is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_requirement("the playwright Python package is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _answered(page: object, at_least: int) -> None:
    page.wait_for_function(  # type: ignore[attr-defined]
        f"Number(document.body.dataset.answered || 0) >= {at_least}", timeout=120_000
    )


@pytest.mark.slow
def test_demo_page_in_headless_chromium(
    server: ServerProcess, browser: object, tmp_path: pytest.TempPathFactory
) -> None:
    """The demo page in a real browser: an image file, a video file and the (fake) webcam,
    each answered over the WebSocket with the API key as a subprotocol, skeletons drawn."""
    from pathlib import Path

    import cv2

    from tests.api.conftest import CROWD_IMAGE

    webm = Path(str(tmp_path)) / "clip.webm"
    webm.write_bytes(make_video(crowd_frames(20), codec="libvpx", container="webm"))
    page = browser.new_page()  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.base + "/demo")
    page.fill("#key", KEY)

    page.set_input_files("#file", str(CROWD_IMAGE))
    _answered(page, 1)
    assert int(page.evaluate("document.body.dataset.persons")) > 0
    h, w = cv2.imread(str(CROWD_IMAGE)).shape[:2]
    assert page.evaluate("[canvas.width, canvas.height]") == [w, h]  # the frame was drawn

    page.set_input_files("#file", str(webm))
    _answered(page, 3)
    assert "tracks:" in page.inner_text("#status")

    page.click("#webcam")
    _answered(page, 2)
    page.click("#stop")
    assert errors == []
