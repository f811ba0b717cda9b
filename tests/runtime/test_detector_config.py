"""Detector configuration strings: parsing (round trip, errors) and building real detectors."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darkpose.service.core.errors import InvalidParameter, ModelError
from darkpose.service.core.types import Detector
from darkpose.service.runtime.chips import MultiScaleChipDetector, ScaledDetector
from darkpose.service.runtime.detector_build import build_detector_from_config
from darkpose.service.runtime.detector_config import (
    ChipsConfig,
    DetectorConfig,
    FusedConfig,
    HtcConfig,
    OnnxConfig,
    YoloxConfig,
    parse_detector_config,
    split_configs,
)
from darkpose.service.runtime.detectors import YoloxDetector
from darkpose.service.runtime.fusion import FusedDetector
from darkpose.service.runtime.htc import mmdet_available
from darkpose.service.settings import Settings
from tests.conftest import IMAGES, MODELS


@pytest.mark.parametrize(
    "text, expected",
    [
        ("yolox", YoloxConfig()),
        (" YOLOX ", YoloxConfig()),
        ("htc", HtcConfig()),
        ("chips(yolox)", ChipsConfig(detector=YoloxConfig())),
        ("yolox@chips", YoloxConfig(variant="chips")),
        ("yolox@2x", YoloxConfig(variant=2.0)),
        ("yolox@2", YoloxConfig(variant=2.0)),
        (
            "fused(yolox@1x, yolox@chips, htc)",
            FusedConfig(
                detectors=[YoloxConfig(variant=1.0), YoloxConfig(variant="chips"), HtcConfig()]
            ),
        ),
        (
            "chips(yolox(score=0.1), scales=fit/2/3, chip=256, ranges=40:inf/0:120/0:60)",
            ChipsConfig(
                detector=YoloxConfig(score=0.1),
                scales=("fit", 2.0, 3.0),
                chip=256,
                ranges=((40.0, math.inf), (0.0, 120.0), (0.0, 60.0)),
            ),
        ),
        (
            "htc(config=/a/b/htc.py,checkpoint=x.pth)@0.5x",
            HtcConfig(config="/a/b/htc.py", checkpoint="x.pth", variant=0.5),
        ),
        ("onnx(model=x.onnx, nms=0.5)", OnnxConfig(model="x.onnx", nms=0.5)),
    ],
)
def test_parse(text: str, expected: DetectorConfig) -> None:
    spec = parse_detector_config(text)
    assert spec == expected
    assert parse_detector_config(str(spec)) == spec
    # the same tree as JSON (what the text form is short for)
    assert parse_detector_config(spec.model_dump_json()) == spec
    assert parse_detector_config(spec.model_dump()) == spec


def _specs() -> st.SearchStrategy[DetectorConfig]:
    leaf = st.one_of(
        st.builds(
            YoloxConfig,
            score=st.sampled_from([None, 0.2]),
            variant=st.sampled_from([None, "chips", 2.0, 0.5]),
        ),
        st.builds(
            HtcConfig,
            score=st.sampled_from([None, 0.2]),
            variant=st.sampled_from([None, "chips", 2.0, 0.5]),
        ),
    )

    def extend(children: st.SearchStrategy[DetectorConfig]) -> st.SearchStrategy[DetectorConfig]:
        chips = st.builds(
            ChipsConfig,
            detector=children,
            chip=st.sampled_from([512, 256]),
            stride=st.sampled_from([384, 128]),
        )
        fused = st.builds(
            FusedConfig,
            detectors=st.lists(children, min_size=1, max_size=3),
            iou=st.sampled_from([0.55, 0.6]),
        )
        return chips | fused

    return st.recursive(leaf, extend, max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(_specs(), st.sampled_from(["", " ", "  "]))
def test_round_trip(spec: DetectorConfig, pad: str) -> None:
    text = str(spec).replace(",", "," + pad).replace("(", "(" + pad)
    assert parse_detector_config(pad + text + pad) == spec
    assert parse_detector_config(spec.model_dump_json()) == spec
    # a list of configs splits back at depth 0
    assert split_configs(f"{spec},yolox , {spec}") == [str(spec), "yolox", str(spec)]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "expected e.g."),
        ("   ", "expected e.g."),
        ("yolo", "expected a detector name"),
        ("fused(yolox,retina)", "got 'retina'"),
        ("chips(yolox", "expected ',' or ')'"),
        ("chips(yolox))", "expected end of the config"),
        ("chips()", "exactly one detector"),
        ("chips(yolox,htc)", "exactly one detector"),
        ("fused()", "at least one detector"),
        ("yolox(htc)", "no sub-detectors"),
        ("yolox@", "expected a variant"),
        ("yolox@huge", "expected a variant"),
        ("yolox@-2x", "expected a variant"),
        ("yolox(colour=red)", "expected an option of yolox"),
        ("chips(yolox, chip=)", "expected a value for chip"),
        ("chips(yolox, chip=1, chip=2)", "chip given once"),
        ("yolox htc", "expected end of the config"),
        ("=yolox", "expected a detector name"),
    ],
)
def test_parse_errors(text: str, needle: str) -> None:
    with pytest.raises(InvalidParameter, match="expected") as exc:
        parse_detector_config(text)
    assert needle in exc.value.message and "got" in exc.value.message


@pytest.mark.parametrize("text", ["a,(b", "a),b", "a,,b", ","])
def test_split_errors(text: str) -> None:
    with pytest.raises(InvalidParameter, match="expected"):
        split_configs(text)


@pytest.fixture(scope="module")
def settings_() -> Settings:
    return Settings(model_dir=MODELS, providers="cpu", intra_op_threads=1)  # type: ignore[call-arg]


def test_build_tree_shares_leaves(settings_: Settings) -> None:
    det = build_detector_from_config("fused(yolox@1x, yolox@chips, yolox@2x)", settings_)
    assert isinstance(det, FusedDetector) and isinstance(det, Detector)
    one, chips, two = det.detectors
    assert isinstance(one, YoloxDetector)
    assert isinstance(chips, MultiScaleChipDetector) and chips.detector is one
    assert isinstance(two, ScaledDetector) and two.detector is one and two.factor == 2.0
    image = np.asarray(cv2.imread(str(sorted(IMAGES.glob("*.jpg"))[0])), np.uint8)
    out = det.detect(image)
    assert out.boxes.shape[1:] == (4,) and np.isfinite(out.boxes).all()


def test_build_options(settings_: Settings) -> None:
    det = build_detector_from_config(
        "chips(yolox(score=0.05, nms=0.5), scales=fit/2/3, chip=256, stride=128, "
        "ranges=40:inf/0:120/0:60, nms=0.6, margin=3)",
        settings_,
    )
    assert isinstance(det, MultiScaleChipDetector)
    assert det.scales == ("fit", 2.0, 3.0)
    assert det.chip_size == 256 and det.stride == 128 and det.nms_iou == 0.6
    assert det.valid_ranges[0] == (40.0, float("inf"))
    assert isinstance(det.detector, YoloxDetector)
    assert det.detector.score_threshold == 0.05 and det.detector.nms_iou == 0.5
    fused = build_detector_from_config("fused(yolox, yolox@2x, weights=2/1, conf=max)", settings_)
    assert isinstance(fused, FusedDetector)
    assert fused.weights == [2.0, 1.0] and fused.conf_type == "max"


def test_nms_setting_applies_where_the_card_and_the_config_are_silent() -> None:
    s = Settings(model_dir=MODELS, providers="cpu", intra_op_threads=1, det_nms_iou=0.4)  # type: ignore[call-arg]
    for name in ("yolox", "picodet"):  # neither shipped card sets detector.nms_iou
        leaf = build_detector_from_config(name, s)
        assert getattr(leaf, "nms_iou", None) == pytest.approx(0.4), name
    given = build_detector_from_config("yolox(nms=0.5)", s)
    assert getattr(given, "nms_iou", None) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("yolox(score=2)", "score"),
        ("yolox(score=abc)", "score"),
        ("chips(yolox, chip=-5)", "chip"),
        ("chips(yolox, scales=1/zero)", "scales"),
        ("chips(yolox, ranges=1-2)", "ranges"),
        ("chips(yolox, scales=1/2, ranges=0:10)", "valid_ranges"),
        ("fused(yolox, weights=1/x)", "weights"),
        ("fused(yolox, yolox@2x, weights=1)", "weights"),
        ("fused(yolox, conf=median)", "conf_type"),
        ("htc(random=maybe)", "random"),
    ],
)
def test_build_invalid_options(settings_: Settings, text: str, needle: str) -> None:
    with pytest.raises(InvalidParameter, match=needle) as exc:
        build_detector_from_config(text, settings_)
    assert "expected" in exc.value.message


def test_build_missing_model(settings_: Settings) -> None:
    with pytest.raises(ModelError, match="expected an existing ONNX file"):
        build_detector_from_config("yolox(model=nope.onnx)", settings_)


def test_htc_without_checkpoint_is_a_model_error(settings_: Settings) -> None:
    # no checkpoint and no random=1: refused before anything heavy is imported
    with pytest.raises(ModelError, match="expected a checkpoint"):
        build_detector_from_config("htc", settings_)
    with pytest.raises(ModelError, match="expected an existing file"):
        build_detector_from_config("htc(checkpoint=/nonexistent/htc.pth)", settings_)


@pytest.mark.skipif(mmdet_available(), reason="checks the error when mmdet is absent")
def test_htc_without_mmdet_is_a_model_error(settings_: Settings) -> None:
    with pytest.raises(ModelError, match="mmdet"):
        build_detector_from_config("htc(random=1)", settings_)


def test_factory_delegates_configs(settings_: Settings) -> None:
    from darkpose.service.runtime.factory import build_detector

    chips = build_detector(settings_.model_copy(update={"detector": "chips(yolox)"}))
    assert isinstance(chips, MultiScaleChipDetector)
    yolox = settings_.model_copy(update={"detector": "yolox"})  # the default profile's: picodet
    assert isinstance(build_detector(yolox), YoloxDetector)
    with pytest.raises(InvalidParameter, match="got 'retina'"):
        build_detector(settings_.model_copy(update={"detector": "retina"}))
