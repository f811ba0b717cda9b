"""The split topology's pose pool (``PoseDeployment``) without a cluster: its class runs in this
process behind the split ingress's pose stage, so the answers can be compared with the
single-process pipeline's cheaply."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest

from darkpose.service.core.pipeline import Pipeline, PipelineOptions
from darkpose.service.runtime.factory import build_pose_models
from darkpose.service.settings import Settings
from tests.api.conftest import CROWD_IMAGE
from tests.conftest import MODELS

pytest.importorskip("ray.serve", reason="needs the optional `ray` extra (ray[serve])")
pytestmark = pytest.mark.ray

if TYPE_CHECKING:
    from darkpose.service.ray_app.pose_pool import PoseAnswer, PoseJob

#: A weighted ensemble of the two shipped pose models (same input size).
WEIGHTED = {
    "model_dir": str(MODELS),
    "pose_models": ["pp_tinypose_256x192.onnx@3", "pose_simplepose_256x192.onnx@1"],
    "providers": "cpu",
    "batching": False,
}


@pytest.mark.parametrize("flip", [False, True])
def test_split_pipeline_weights_the_ensemble_like_the_single_process_pipeline(flip: bool) -> None:
    """The split ingress's pipeline (pose stage = the pool, called in this process) answers
    what the single-process pipeline answers, weighted ensemble and flip test included."""
    from darkpose.service.ray_app.pose_pool import PoseDeployment, RemotePose

    settings = Settings(**WEIGHTED)  # type: ignore[arg-type]
    options = PipelineOptions.from_settings(settings).replace(flip=flip)
    single = Pipeline(
        None, build_pose_models(settings), options, weights=settings.pose_model_weights
    )
    image = cv2.imread(str(CROWD_IMAGE))
    boxes = np.array([[200, 40, 330, 420], [20, 60, 180, 400]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    expected = single(image, options, boxes=boxes, box_scores=scores)
    assert expected.persons

    pool = PoseDeployment.func_or_class(WEIGHTED)
    try:
        jobs: list[PoseJob] = []

        def run(job: PoseJob) -> PoseAnswer:
            jobs.append(job)
            return pool.run_job(job)

        remote = RemotePose(run, pool.infer_batch, pool.describe())
        split = Pipeline(None, remote, options)
        got = split(image, options, boxes=boxes, box_scores=scores)
    finally:
        pool.__del__()
    # one compact job: uint8 crops at the model input size, the two boxes' geometry
    (job,) = jobs
    assert job.crops.dtype == np.uint8 and job.crops.shape == (2, 256, 192, 3)
    assert job.options.flip is flip and job.options.decode is not None
    assert set(got.timings) >= {"detect", "crop", "pose", "decode", "postprocess", "total"}
    assert len(got.persons) == len(expected.persons)
    for g, e in zip(got.persons, expected.persons, strict=True):
        np.testing.assert_allclose(g.bbox, e.bbox)
        np.testing.assert_allclose(g.keypoints[:, :2], e.keypoints[:, :2], atol=1e-3)
        np.testing.assert_allclose(g.keypoints[:, 2], e.keypoints[:, 2], atol=1e-4)
        assert g.score == pytest.approx(e.score, abs=1e-4)


def test_pose_pool_refuses_crops_of_another_size() -> None:
    from darkpose.service.core.errors import ModelError
    from darkpose.service.ray_app.pose_pool import PoseDeployment, PoseJob

    pool = PoseDeployment.func_or_class(WEIGHTED)
    try:
        options = Pipeline(None, pool._pose).resolve_options(PipelineOptions())
        geometry = np.zeros((1, 2), np.float32)
        job = PoseJob(np.zeros((1, 128, 96, 3), np.uint8), geometry, geometry + 1, options)
        with pytest.raises(ModelError, match=r"crops: expected \(M, H, W, 3\) at the models"):
            pool.run_job(job)
    finally:
        pool.__del__()
