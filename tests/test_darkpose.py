"""The public Python face: ``from darkpose import PoseEstimator`` on every accepted input kind."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from darkpose import PoseEstimator, Poses
from darkpose.service.core.errors import InvalidImage, InvalidParameter
from darkpose.service.core.io import decode_image
from tests.conftest import IMAGES, KPT_ANN, MODELS, upright_and_sideways_jpeg

PHOTO = IMAGES / "000000211325.jpg"


#: These tests were written for YOLOX without the flip test at score 0.3; the default profile
#: is covered by tests/test_profiles.py.
PINNED: dict[str, Any] = {"detector": "yolox", "flip": False, "det_score_threshold": 0.3}


@pytest.fixture(scope="module")
def estimator() -> PoseEstimator:
    return PoseEstimator(model_dir=MODELS, providers="cpu", intra_op_threads=1, **PINNED)


def same_persons(a: Poses, b: Poses) -> None:
    assert len(a) == len(b) >= 1
    np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-4)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)


def test_every_input_kind_gives_the_same_persons(estimator: PoseEstimator) -> None:
    data = PHOTO.read_bytes()
    bgr = decode_image(data)
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    ref = estimator(PHOTO)
    assert ref.source == PHOTO.name and ref.image_size == (bgr.shape[1], bgr.shape[0])
    same_persons(ref, estimator(str(PHOTO)))
    same_persons(ref, estimator(data))
    same_persons(ref, estimator(bgr, channel_order="BGR"))
    same_persons(ref, estimator(rgb, channel_order="RGB"))
    same_persons(ref, estimator(Image.fromarray(rgb)))
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    same_persons(ref, estimator(rgba, channel_order="RGB"))


def test_a_colour_array_needs_its_channel_order(estimator: PoseEstimator) -> None:
    bgr = decode_image(PHOTO.read_bytes())
    with pytest.raises(InvalidImage, match="channel_order='BGR'"):
        estimator(bgr)
    with pytest.raises(InvalidParameter, match="channel_order: expected 'BGR' or 'RGB'"):
        estimator(bgr, channel_order="bgr")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter, match="only with an array"):
        estimator(PHOTO, channel_order="RGB")
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    assert isinstance(estimator(gray), Poses)  # one channel: no order to state


def test_default_channel_order_from_the_constructor(estimator: PoseEstimator) -> None:
    rgb_default = PoseEstimator(
        model_dir=MODELS, providers="cpu", intra_op_threads=1, channel_order="RGB", **PINNED
    )
    bgr = decode_image(PHOTO.read_bytes())
    same_persons(estimator(bgr, channel_order="BGR"), rgb_default(bgr[..., ::-1].copy()))


def test_results_to_coco_and_draw(estimator: PoseEstimator, tmp_path: Path) -> None:
    poses = estimator(PHOTO)
    results = poses.to_coco(image_id=211325)
    assert {r["file_name"] for r in results} == {PHOTO.name}
    json.dumps(results)
    assert len(COCO(str(KPT_ANN)).loadRes(results).getAnnIds()) == len(results)
    out = tmp_path / "overlay.png"
    overlay = poses.draw(out)
    assert overlay.shape == poses.image.shape and out.is_file()
    assert (np.abs(overlay.astype(int) - poses.image.astype(int)).sum(axis=2) > 60).mean() > 0.005
    first = poses[0]
    assert np.array_equal(first.keypoints, poses.keypoints[0]) and first.score == poses.scores[0]
    assert [p.score for p in poses] == [p.score for p in poses.persons] == poses.scores.tolist()


@pytest.mark.parametrize("name", ["overlay.txt", "overlay.notanimage"])
def test_draw_to_a_path_without_an_image_suffix_is_a_typed_error(tmp_path: Path, name: str) -> None:
    poses = Poses.empty(image=np.zeros((32, 48, 3), np.uint8))
    with pytest.raises(InvalidParameter, match="expected a suffix OpenCV can write"):
        poses.draw(tmp_path / name)
    assert not (tmp_path / name).exists()


def test_per_call_options(estimator: PoseEstimator) -> None:
    assert len(estimator(PHOTO, max_persons=1)) == 1
    with pytest.raises(InvalidParameter, match="got decoder"):
        estimator(PHOTO, decoder="argmax")


def test_exif_orientation_of_files_and_bytes(estimator: PoseEstimator) -> None:
    upright, sideways = upright_and_sideways_jpeg(PHOTO)
    a, b = estimator(upright), estimator(sideways)
    assert b.image_size == a.image_size and len(a) == len(b)
    assert estimator(sideways, exif_orientation=False).image_size == a.image_size[::-1]
    exif_im = Image.open(io.BytesIO(sideways))
    assert estimator(exif_im).image_size == a.image_size


def test_settings_keywords_override() -> None:
    from darkpose import Settings

    est = PoseEstimator(
        Settings(model_dir=MODELS, providers="cpu"), intra_op_threads=1, det_score_threshold=0.9
    )
    assert est.settings.pipeline.det_score_threshold == 0.9
    assert est.options.det_score_threshold == 0.9


def test_readme_python_one_liner_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's Python block, as written, on a coco-mini photo saved as ``photo.jpg``."""
    import re
    import shutil

    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    block = re.search(r"```python\n(from darkpose import PoseEstimator\n.*?)```", readme, re.S)
    assert block is not None, "expected the Python quickstart block in README.md"
    shutil.copy(IMAGES / "000000211325.jpg", tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DARKPOSE_PROVIDERS", "cpu")
    exec(block.group(1), {})  # noqa: S102
    assert capsys.readouterr().out.startswith("6 (6, 17, 3)")
    assert (tmp_path / "overlay.png").is_file()


def test_tiny_valid_image_has_no_persons(estimator: PoseEstimator) -> None:
    import cv2

    ok, png = cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))
    poses = estimator(png.tobytes())
    assert len(poses) == 0 and poses.image_size == (1, 1) and poses.to_coco() == []
