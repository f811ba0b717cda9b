"""Pipeline on the real shared models: batching, flip, ensemble, COCO output, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from darkpose.service.core.codec import decode_heatmaps
from darkpose.service.core.errors import InvalidImage, InvalidParameter, ModelError
from darkpose.service.core.pipeline import (
    Pipeline,
    PipelineOptions,
    PoseResult,
    too_small_for_person,
)
from darkpose.service.core.types import F32, ModelSpec
from darkpose.service.runtime.detectors import YoloxDetector
from darkpose.service.runtime.pose import OnnxPoseModel
from tests.conftest import IMAGES, KPT_ANN, POSE_ONNX, YOLOX_ONNX
from tests.runtime.onnx_fixtures import CountingPose, perturbed, tiny_pose_model

CROWD = IMAGES / "000000370162.jpg"


class DecodedPose:
    """A pose model whose output is already decoded (N, K, 3): the real network + DARK decode."""

    def __init__(self, inner: OnnxPoseModel) -> None:
        self.inner = inner
        self.spec = ModelSpec(decoded_output=True)

    def infer(self, batch: F32) -> F32:
        coords, scores = decode_heatmaps(self.inner.infer(batch), method="dark", blur_kernel=11)
        return np.concatenate([coords, scores[..., None]], axis=2).astype(np.float32)


@pytest.fixture(scope="module")
def pose() -> OnnxPoseModel:
    return OnnxPoseModel(POSE_ONNX, providers="cpu", intra_op_threads=1)


@pytest.fixture(scope="module")
def detector() -> YoloxDetector:
    return YoloxDetector(YOLOX_ONNX, providers="cpu", intra_op_threads=1)


@pytest.fixture(scope="module")
def pipeline(detector: YoloxDetector, pose: OnnxPoseModel) -> Pipeline:
    return Pipeline(detector, pose)


@pytest.fixture(scope="module")
def crowd() -> np.ndarray:
    img = cv2.imread(str(CROWD))
    assert img is not None
    return img


@pytest.fixture(scope="module")
def gt() -> tuple[np.ndarray, list[dict[str, Any]]]:
    ann = json.loads(KPT_ANN.read_text())
    anns = [
        a
        for a in ann["annotations"]
        if a["image_id"] == 370162 and a["num_keypoints"] > 0 and not a["iscrowd"]
    ]
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
    return boxes.astype(np.float32), anns


def test_end_to_end_on_a_crowd_image(pipeline: Pipeline, crowd: np.ndarray) -> None:
    res = pipeline(crowd, image_id=370162)
    assert isinstance(res, PoseResult)
    assert res.image_size == (640, 400)
    assert len(res.persons) >= 6
    assert set(res.timings) == {"detect", "crop", "pose", "decode", "postprocess", "total"}
    assert all(v >= 0 for v in res.timings.values())
    assert res.timings["total"] >= res.timings["pose"] + res.timings["detect"]
    scores = [p.score for p in res.persons]
    assert scores == sorted(scores, reverse=True)
    for p in res.persons:
        assert p.keypoints.shape == (17, 3)
        # confident keypoints lie near their box
        conf = p.keypoints[p.keypoints[:, 2] > 0.5]
        x1, y1, x2, y2 = p.bbox
        pad = 0.25 * max(x2 - x1, y2 - y1)
        assert np.all((conf[:, 0] > x1 - pad) & (conf[:, 0] < x2 + pad))
        assert np.all((conf[:, 1] > y1 - pad) & (conf[:, 1] < y2 + pad))


def test_coco_results_format_and_loadres(pipeline: Pipeline, crowd: np.ndarray) -> None:
    from pycocotools.coco import COCO

    res = pipeline(crowd, image_id=370162)
    dets = res.to_coco()
    assert dets and all(d["image_id"] == 370162 and d["category_id"] == 1 for d in dets)
    d0, p0 = dets[0], res.persons[0]
    assert len(d0["keypoints"]) == 51
    x1, y1, x2, y2 = p0.bbox
    np.testing.assert_allclose(d0["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=0.01)
    coco = COCO(str(KPT_ANN))
    loaded = coco.loadRes(dets)
    assert len(loaded.getAnnIds()) == len(dets)


def test_one_pose_call_per_image_with_and_without_flip(
    detector: YoloxDetector, pose: OnnxPoseModel, crowd: np.ndarray
) -> None:
    counting = CountingPose(pose)
    pipe = Pipeline(detector, counting, PipelineOptions(flip=False))
    n = len(pipe(crowd).persons)
    n_boxes = counting.calls[0]
    assert counting.calls == [n_boxes] and n_boxes >= n >= 6
    pipe(crowd, PipelineOptions(flip=True))
    assert counting.calls == [n_boxes, 2 * n_boxes]


def test_multi_scale_test_is_the_median_of_the_padding_passes_in_one_call(
    pose: OnnxPoseModel, crowd: np.ndarray, gt: tuple[np.ndarray, Any]
) -> None:
    boxes, _ = gt
    boxes = boxes[:4]
    counting = CountingPose(pose)
    pipe = Pipeline(None, counting)
    plain = PipelineOptions(flip=True, soft_nms_sigma=0.0, oks_nms_threshold=1.0)
    singles = [pipe(crowd, plain.replace(box_padding=p), boxes) for p in (1.25, 1.1, 1.4)]
    counting.calls.clear()
    multi = plain.replace(box_padding=1.25, test_paddings=(1.1, 1.4))
    assert multi.crops_per_person == 6
    assert multi.max_crops == 6 * multi.max_persons
    got = pipe(crowd, multi, boxes)
    assert counting.calls == [6 * len(boxes)]  # every padding and its mirror in one call
    stage = pipe.run_models(crowd, multi, boxes)
    reused = pipe.finish(stage, multi)
    for k in range(len(boxes)):
        each = [_by_box(r, boxes[k]) for r in singles]
        xy = np.median(np.stack([e[:, :2] for e in each]), axis=0)
        score = np.mean(np.stack([e[:, 2] for e in each]), axis=0)
        for result in (got, reused):
            kp = _by_box(result, boxes[k])
            np.testing.assert_allclose(kp[:, :2], xy, atol=1e-3)
            np.testing.assert_allclose(kp[:, 2], np.clip(score, 0, 1), atol=1e-5)
    # the same padding three times is the plain answer
    same = pipe(crowd, plain.replace(test_paddings=(1.25, 1.25)), boxes)
    for k in range(len(boxes)):
        np.testing.assert_allclose(
            _by_box(same, boxes[k]), _by_box(singles[0], boxes[k]), atol=1e-4
        )


def _by_box(result: PoseResult, box: np.ndarray) -> np.ndarray:
    """The keypoints (K, 3) of the person of ``result`` cropped from ``box``."""
    for person in result.persons:
        if np.allclose(person.bbox, box, atol=1e-3):
            return np.asarray(person.keypoints)
    raise AssertionError(f"no person for box {box}")


def test_stage_reuse_matches_direct_calls(
    pipeline: Pipeline, crowd: np.ndarray, gt: tuple[np.ndarray, Any]
) -> None:
    boxes, _ = gt
    stage = pipeline.run_models(crowd, PipelineOptions(flip=True), boxes)
    for opts in (
        PipelineOptions(decode="argmax"),
        PipelineOptions(decode="dark", flip=True),
        PipelineOptions(decode="standard", flip=True, flip_shift=False),
    ):
        direct = pipeline(crowd, opts, boxes)
        reused = pipeline.finish(stage, opts)
        assert len(direct.persons) == len(reused.persons)
        for a, b in zip(direct.persons, reused.persons, strict=True):
            np.testing.assert_allclose(a.keypoints, b.keypoints, rtol=1e-5, atol=1e-4)
    # flip changes the answer, and the shift matters
    a = pipeline.finish(stage, PipelineOptions(flip=False)).persons[0].keypoints
    b = pipeline.finish(stage, PipelineOptions(flip=True)).persons[0].keypoints
    c = pipeline.finish(stage, PipelineOptions(flip=True, flip_shift=False)).persons[0].keypoints
    assert not np.allclose(a, b) and not np.allclose(b, c)
    no_flip_stage = pipeline.run_models(crowd, PipelineOptions(flip=False), boxes)
    with pytest.raises(InvalidParameter, match="expected a stage computed with flip=True"):
        pipeline.finish(no_flip_stage, PipelineOptions(flip=True))


def test_decode_methods_differ_but_agree_roughly(
    pipeline: Pipeline, crowd: np.ndarray, gt: tuple[np.ndarray, Any]
) -> None:
    boxes, _ = gt
    opts = PipelineOptions(oks_nms_threshold=1.0)  # the same persons for every decoder
    kp = {
        m: np.stack([p.keypoints for p in pipeline(crowd, opts.replace(decode=m), boxes).persons])
        for m in ("argmax", "standard", "dark")
    }
    assert kp["argmax"].shape == kp["dark"].shape
    assert not np.allclose(kp["argmax"][..., :2], kp["dark"][..., :2])
    conf = kp["dark"][..., 2] > 0.3
    # heatmap stride is 4 crop px; DARK moves a keypoint by less than one heatmap px
    diff = np.abs(kp["argmax"][..., :2] - kp["dark"][..., :2]).max(axis=-1)[conf]
    assert np.median(diff) < 10


def test_gt_boxes_need_no_detector(pose: OnnxPoseModel, crowd: np.ndarray, gt: Any) -> None:
    boxes, anns = gt
    pipe = Pipeline(None, pose)
    res = pipe(crowd, boxes=boxes, box_scores=np.ones(len(boxes)))
    assert 1 <= len(res.persons) <= len(boxes)
    assert res.timings["detect"] < 0.5
    with pytest.raises(InvalidParameter, match="this pipeline has no detector"):
        pipe(crowd)


def test_ensemble_same_model_twice_is_identical(
    pose: OnnxPoseModel, crowd: np.ndarray, gt: Any
) -> None:
    boxes, _ = gt
    single = Pipeline(None, pose)(crowd, boxes=boxes)
    double = Pipeline(None, [pose, pose])(crowd, boxes=boxes)
    assert len(single.persons) == len(double.persons)
    for a, b in zip(single.persons, double.persons, strict=True):
        np.testing.assert_allclose(a.keypoints, b.keypoints, rtol=1e-6, atol=1e-5)


def test_ensemble_with_a_perturbed_copy_differs(
    tmp_path: Path, pose: OnnxPoseModel, crowd: np.ndarray, gt: Any
) -> None:
    boxes, _ = gt
    other = OnnxPoseModel(perturbed(tmp_path / "p.onnx", scale=1.3), providers="cpu")
    single = Pipeline(None, pose).run_models(crowd, boxes=boxes)
    mixed = Pipeline(None, [pose, other]).run_models(crowd, boxes=boxes)
    alone = Pipeline(None, other).run_models(crowd, boxes=boxes)
    assert not np.allclose(single.outputs, mixed.outputs)
    # the ensemble averages heatmaps before decoding
    np.testing.assert_allclose(mixed.outputs, (single.outputs + alone.outputs) / 2, atol=1e-5)


def test_ensemble_rejects_incompatible_models(tmp_path: Path, pose: OnnxPoseModel) -> None:
    tiny = OnnxPoseModel(tiny_pose_model(tmp_path / "t.onnx"), providers="cpu")
    with pytest.raises(ModelError, match="expected equal heatmap sizes"):
        Pipeline(None, [pose, tiny])
    with pytest.raises(ModelError, match="expected at least one pose model"):
        Pipeline(None, [])


def test_decoded_output_models_skip_decoding(
    pose: OnnxPoseModel, crowd: np.ndarray, gt: Any
) -> None:
    boxes, _ = gt
    heat = Pipeline(None, pose)(crowd, PipelineOptions(decode="dark", flip=False), boxes)
    decoded = Pipeline(None, DecodedPose(pose))
    dec = decoded(crowd, PipelineOptions(flip=False), boxes)  # the card's decode (dark)
    assert decoded.resolve_options().decode == "dark"
    assert len(heat.persons) == len(dec.persons)
    for a, b in zip(heat.persons, dec.persons, strict=True):
        np.testing.assert_allclose(a.keypoints, b.keypoints, rtol=1e-5, atol=1e-3)
    flipped = Pipeline(None, DecodedPose(pose))(crowd, PipelineOptions(flip=True), boxes)
    assert len(flipped.persons) >= 1


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (PipelineOptions(decode="argmax"), "decode: expected 'dark' (pose model"),
        (PipelineOptions(blur_kernel=3), "blur_kernel: expected 11 (pose model"),
    ],
)
def test_decoded_output_model_refuses_another_decode(
    pose: OnnxPoseModel, crowd: np.ndarray, gt: Any, options: PipelineOptions, needle: str
) -> None:
    """The graph decoded with its card's codec: asking for another one is a 422, not ignored."""
    boxes, _ = gt
    with pytest.raises(InvalidParameter, match="expected") as exc:
        Pipeline(None, DecodedPose(pose))(crowd, options, boxes)
    assert needle in exc.value.message and "decodes in its graph" in exc.value.message


