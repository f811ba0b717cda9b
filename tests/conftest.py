"""Shared fixtures: paths to the read-only assets in ../shared."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

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
    "darkpose_work_running",
    "darkpose_persons_per_image",
    "darkpose_model_info",
)
#: Set to 1 by ``.ci/run``: a missing external tool (promtool, prometheus, hadolint,
#: docker-compose) or an unreachable download fails the tests instead of skipping them.
REQUIRE_TOOLS_ENV = "DARKPOSE_REQUIRE_TOOLS"


def missing_requirement(reason: str) -> NoReturn:
    """Skip the test for ``reason`` (something outside Python is absent), or fail it when
    ``DARKPOSE_REQUIRE_TOOLS=1`` (CI, which installs everything, must never lose these tests)."""
    import pytest

    if os.environ.get(REQUIRE_TOOLS_ENV, "") not in ("", "0"):
        pytest.fail(f"{reason} ({REQUIRE_TOOLS_ENV}=1 makes this a failure)")
    pytest.skip(f"{reason} (set {REQUIRE_TOOLS_ENV}=1 to fail instead)")


def wait_until(
    predicate: Callable[[], object], timeout: float = 30.0, what: str = "a condition"
) -> None:
    """Poll ``predicate`` (state: a metric, a log line, an event; not time) until it is true,
    or fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"expected {what} within {timeout} s, got it false")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM ``proc`` if it still runs, wait up to ``timeout`` s, then SIGKILL; its exit code."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout)


KPT_ANN = COCO_MINI / "annotations" / "person_keypoints_train2017.json"
IMAGES = COCO_MINI / "train2017"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"expected the shared assets at {SHARED}, got nothing there")
    return SHARED


def upright_and_sideways_jpeg(path: Path, quality: int = 95) -> tuple[bytes, bytes]:
    """A real phone-style pair made from a coco-mini image: (the photo re-encoded upright, the
    same photo stored rotated 90° counter-clockwise with EXIF Orientation=6, "rotate 90° CW to
    display").  Both are JPEGs written by Pillow at ``quality``."""
    import io

    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    upright, sideways = io.BytesIO(), io.BytesIO()
    Image.fromarray(rgb).save(upright, "JPEG", quality=quality)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.ascontiguousarray(np.rot90(rgb, k=1))
    Image.fromarray(stored).save(sideways, "JPEG", quality=quality, exif=exif.tobytes())
    return upright.getvalue(), sideways.getvalue()


def match_persons(
    a: list[dict[str, object]], b: list[dict[str, object]], min_score: float = 0.3
) -> list[float]:
    """Per person of ``a`` (COCO results of one image), the mean distance in px between its
    confident keypoints and those of the nearest person of ``b`` (by box centre)."""
    import numpy as np

    def centre(r: dict[str, object]) -> np.ndarray:
        x, y, w, h = (float(v) for v in r["bbox"])  # type: ignore[attr-defined]
        return np.array([x + w / 2, y + h / 2])

    out = []
    for ra in a:
        rb = min(b, key=lambda r: float(np.linalg.norm(centre(r) - centre(ra))))
        ka = np.asarray(ra["keypoints"], float).reshape(-1, 3)
        kb = np.asarray(rb["keypoints"], float).reshape(-1, 3)
        ok = (ka[:, 2] > min_score) & (kb[:, 2] > min_score)
        out.append(
            float(np.linalg.norm(ka[ok, :2] - kb[ok, :2], axis=1).mean()) if ok.any() else 0.0
        )
    return out


#: A test file needs the development assets in ../shared when it (or a conftest.py between it
#: and tests/) names one of these.
_NEEDS_SHARED = re.compile(
    r"\b(SHARED|MODELS|COCO_MINI|GOLDEN|POSE_ONNX|YOLOX_ONNX|KPT_ANN|IMAGES|CROWD_IMAGE"
    r"|PERSON_IMAGES|shared_dir)\b"
)
_TESTS = Path(__file__).resolve().parent
_without_shared: list[str] = []


def _needs_shared(path: Path) -> bool:
    texts = [path]
    for parent in path.parents:
        if parent == _TESTS or _TESTS not in parent.parents:
            break
        texts.append(parent / "conftest.py")
    return any(p.is_file() and _NEEDS_SHARED.search(p.read_text()) for p in texts)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Without ../shared (a clone with nothing beside it), the test files that need its models,
    images or fixtures are not collected; the summary says how many and why."""
    if SHARED.is_dir() or collection_path.suffix != ".py":
        return None
    if collection_path.name.startswith("test_") and _needs_shared(collection_path):
        _without_shared.append(str(collection_path.relative_to(_TESTS.parent)))
        return True
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _without_shared:
        terminalreporter.write_line(
            f"skipped {len(_without_shared)} test files: they need the development assets "
            f"(models, COCO images, fixtures) at {SHARED}, which does not exist"
        )
