"""HTC person detector through mmdet (optional extra; built with random weights in CI).

The tests that need mmdet skip with the reason when torch/mmengine/mmcv-with-ops/mmdet are not
importable (install them with ``.ci/install_mmdet.sh``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from darkpose.service.core.errors import InvalidImage, InvalidParameter, ModelError
from darkpose.service.core.types import Detections, Detector
from darkpose.service.runtime.htc import HtcDetector, mmdet_available, parse_test_scale
from tests.conftest import IMAGES, REPO

needs_mmdet = pytest.mark.skipif(
    not mmdet_available(),
    reason="optional mmdet extra not installed (torch + mmengine + mmcv built with ops + "
    "mmdet 3.3): run .ci/install_mmdet.sh",
)
SMALL = (512, 320)  # test scale for the CPU tests: same code path, ~4x fewer pixels


def test_serving_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import darkpose.service.runtime.htc, darkpose.service.runtime.chips\n"
        "import darkpose.service.runtime.fusion\n"
        "import darkpose.service.runtime.detector_build, darkpose.service.runtime.factory\n"
        "bad = [m for m in ('torch', 'mmdet', 'mmcv', 'mmengine') if m in sys.modules]\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "kwargs, error, needle",
    [
        ({}, ModelError, "expected a checkpoint"),
        ({"checkpoint": "/nonexistent/htc.pth"}, ModelError, "expected an existing file"),
        ({"random_weights": True, "score_threshold": 1.5}, InvalidParameter, "score_threshold"),
        ({"random_weights": True, "max_detections": 0}, InvalidParameter, "max_detections"),
        ({"random_weights": True, "test_scale": (10, 10)}, InvalidParameter, "test_scale"),
        ({"random_weights": True, "device": "tpu"}, InvalidParameter, "device"),
    ],
)
def test_invalid_arguments(kwargs: dict, error: type[Exception], needle: str) -> None:
    with pytest.raises(error, match=needle) as exc:
        HtcDetector(**kwargs)
    assert "expected" in str(exc.value) and "got" in str(exc.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1333x800", (1333, 800)),
        ("800x1333", (1333, 800)),
        ("1333X800", (1333, 800)),
        ("800", (1333, 800)),
        ("400", (667, 400)),
    ],
)
def test_parse_test_scale(text: str, expected: tuple[int, int]) -> None:
    assert parse_test_scale(text) == expected


def test_parse_test_scale_error() -> None:
    with pytest.raises(InvalidParameter, match="expected '1333x800'"):
        parse_test_scale("big")


@pytest.mark.skipif(mmdet_available(), reason="checks the error when mmdet is absent")
def test_clear_error_without_mmdet() -> None:
    with pytest.raises(ModelError, match="mmdet"):
        HtcDetector(random_weights=True)


# --------------------------------------------------------------------------- needs mmdet
def _image() -> np.ndarray:
    image = cv2.imread(str(sorted(IMAGES.glob("*.jpg"))[0]))
    return np.asarray(image, np.uint8)


def _well_formed(det: Detections, image: np.ndarray) -> None:
    h, w = image.shape[:2]
    b, s = det.boxes, det.scores
    assert b.dtype == np.float32 and s.dtype == np.float32
    assert b.shape == (len(s), 4)
    assert np.isfinite(b).all() and np.isfinite(s).all()
    assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
    assert (b[:, [0, 2]] >= 0).all() and (b[:, [0, 2]] <= w).all()
    assert (b[:, [1, 3]] >= 0).all() and (b[:, [1, 3]] <= h).all()
    assert ((s >= 0) & (s <= 1)).all() and (np.diff(s) <= 0).all()


@pytest.fixture(scope="module")
def htc() -> HtcDetector:
    return HtcDetector(random_weights=True, score_threshold=0.0, test_scale=SMALL, seed=1)


@pytest.fixture(scope="module")
def htc_person() -> HtcDetector:
    """Random weights with the person logit of every cascade stage raised by 8: the top
    detections become persons, so the person-box path (filter, clip, sort) sees boxes."""
    import torch

    det = HtcDetector(random_weights=True, score_threshold=0.0, test_scale=SMALL, seed=2)
    with torch.no_grad():
        for head in det.model.roi_head.bbox_head:
            head.fc_cls.bias[0] += 8.0
    return det


@needs_mmdet
@pytest.mark.mmdet
@pytest.mark.slow
def test_resolve_shipped_config() -> None:
    from darkpose.service.runtime.htc import mmdet_config_dir, resolve_config

    expected = mmdet_config_dir() / "htc" / "htc_r50_fpn_1x_coco.py"
    for name in ("htc_r50_fpn_1x_coco", "htc_r50_fpn_1x_coco.py", "htc/htc_r50_fpn_1x_coco"):
        assert resolve_config(name) == expected
    assert resolve_config(str(expected)) == expected
    with pytest.raises(ModelError, match="expected an existing file or a config name"):
        resolve_config("htc_r9000_coco")


@needs_mmdet
@pytest.mark.mmdet
@pytest.mark.slow
def test_random_htc_forward_on_coco_mini(htc: HtcDetector) -> None:
    assert isinstance(htc, Detector)
    assert type(htc.model).__name__ == "HybridTaskCascade"
    assert htc.model.roi_head.with_semantic and not htc.model.roi_head.with_mask
    image = _image()
    det = htc.detect(image)
    _well_formed(det, image)  # possibly zero boxes: random weights rarely rank persons first
    # random weights: scores near 1/81 (softmax over 80 classes + background), not above 0.5
    assert (det.scores < 0.5).all()


@needs_mmdet
@pytest.mark.mmdet
@pytest.mark.slow
def test_person_boxes_path(htc_person: HtcDetector) -> None:
    image = _image()
    det = htc_person.detect(image)
    _well_formed(det, image)
    assert 0 < len(det) <= 100 and (det.scores > 0.5).all()
    # deterministic on CPU
    again = htc_person.detect(image)
    np.testing.assert_allclose(again.boxes, det.boxes, rtol=1e-5, atol=1e-3)
    htc_person.score_threshold = 0.99
    try:
        assert len(htc_person.detect(image)) < len(det) or (det.scores >= 0.99).all()
    finally:
        htc_person.score_threshold = 0.0


@needs_mmdet
@pytest.mark.mmdet
@pytest.mark.slow
def test_checkpoint_round_trip(htc_person: HtcDetector, tmp_path: Path) -> None:
    import torch

    htc = htc_person
    ckpt = tmp_path / "htc_random.pth"
    torch.save({"state_dict": htc.model.state_dict(), "meta": {"epoch": 0}}, ckpt)
    loaded = HtcDetector(config=htc.config_path, checkpoint=ckpt, score_threshold=0.0,
                         test_scale=SMALL, seed=123)  # fmt: skip
    image = _image()
    a, b = htc.detect(image), loaded.detect(image)
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(b.boxes, a.boxes, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(b.scores, a.scores, rtol=1e-4, atol=1e-6)
    with pytest.raises(InvalidImage, match="expected BGR uint8"):
        loaded.detect(np.zeros((8, 8), np.uint8))


@needs_mmdet
@pytest.mark.mmdet
@pytest.mark.slow
def test_htc_through_config_string() -> None:
    from darkpose.service.runtime.detector_build import build_detector_from_config
    from darkpose.service.settings import Settings

    s = Settings(providers="cpu", det_score_threshold=0.0)  # type: ignore[call-arg]
    det = build_detector_from_config(
        "htc(config=htc-without-semantic_r50_fpn_1x_coco, random=1, scale=320)", s
    )
    assert isinstance(det, HtcDetector) and not det.model.roi_head.with_semantic
    _well_formed(det.detect(_image()), _image())
    with pytest.raises(ModelError, match="expected a two-stage model"):
        HtcDetector(config="retinanet_r50_fpn_1x_coco", random_weights=True)