def test_blur_kernel_follows_the_model_card(pose: OnnxPoseModel) -> None:
    import dataclasses

    three = dataclasses.replace(pose.spec, blur_kernel=3)

    class Three:
        spec = three

        def infer(self, batch: F32) -> F32:
            return pose.infer(batch)

    pipe = Pipeline(None, Three())
    assert pipe.resolve_options().blur_kernel == 3 and pipe.resolve_options().decode == "dark"
    # an explicit setting or request still wins
    assert pipe.resolve_options(PipelineOptions(blur_kernel=11)).blur_kernel == 11


def test_weighted_ensemble_averages_with_weights(
    tmp_path: Path, pose: OnnxPoseModel, crowd: np.ndarray, gt: Any
) -> None:
    boxes, _ = gt
    other = OnnxPoseModel(perturbed(tmp_path / "w.onnx", scale=1.3), providers="cpu")
    a = Pipeline(None, pose).run_models(crowd, boxes=boxes).outputs
    b = Pipeline(None, other).run_models(crowd, boxes=boxes).outputs
    mixed = Pipeline(None, [pose, other], weights=[3.0, 1.0]).run_models(crowd, boxes=boxes)
    np.testing.assert_allclose(mixed.outputs, 0.75 * a + 0.25 * b, atol=1e-5)
    # equal weights = the plain average; the weights are normalised
    even = Pipeline(None, [pose, other], weights=[2.0, 2.0]).run_models(crowd, boxes=boxes)
    np.testing.assert_allclose(even.outputs, (a + b) / 2, atol=1e-5)


