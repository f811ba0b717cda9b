"""COCO keypoint evaluation on coco-mini with the real pose model (the acceptance numbers)."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools.coco import COCO

from darkpose.service.core.errors import InvalidParameter
from darkpose.service.core.pipeline import Pipeline
from darkpose.service.evaluation import (
    EvalConfig,
    coco_keypoint_metrics,
    evaluate,
    expand_configs,
    format_table,
    gt_boxes,
    load_coco,
)
from darkpose.service.runtime.pose import OnnxPoseModel
from tests.conftest import IMAGES, KPT_ANN, POSE_ONNX
from tests.runtime.onnx_fixtures import CountingPose


@pytest.fixture(scope="module")
def coco() -> COCO:
    return load_coco(KPT_ANN)


@pytest.fixture(scope="module")
def pose() -> OnnxPoseModel:
    return OnnxPoseModel(POSE_ONNX, providers="cpu", intra_op_threads=1)


def test_gt_boxes_keep_annotated_non_crowd_persons(coco: COCO) -> None:
    total = sum(gt_boxes(coco, i)[0].shape[0] for i in coco.getImgIds())
    assert total == 86  # persons with keypoints in coco-mini (shared/README.md)
    boxes, scores = gt_boxes(coco, 370162)
    assert boxes.shape == (11, 4) and np.all(scores == 1.0)
    assert np.all(boxes[:, 2:] > boxes[:, :2])


def test_expand_configs() -> None:
    cfgs = expand_configs(["gt"], ["argmax", "dark"], [False, True], [True, False])
    assert len(cfgs) == 6  # off × 2 decoders + on × 2 shifts × 2 decoders
    assert EvalConfig("gt", "dark", True, False) in cfgs
    with pytest.raises(InvalidParameter, match="expected gt or detector, got 'yolo'"):
        expand_configs(["yolo"], ["dark"], [False], [True])


@pytest.mark.slow
def test_gt_box_acceptance_dark_beats_standard_beats_argmax(
    coco: COCO, pose: OnnxPoseModel
) -> None:
    counting = CountingPose(pose)
    cfgs = expand_configs(["gt"], ["argmax", "standard", "dark"], [False], [True])
    rows, results = evaluate(Pipeline(None, counting), IMAGES, coco, cfgs, progress=False)
    ap = {r.config.decode: r.metrics["AP"] for r in rows}
    assert ap["argmax"] < ap["standard"] < ap["dark"], ap
    assert ap["dark"] >= 0.43, ap
    # heatmaps computed once per crop, decoded three times; the crops of consecutive images
    # share pose-model calls (batch_crops)
    crops = sum(counting.calls)
    assert len(counting.calls) < 28
    one = CountingPose(pose)
    rows1, results1 = evaluate(
        Pipeline(None, one), IMAGES, coco, cfgs, progress=False, batch_crops=1
    )
    assert len(one.calls) == 28  # one call per image with persons
    assert sum(one.calls) == crops
    assert [r.metrics for r in rows1] == [r.metrics for r in rows]
    assert results1 == results
    assert all(r.num_results >= 80 for r in rows)
    table = format_table(rows)
    assert "dark" in table and f"{ap['dark']:.3f}" in table
    # the results load with COCO.loadRes
    dt = coco.loadRes(results[cfgs[-1]])
    assert len(dt.getAnnIds()) == rows[-1].num_results


def test_metrics_of_perfect_and_empty_results(coco: COCO) -> None:
    perfect = [
        {
            "image_id": a["image_id"],
            "category_id": 1,
            "keypoints": a["keypoints"],
            "score": 1.0,
        }
        for a in coco.loadAnns(coco.getAnnIds(iscrowd=False))
        if a["num_keypoints"] > 0
    ]
    m = coco_keypoint_metrics(coco, perfect)
    assert m["AP"] > 0.99 and set(m) == {"AP", "AP50", "AP75", "APM", "APL", "AR"}
    assert coco_keypoint_metrics(coco, [])["AP"] == 0.0


def test_bad_paths(coco: COCO, pose: OnnxPoseModel, tmp_path: object) -> None:
    with pytest.raises(InvalidParameter, match="expected a COCO keypoint annotation file"):
        load_coco("/nonexistent.json")
    cfgs = expand_configs(["gt"], ["dark"], [False], [True])
    with pytest.raises(InvalidParameter, match="--images: expected a directory"):
        evaluate(Pipeline(None, pose), "/nonexistent", coco, cfgs, progress=False)
    det_cfg = expand_configs(["detector"], ["dark"], [False], [True])
    with pytest.raises(InvalidParameter, match="expected a pipeline with a detector"):
        evaluate(Pipeline(None, pose), IMAGES, coco, det_cfg, progress=False)


def test_gt_evaluation_ignores_the_per_request_person_cap(coco: COCO, pose: OnnxPoseModel) -> None:
    """Every GT box is evaluated even when the options cap persons below the box count."""
    from darkpose.service.core.pipeline import PipelineOptions

    cfgs = expand_configs(["gt"], ["dark"], [False], [True])
    capped = PipelineOptions(max_persons=1)
    _, results = evaluate(
        Pipeline(None, pose), IMAGES, coco, cfgs, base_options=capped, progress=False, limit=40
    )
    per_image: dict[int, int] = {}
    for r in results[cfgs[0]]:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    assert max(per_image.values()) > 1, per_image
