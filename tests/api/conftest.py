"""Fixtures of the HTTP API tests: real apps on the shared models, image bytes, a real uvicorn."""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import struct
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from darkpose.service.settings import Settings
from tests.conftest import IMAGES, MODELS, REPO, stop_process

warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

from fastapi.testclient import TestClient  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("filterwarnings", "ignore:Using `httpx` with `starlette.testclient`")


#: Images with several annotated persons (coco-mini).
CROWD_IMAGE = IMAGES / "000000129648.jpg"
PERSON_IMAGES = [IMAGES / f"{i:012d}.jpg" for i in (129648, 790, 211325, 227000)]


#: The API tests were written against YOLOX without the flip test at score 0.3 (the cheapest
#: to run); the default profile is covered by tests/test_profiles.py.  ``PINNED_ENV``: the same
#: as ``darkpose serve`` environment variables.
PINNED_SETTINGS: dict[str, Any] = {"detector": "yolox", "flip": False, "det_score_threshold": 0.3}
PINNED_ENV: dict[str, str] = {
    f"DARKPOSE_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
    for k, v in PINNED_SETTINGS.items()
}


def api_settings(**overrides: Any) -> Settings:
    """Settings for tests: shared models, CPU, small thread pools."""
    base: dict[str, Any] = {
        "model_dir": MODELS,
        "providers": "cpu",
        "intra_op_threads": 1,
        "inter_op_threads": 1,
        "max_image_bytes": 3 * 1024 * 1024,
        **PINNED_SETTINGS,
    }
    base.update(overrides)
    return Settings(**base)


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        r = client.get("/readyz")
        if r.status_code == 200:
            return
        last = r.json()
        if "failed" in str(last):
            break
        time.sleep(0.05)
    pytest.fail(f"expected the app ready within {timeout} s, got {last}")


@pytest.fixture(scope="package")
def client() -> Iterator[TestClient]:
    """One ready app (batching on) shared by the API tests."""
    from darkpose.service.api import create_app

    app = create_app(api_settings())
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="session")
def jpeg_bytes() -> bytes:
    return CROWD_IMAGE.read_bytes()


def imdecode(data: bytes) -> np.ndarray:
    """cv2.imdecode as BGR, failing loudly instead of returning None."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise RuntimeError("cv2.imdecode failed")
    return img


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, image)
    if not ok:
        raise RuntimeError(f"cv2.imencode({ext}) failed")
    return buf.tobytes()


def person_image_variant(kind: str) -> bytes:
    """The crowd image re-encoded as grayscale / RGBA / 16-bit PNG."""
    bgr = imdecode(CROWD_IMAGE.read_bytes())
    if kind == "gray":
        return encode(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    if kind == "rgba":
        return encode(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))
    if kind == "png16":
        return encode(bgr.astype(np.uint16) * 257)
    raise ValueError(kind)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return buf.getvalue()


def tiff_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="TIFF")
    return buf.getvalue()


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid-looking 1-bit PNG header declaring width × height, with a tiny IDAT (a few KB
    at most): refused by its header, never decoded."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    idat = zlib.compress(row * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --- a real uvicorn server in a subprocess -----------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response from ``s``: status, headers (lower-case names) and the body
    (``Content-Length`` bytes; without that header, everything up to the close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.1 (\d{3})", lines[0])
    if m is None:
        raise AssertionError(f"expected an HTTP/1.1 status line, got {lines[0]!r}")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    want = int(headers["content-length"]) if "content-length" in headers else None
    while want is None or len(body) < want:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(m.group(1)), headers, body


def serve_env(port: int, **env: str) -> dict[str, str]:
    """The environment of a test ``darkpose serve``: shared models, CPU, one thread each,
    127.0.0.1:``port``; ``env`` on top."""
    return {
        **os.environ,
        "DARKPOSE_MODEL_DIR": str(MODELS),
        "DARKPOSE_PROVIDERS": "cpu",
        "DARKPOSE_INTRA_OP_THREADS": "1",
        "DARKPOSE_INTER_OP_THREADS": "1",
        "DARKPOSE_HOST": "127.0.0.1",
        "DARKPOSE_PORT": str(port),
        **env,
    }


class ServerProcess:
    """``python -m darkpose.service.cli serve`` on 127.0.0.1:<free port>."""

    def __init__(
        self,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        log_level: str | None = "WARNING",
        args: list[str] | None = None,
        preexec_fn: Any = None,
    ) -> None:
        """``log_level=None``: no ``--log-level`` flag (the settings' level applies)."""
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full_env = serve_env(self.port, **(env or {}))
        self.log_path = log
        self._log = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "darkpose.service.cli",
                *(["--log-level", log_level] if log_level is not None else []),
                "serve",
                *(args or []),
            ],
            cwd=REPO,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )

    def log_text(self) -> str:
        """What the server logged so far (empty without ``log``)."""
        return self.log_path.read_text(errors="replace") if self.log_path is not None else ""

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"expected a running server, got exit code {self.proc.returncode}\n"
                    f"{self.log_text()}"
                )
            try:
                if httpx.get(self.base + "/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(
            f"expected the server ready within {timeout} s, got no 200 from /readyz\n"
            f"{self.log_text()}"
        )

    def terminate(self) -> int:
        """SIGTERM (SIGKILL after 30 s); the exit code."""
        try:
            return stop_process(self.proc)
        finally:
            if self._log is not subprocess.DEVNULL:
                self._log.close()  # type: ignore[union-attr]


@contextlib.contextmanager
def running_server(
    env: dict[str, str] | None = None,
    log: Path | None = None,
    log_level: str | None = "WARNING",
    args: list[str] | None = None,
) -> Iterator[ServerProcess]:
    """A :class:`ServerProcess` (same arguments) that is ready inside the block and
    terminated after it."""
    server = ServerProcess(env=env, log=log, log_level=log_level, args=args)
    try:
        server.wait_ready()
        yield server
    finally:
        server.terminate()