@pytest.mark.parametrize("weights", [[1.0], [1.0, 0.0], [1.0, -1.0], [1.0, float("nan")]])
def test_ensemble_weights_are_checked(
    tmp_path: Path, pose: OnnxPoseModel, weights: list[float]
) -> None:
    with pytest.raises(ModelError, match="ensemble weights: expected 2 finite numbers > 0"):
        Pipeline(None, [pose, pose], weights=weights)


def test_oks_nms_removes_duplicate_boxes(pose: OnnxPoseModel, crowd: np.ndarray, gt: Any) -> None:
    boxes, _ = gt
    dup = np.concatenate([boxes[:1], boxes[:1] + 0.5])
    pipe = Pipeline(None, pose)
    assert len(pipe(crowd, boxes=dup).persons) == 1
    assert len(pipe(crowd, PipelineOptions(oks_nms_threshold=1.0), boxes=dup).persons) == 2


class NanPose:
    """A model whose output is all NaN (a broken model, not a bad request)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def infer(self, batch: F32) -> F32:
        (w, h), k = self.spec.heatmap_size, self.spec.num_keypoints
        shape = (k, 3) if self.spec.decoded_output else (k, h, w)
        return np.full((batch.shape[0], *shape), np.nan, np.float32)


@pytest.mark.parametrize("decoded", [False, True])
def test_non_finite_model_output_is_a_model_error(crowd: np.ndarray, decoded: bool) -> None:
    model = NanPose(ModelSpec(decoded_output=decoded))
    with pytest.raises(ModelError, match="pose model output: .*finite"):
        Pipeline(None, model)(crowd, boxes=[[10, 10, 100, 200]])


def test_max_persons_bounds_the_pose_batch(
    detector: YoloxDetector, pose: OnnxPoseModel, crowd: np.ndarray
) -> None:
    counting = CountingPose(pose)
    res = Pipeline(detector, counting)(crowd, PipelineOptions(max_persons=3, flip=False))
    assert counting.calls == [3] and len(res.persons) <= 3


@pytest.mark.parametrize(
    "image",
    [
        np.full((300, 200), 90, np.uint8),  # grayscale
        np.full((300, 200, 1), 90, np.uint8),
        np.full((300, 200, 4), 90, np.uint8),  # BGRA
        np.full((300, 200, 3), 90 * 257, np.uint16),  # 16-bit
        np.full((8, 8, 3), 90, np.uint8),  # tiny
        np.full((1, 1, 3), 90, np.uint8),
    ],
)
def test_odd_images_give_an_empty_result(pipeline: Pipeline, image: np.ndarray) -> None:
    res = pipeline(image)
    assert res.persons == [] and len(res) == 0 and res.keypoints.shape == (0, 17, 3)
    assert res.image_size == (image.shape[1], image.shape[0])


def test_odd_images_with_boxes_are_converted(pipeline: Pipeline, crowd: np.ndarray) -> None:
    gray = cv2.cvtColor(crowd, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(crowd, cv2.COLOR_BGR2BGRA)
    box = np.array([[0, 60, 250, 397]], np.float32)
    assert len(pipeline(gray, boxes=box).persons) == 1
    a = pipeline(bgra, boxes=box).persons[0].keypoints
    b = pipeline(crowd, boxes=box).persons[0].keypoints
    np.testing.assert_allclose(a, b)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((10, 10, 3), np.float32), "expected uint8 or uint16"),
        (np.zeros((10, 10, 2), np.uint8), r"expected \(H, W\)"),
        (np.zeros((0, 10, 3), np.uint8), "expected a non-empty image"),
        ("not an image", "expected a numpy array"),
    ],
)
def test_bad_images_raise_invalid_image(pipeline: Pipeline, image: Any, match: str) -> None:
    with pytest.raises(InvalidImage, match=match):
        pipeline(image)


@pytest.mark.parametrize(
    "boxes",
    [
        np.array([[10, 10, 10, 50]]),  # zero width
        np.array([[10, 10, 50, 10]]),  # zero height
        np.array([[50, 50, 10, 10]]),  # inverted
        np.array([[700, 10, 800, 100]]),  # right of the image
        np.array([[-100, -100, -1, -1]]),  # above-left
        np.zeros((0, 4)),
    ],
)
def test_degenerate_boxes_are_dropped(pipeline: Pipeline, crowd: np.ndarray, boxes: Any) -> None:
    assert pipeline(crowd, boxes=boxes).persons == []


def test_partly_outside_box_still_works(pipeline: Pipeline, crowd: np.ndarray) -> None:
    res = pipeline(crowd, boxes=np.array([[-50, 60, 250, 450]]))
    assert len(res.persons) == 1 and np.all(np.isfinite(res.persons[0].keypoints))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"boxes": np.zeros((2, 3))}, r"expected shape \(M, 4\)"),
        ({"boxes": np.array([[0, 0, np.nan, 5]])}, "expected finite coordinates"),
        ({"boxes": np.ones((2, 4)), "box_scores": np.ones(3)}, "expected 2 scores"),
        ({"boxes": [["a", "b", "c", "d"]]}, r"expected an \(M, 4\) array"),
    ],
)
def test_bad_boxes(pipeline: Pipeline, crowd: np.ndarray, kwargs: Any, match: str) -> None:
    with pytest.raises(InvalidParameter, match=match):
        pipeline(crowd, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"decode": "soft"}, "decode: expected one of argmax, standard, dark, got 'soft'"),
        ({"blur_kernel": 4}, "blur_kernel: expected an odd integer >= 1, got 4"),
        ({"blur_kernel": 0}, "blur_kernel: expected an odd integer >= 1, got 0"),
        ({"blur_kernel": True}, "blur_kernel: expected an integer, got true"),
        (
            {"det_score_threshold": 1.5},
            "det_score_threshold: expected a number at most 1.0, got 1.5",
        ),
        ({"det_score_threshold": "0.5"}, 'det_score_threshold: expected a number, got "0.5"'),
        ({"keypoint_score_threshold": -0.1}, "keypoint_score_threshold: expected"),
        ({"max_persons": 0}, "max_persons: expected a number at least 1, got 0"),
        ({"max_persons": 2.0}, "max_persons: expected an integer, got 2.0"),
        ({"oks_nms_threshold": 0}, "oks_nms_threshold: expected a number greater than 0.0, got 0"),
        ({"box_padding": -1.0}, "box_padding: expected a number greater than 0.0, got -1.0"),
        ({"test_paddings": (1.1, 0.0)}, "test_paddings.1: expected a number greater than 0.0"),
        ({"test_paddings": [1.0] * 5}, "test_paddings: expected"),
        ({"test_paddings": ["1.1"]}, "test_paddings.0: expected a number"),
        ({"soft_nms_sigma": -0.5}, "soft_nms_sigma: expected a number at least 0.0, got -0.5"),
    ],
)
def test_bad_options(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidParameter, match=match):
        PipelineOptions(**kwargs)


def test_options_from_settings() -> None:
    from darkpose.service.settings import Settings

    s = Settings(decode="standard", flip=True, default_max_persons=7)  # type: ignore[call-arg]
    o = PipelineOptions.from_settings(s, box_padding=1.5)
    assert (o.decode, o.flip, o.max_persons, o.box_padding) == ("standard", True, 7, 1.5)


def test_concurrent_calls_give_the_same_result(pipeline: Pipeline, crowd: np.ndarray) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ref = pipeline(crowd)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: pipeline(crowd), range(3)))
    for res in results:
        assert len(res.persons) == len(ref.persons)
        for a, b in zip(res.persons, ref.persons, strict=True):
            np.testing.assert_allclose(a.keypoints, b.keypoints, rtol=1e-5, atol=1e-3)


def test_draw_poses(pipeline: Pipeline, crowd: np.ndarray) -> None:
    from darkpose.service.core.visualize import draw_poses

    res = pipeline(crowd)
    out = draw_poses(crowd, res.persons)
    assert out.shape == crowd.shape and out.dtype == np.uint8
    assert not np.shares_memory(out, crowd)
    best = res.persons[0].keypoints
    x, y = (int(round(v)) for v in best[int(np.argmax(best[:, 2])), :2])
    # a keypoint disc is drawn where the most confident keypoint is
    assert np.abs(out[y, x].astype(int) - crowd[y, x].astype(int)).sum() > 0
    assert np.array_equal(draw_poses(crowd, []), crowd)
    with pytest.raises(InvalidImage, match="expected BGR uint8"):
        draw_poses(np.zeros((4, 4), np.uint8), res.persons)


@pytest.mark.parametrize(
    ("shape", "min_side", "small"),
    [
        ((7, 100, 3), 8, True),
        ((100, 7), 8, True),
        ((8, 8, 3), 8, False),
        ((8, 100, 1), 8, False),
        ((1, 1, 3), 1, False),
    ],
)
def test_too_small_for_person(shape: tuple[int, ...], min_side: int, small: bool) -> None:
    """The shared min_image_side rule: a side under ``min_side`` px (either side, any channels)."""
    assert too_small_for_person(np.zeros(shape, np.uint8), min_side) is small


def test_run_models_many_batches_images_into_one_call_with_the_same_results() -> None:
    """Crops of several images in one pose call: the same stages as one call per image."""
    from darkpose.service.core.pipeline import Pipeline, PipelineOptions
    from darkpose.service.runtime.pose import OnnxPoseModel
    from tests.conftest import POSE_ONNX
    from tests.runtime.onnx_fixtures import CountingPose

    counting = CountingPose(OnnxPoseModel(POSE_ONNX))
    pipe = Pipeline(None, counting)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (120 + 10 * i, 160, 3), dtype=np.uint8) for i in range(3)]
    boxes = [
        np.array([[10, 10, 80, 110]], np.float32),
        np.zeros((0, 4), np.float32),
        np.array([[0, 0, 60, 90], [50, 20, 150, 130]], np.float32),
    ]
    opts = [PipelineOptions(flip=True), PipelineOptions(), PipelineOptions(flip=False)]
    many = pipe.run_models_many(images, opts, boxes, [None] * 3, [1, 2, 3])
    assert counting.calls == [2 + 2]  # one call: 1 crop + its mirror, then 2 crops
    for i, stage in enumerate(many):
        one = pipe.run_models(images[i], opts[i], boxes[i], image_id=i + 1)
        assert stage.image_id == i + 1
        assert stage.outputs.shape == one.outputs.shape
        np.testing.assert_allclose(stage.outputs, one.outputs, atol=1e-5)
        assert (stage.outputs_flipped is None) == (one.outputs_flipped is None)
        if one.outputs_flipped is not None:
            np.testing.assert_allclose(stage.outputs_flipped, one.outputs_flipped, atol=1e-5)
