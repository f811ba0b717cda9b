"""PoseEstimator.track: a video path or an iterable of images in, tracked poses out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from darkpose.estimator import TrackedPoses
from darkpose.service.core.errors import InvalidParameter
from tests.conftest import MODELS
from tests.video.conftest import av


@pytest.fixture(scope="module")
def estimator():  # type: ignore[no-untyped-def]
    from darkpose import PoseEstimator

    return PoseEstimator(model_dir=MODELS, providers="cpu", intra_op_threads=1)


def test_track_a_video_path_and_the_same_frames_as_arrays(
    estimator, crowd_mp4: bytes, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "clip.mp4"
    path.write_bytes(crowd_mp4)
    from_path = list(estimator.track(path))
    with av.open(str(path)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    from_arrays = list(estimator.track(iter(decoded), fps=10.0, channel_order="RGB"))
    assert len(from_path) == len(from_arrays) == 12
    assert all(isinstance(t, TrackedPoses) for t in from_path)
    assert [t.frame for t in from_path] == list(range(12))
    assert from_path[1].timestamp == pytest.approx(0.1) and from_path[0].detected
    assert [t.track_ids for t in from_path] == [t.track_ids for t in from_arrays]
    for a, b in zip(from_path, from_arrays, strict=True):
        assert np.allclose(a.keypoints, b.keypoints, atol=1e-3)
        assert len(a.track_ids) == len(a) and a.source == "clip.mp4" and b.source is None
    assert from_path[-1].draw().shape == (224, 320, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fps": 0}, "fps: expected a number > 0"),
        ({"det_every": 0}, "det_every: expected an int >= 1"),
        ({"colour": 1}, "options: expected names among"),
    ],
)
def test_track_argument_errors(estimator, kwargs: dict, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameter, match=message):
        next(estimator.track([np.zeros((32, 32), np.uint8)], **kwargs))


def test_demo_is_off_by_default() -> None:
    from fastapi.testclient import TestClient

    from darkpose.service.api import create_app
    from tests.api.conftest import api_settings

    client = TestClient(create_app(api_settings()))  # no lifespan: no models needed
    assert client.get("/demo").status_code == 404
    page = TestClient(create_app(api_settings(demo=True))).get("/demo")
    assert page.status_code == 200 and "/pose/stream" in page.text
    assert "__SKELETON__" not in page.text and "[15, 13]" in page.text
