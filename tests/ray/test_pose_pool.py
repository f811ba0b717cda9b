"""The split topology's pose pool (``PoseDeployment``) without a cluster: its class runs in this
process, so its answers can be compared with the single-process pipeline's cheaply."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from darkpose.service.core.pipeline import Pipeline, PipelineOptions
from darkpose.service.core.transforms import boxes_to_center_scale, cut_crops
from darkpose.service.runtime.factory import build_pose_models
from darkpose.service.settings import Settings
from tests.api.conftest import CROWD_IMAGE
from tests.conftest import MODELS

pytest.importorskip("ray.serve", reason="needs the optional `ray` extra (ray[serve])")
pytestmark = pytest.mark.ray

#: A weighted ensemble of the two shipped pose models (same input size).
WEIGHTED = {
    "model_dir": str(MODELS),
    "pose_models": ["pp_tinypose_256x192.onnx@3", "pose_simplepose_256x192.onnx@1"],
    "providers": "cpu",
    "batching": False,
}


@pytest.mark.parametrize("flip", [False, True])
def test_pose_pool_weights_the_ensemble_like_the_single_process_pipeline(flip: bool) -> None:
    from darkpose.service.ray_app.deployments import PoseDeployment, PoseJob

    settings = Settings(**WEIGHTED)  # type: ignore[arg-type]
    options = PipelineOptions.from_settings(settings).replace(flip=flip)
    single = Pipeline(
        None, build_pose_models(settings), options, weights=settings.pose_model_weights
    )
    options = single.resolve_options(options)
    image = cv2.imread(str(CROWD_IMAGE))
    boxes = np.array([[200, 40, 330, 420], [20, 60, 180, 400]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    expected = single(image, options, boxes=boxes, box_scores=scores).persons
    assert expected

    pool = PoseDeployment.func_or_class(WEIGHTED)
    try:
        centers, scales = boxes_to_center_scale(
            boxes, single.spec.aspect_ratio, options.box_padding
        )
        crops = cut_crops(image, centers, scales, single.spec.input_size).astype(np.uint8)
        size = (int(image.shape[1]), int(image.shape[0]))
        job = PoseJob(crops, boxes, scores, centers, scales, size, options)
        got = pool._run(job).persons()
    finally:
        pool.__del__()
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g.keypoints[:, :2], e.keypoints[:, :2], atol=0.5)
        np.testing.assert_allclose(g.keypoints[:, 2], e.keypoints[:, 2], atol=0.02)
