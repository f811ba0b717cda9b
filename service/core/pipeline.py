"""Top-down pipeline: image (BGR uint8) → detected persons with 17 keypoints each.

Stages (each timed, seconds, in :attr:`Poses.timings`):

* ``detect`` — :class:`~darkpose.service.core.types.Detector` (skipped when the caller passes
  boxes, e.g. GT-box evaluation), score threshold, at most ``max_persons`` boxes by score, and
  each box's crop geometry (:func:`~darkpose.service.core.transforms.boxes_to_center_scale`,
  ``box_padding``);
* the **pose stage** (:mod:`darkpose.service.core.pose_stage`, pluggable: crops → keypoints):

  * ``crop`` — :func:`~darkpose.service.core.transforms.cut_crops` and
    :func:`~darkpose.service.core.transforms.normalize_crops` into each model's input;
  * ``pose`` — **one** ``PoseModel.infer`` call per model and image with every crop (and, with
    the flip test, their mirror images concatenated into the same call); several models = an
    ensemble whose heatmaps are averaged before decoding;
  * ``decode`` — flip fusion, :func:`~darkpose.service.core.codec.decode_heatmaps` (argmax /
    standard / dark), back-projection to image pixels (``spec.decoded_output`` models' graphs
    already output keypoints);

* ``postprocess`` — rescoring (box score × mean confident keypoint score) and OKS-NMS (area from
  the box).

With pose models that run here, the work can also be split in :meth:`Pipeline.run_models`
(detect, crop, pose → :class:`PoseStage`) and :meth:`Pipeline.finish` (decode, postprocess) so
that an evaluation decodes the same heatmaps with several methods and with/without the flip
test without rerunning the network.  The pipeline holds no mutable state: it may be called from
several threads at once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from darkpose.service.core.errors import InvalidImage, InvalidParameter, ModelError
from darkpose.service.core.nms import oks_nms, rescore, soft_oks_nms
from darkpose.service.core.options import PipelineOptions
from darkpose.service.core.pose_stage import KeypointStage, ModelPose, preprocess_key
from darkpose.service.core.poses import Person, Poses, reported_keypoints
from darkpose.service.core.transforms import boxes_to_center_scale
from darkpose.service.core.types import (
    COCO_SIGMAS,
    F32,
    Detector,
    ModelSpec,
    PoseModel,
)

logger = logging.getLogger(__name__)

__all__ = [
    "STAGES",
    "Person",
    "Pipeline",
    "PipelineOptions",
    "PoseResult",
    "PoseStage",
    "Poses",
    "as_bgr_uint8",
    "reported_keypoints",
    "to_original",
    "too_small_for_person",
]

STAGES: tuple[str, ...] = ("detect", "crop", "pose", "decode", "postprocess")
#: The pipeline's result type (the one result type, :class:`Poses`; this name is kept).
PoseResult = Poses


@dataclass
class PoseStage:
    """What the network produced for one image, before decoding.

    boxes: (M, 4) xyxy; box_scores: (M,); centers/scales: (P × M, 2) crop geometry, one block
    of M per padding (P = 1 + ``len(options.test_paddings)``, :func:`crop_geometry`);
    outputs: (P × M, K, h, w) heatmaps averaged over the ensemble (or (P × M, K, 3) keypoints in
    heatmap px for a ``decoded_output`` model); outputs_flipped: the same for the mirrored
    crops, still in mirrored orientation (``None`` without the flip test).
    """

    boxes: F32
    box_scores: F32
    centers: F32
    scales: F32
    outputs: F32
    outputs_flipped: F32 | None
    image_size: tuple[int, int]
    timings: dict[str, float]
    image_id: int | None = None


def as_bgr_uint8(image: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Accept BGR uint8 (H, W, 3) as is; convert grayscale (H, W) / (H, W, 1), BGRA (H, W, 4)
    and 16-bit images; anything else → :class:`InvalidImage`."""
    if not isinstance(image, np.ndarray):
        raise InvalidImage(f"image: expected a numpy array, got {type(image).__name__}")
    img = image
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise InvalidImage(f"image: expected uint8 or uint16 pixels, got {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise InvalidImage(f"image: expected (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise InvalidImage(f"image: expected a non-empty image, got shape {image.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(img)


def too_small_for_person(image: npt.NDArray[Any] | tuple[int, ...], min_side: int) -> bool:
    """True when ``image`` (H, W[, C]) — or its shape ``(H, W[, C])``, e.g. the full-resolution
    shape of a photo worked on at a reduced size — has a side under ``min_side`` px
    (``Settings.min_image_side``): a valid image that holds no detectable person, answered with
    no persons without running the pipeline (the one place this rule is written; the API,
    ``darkpose infer`` and :class:`darkpose.PoseEstimator` call it)."""
    shape = image if isinstance(image, tuple) else image.shape
    return min(shape[:2]) < min_side


def to_original(result: Poses, scale: tuple[float, float], original_size: tuple[int, int]) -> Poses:
    """:meth:`Poses.to_original` (kept as a function for its callers)."""
    return result.to_original(scale, original_size)


def _check_boxes(
    boxes: npt.ArrayLike, box_scores: npt.ArrayLike | None, image_size: tuple[int, int]
) -> tuple[F32, F32]:
    """Validate caller boxes (M, 4) xyxy (+ scores (M,), default 1); drop zero-area boxes and
    boxes entirely outside the image."""
    try:
        b = np.asarray(boxes, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidParameter(
            f"boxes: expected an (M, 4) array, got {type(boxes).__name__}"
        ) from exc
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise InvalidParameter(f"boxes: expected shape (M, 4) xyxy, got {b.shape}")
    if not np.all(np.isfinite(b)):
        raise InvalidParameter("boxes: expected finite coordinates, got NaN or inf")
    if box_scores is None:
        s = np.ones((b.shape[0],), np.float32)
    else:
        try:
            s = np.asarray(box_scores, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise InvalidParameter(
                f"box_scores: expected an (M,) array, got {type(box_scores).__name__}"
            ) from exc
        if s.shape[0] != b.shape[0]:
            raise InvalidParameter(
                f"box_scores: expected {b.shape[0]} scores (one per box), got {s.shape[0]}"
            )
        if not np.all(np.isfinite(s)):
            raise InvalidParameter("box_scores: expected finite scores, got NaN or inf")
    w, h = image_size
    ok = (
        (b[:, 2] > b[:, 0])
        & (b[:, 3] > b[:, 1])
        & (b[:, 2] > 0)
        & (b[:, 3] > 0)
        & (b[:, 0] < w)
        & (b[:, 1] < h)
    )
    if not np.all(ok):
        logger.debug("dropped %d zero-area or off-image boxes", int((~ok).sum()))
    return b[ok], s[ok]


def crop_geometry(boxes: F32, aspect_ratio: float, options: PipelineOptions) -> tuple[F32, F32]:
    """The crops of ``boxes`` (M, 4) xyxy: centers and scales (P × M, 2), one block of M per
    padding — ``options.box_padding``, then each of ``options.test_paddings`` (the multi-scale
    test; :func:`merge_passes` folds the blocks back)."""
    paddings = (options.box_padding, *options.test_paddings)
    parts = [boxes_to_center_scale(boxes, aspect_ratio, p) for p in paddings]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([c for c, _ in parts]), np.concatenate([sc for _, sc in parts])


def merge_passes(kpts: F32, persons: int) -> F32:
    """Keypoints (P × M, K, 3) of P pose passes over the same M persons (one block of M per
    padding, :func:`crop_geometry`) → (M, K, 3): x and y the median over the passes (a pass
    whose crop cut a limb off does not pull the others), the score their mean."""
    k = np.asarray(kpts, np.float32)
    if persons <= 0 or k.shape[0] == persons:
        return k
    if k.shape[0] % persons:
        raise ModelError(
            f"pose passes: expected a multiple of {persons} keypoint rows, got {k.shape[0]}"
        )
    passes = k.reshape(k.shape[0] // persons, persons, *k.shape[1:])
    xy = np.median(passes[..., :2], axis=0)
    score = passes[..., 2].mean(axis=0)
    return np.concatenate([xy, score[..., None]], axis=-1).astype(np.float32)


class Pipeline:
    """Detector + pose stage → persons.

    ``pose``: the pose stage — one :class:`PoseModel` or several (run here by a
    :class:`~darkpose.service.core.pose_stage.ModelPose`: an ensemble with the same heatmap size
    and input aspect ratio, heatmaps averaged before decoding, weighted by ``weights`` (one
    number > 0 per model, normalised; default equal)), or any
    :class:`~darkpose.service.core.pose_stage.KeypointStage` (e.g. a remote pose pool; then
    ``weights`` must be ``None``).  ``detector`` may be ``None`` when every call passes
    ``boxes``.  Call as ``pipeline(image, options=None, boxes=None, box_scores=None,
    image_id=None) -> Poses``; ``image`` BGR uint8 (H, W, 3).
    """

    def __init__(
        self,
        detector: Detector | None,
        pose: PoseModel | Sequence[PoseModel] | KeypointStage,
        options: PipelineOptions | None = None,
        weights: Sequence[float] | None = None,
    ) -> None:
        if isinstance(pose, KeypointStage):  # checked first: a stage may be a PoseModel too
            if weights is not None:
                raise ModelError(
                    "weights: expected none with a pose stage (it weights its own models), "
                    f"got {list(weights)}"
                )
            self.pose: KeypointStage = pose
        else:
            self.pose = ModelPose(pose, weights)
        self.detector = detector
        self.spec: ModelSpec = self.pose.spec
        self.options = options or PipelineOptions()
        k = self.spec.num_keypoints
        if len(COCO_SIGMAS) == k:
            self.sigmas: npt.NDArray[np.float64] = np.asarray(COCO_SIGMAS, np.float64)
        else:  # non-COCO keypoint sets: a uniform sigma
            self.sigmas = np.full((k,), 0.05, np.float64)

    @property
    def pose_models(self) -> list[PoseModel]:
        """The pose stage's models (description, warm-up, batcher queues)."""
        return list(self.pose.pose_models)

    @pose_models.setter
    def pose_models(self, models: Sequence[PoseModel]) -> None:
        self._local_pose("pose_models").pose_models = models

    def _local_pose(self, what: str) -> ModelPose:
        if not isinstance(self.pose, ModelPose):
            raise ModelError(
                f"{what}: expected a pipeline whose pose models run in this process, got the "
                f"pose stage {type(self.pose).__name__}"
            )
        return self.pose

    # -- public API --------------------------------------------------------------------------
    def __call__(
        self,
        image: npt.NDArray[Any],
        options: PipelineOptions | None = None,
        boxes: npt.ArrayLike | None = None,
        box_scores: npt.ArrayLike | None = None,
        image_id: int | None = None,
    ) -> Poses:
        """image (H, W, 3) BGR uint8 → :class:`Poses` (sorted by score)."""
        opts = self.resolve_options(options)
        t0 = time.perf_counter()
        img, size, timings, b, s = self._detect(image, opts, boxes, box_scores)
        if b.shape[0] == 0:
            timings["total"] = time.perf_counter() - t0
            return self._empty(size, timings, image_id)
        centers, scales = crop_geometry(b, self.spec.aspect_ratio, opts)
        kpts, stage_timings = self.pose.keypoints(img, centers, scales, opts)
        kpts = merge_passes(kpts, b.shape[0])
        timings.update(stage_timings)
        t2 = time.perf_counter()
        result = self._postprocess(b, s, kpts, opts)
        t3 = time.perf_counter()
        timings["postprocess"] = t3 - t2
        timings["total"] = t3 - t0
        return dataclasses.replace(result, image_size=size, timings=timings, image_id=image_id)

    def _detect(
        self,
        image: npt.NDArray[Any],
        options: PipelineOptions,
        boxes: npt.ArrayLike | None,
        box_scores: npt.ArrayLike | None,
    ) -> tuple[npt.NDArray[np.uint8], tuple[int, int], dict[str, float], F32, F32]:
        """The detect stage of one image: (the image as BGR uint8 (H, W, 3), its (W, H), the
        stage timings with ``detect`` filled, person boxes (N, 4) and scores (N,))."""
        t0 = time.perf_counter()
        img = as_bgr_uint8(image)
        size = (int(img.shape[1]), int(img.shape[0]))
        timings = dict.fromkeys(STAGES, 0.0)
        b, s = self.person_boxes(img, options, boxes, box_scores)
        timings["detect"] = time.perf_counter() - t0
        return img, size, timings, b, s

    def resolve_options(self, options: PipelineOptions | None = None) -> PipelineOptions:
        """``options`` (default: the pipeline's) with ``decode`` / ``blur_kernel`` taken from the
        pose model's card where they are ``None`` (an ensemble: the first model's card).

        A model whose graph decodes (``spec.decoded_output``) ran its card's decode: asking for
        another decode method or blur kernel is an :class:`InvalidParameter` (422), never
        silently ignored.
        """
        opts = options or self.options
        spec = self.spec
        if spec.decoded_output:
            if opts.decode is not None and opts.decode != spec.codec:
                raise InvalidParameter(
                    f"decode: expected {spec.codec!r} (pose model {spec.name} decodes in its "
                    f"graph), got {opts.decode!r}"
                )
            if (
                spec.codec == "dark"
                and opts.blur_kernel is not None
                and opts.blur_kernel != spec.blur_kernel
            ):
                raise InvalidParameter(
                    f"blur_kernel: expected {spec.blur_kernel} (pose model {spec.name} decodes "
                    f"in its graph), got {opts.blur_kernel}"
                )
        if opts.decode is not None and opts.blur_kernel is not None:
            return opts
        return opts.replace(
            decode=opts.decode if opts.decode is not None else spec.codec,
            blur_kernel=opts.blur_kernel if opts.blur_kernel is not None else spec.blur_kernel,
        )

    def detect(
        self, image: npt.NDArray[np.uint8], options: PipelineOptions | None = None
    ) -> tuple[F32, F32]:
        """Detector boxes (M, 4) xyxy and scores (M,), thresholded (not yet capped at
        ``max_persons``: :meth:`person_boxes`)."""
        opts = options or self.options
        if self.detector is None:
            raise InvalidParameter(
                "boxes: expected boxes (this pipeline has no detector), got none"
            )
        det = self.detector.detect(image, score_threshold=opts.det_score_threshold)
        b = np.asarray(det.boxes, np.float32).reshape(-1, 4)
        s = np.asarray(det.scores, np.float32).reshape(-1)
        keep = s >= opts.det_score_threshold
        return b[keep], s[keep]

    def person_boxes(
        self,
        image: npt.NDArray[np.uint8],
        options: PipelineOptions | None = None,
        boxes: npt.ArrayLike | None = None,
        box_scores: npt.ArrayLike | None = None,
    ) -> tuple[F32, F32]:
        """The boxes the pose model gets: ``boxes`` (checked) or the detector's on ``image``
        (H, W, 3) BGR uint8, the ``max_persons`` highest-scoring of them.  Boxes (M, 4) xyxy,
        scores (M,)."""
        opts = options or self.options
        if boxes is None:
            b, s = self.detect(image, opts)
        else:
            b, s = _check_boxes(boxes, box_scores, (int(image.shape[1]), int(image.shape[0])))
        if b.shape[0] > opts.max_persons:
            order = np.argsort(-s, kind="stable")[: opts.max_persons]
            b, s = b[order], s[order]
        return b, s

    def run_models(
        self,
        image: npt.NDArray[Any],
        options: PipelineOptions | None = None,
        boxes: npt.ArrayLike | None = None,
        box_scores: npt.ArrayLike | None = None,
        image_id: int | None = None,
    ) -> PoseStage:
        """Detect (unless ``boxes``), crop and run the pose model(s): a :class:`PoseStage`
        (network outputs before decoding; a pipeline whose pose models run here).  With
        ``options.flip`` the mirrored crops run in the same call per model."""
        return self.run_models_many([image], [options], [boxes], [box_scores], [image_id])[0]

    def run_models_many(
        self,
        images: Sequence[npt.NDArray[Any]],
        options: Sequence[PipelineOptions | None],
        boxes: Sequence[npt.ArrayLike | None],
        box_scores: Sequence[npt.ArrayLike | None],
        image_ids: Sequence[int | None],
    ) -> list[PoseStage]:
        """:meth:`run_models` for several images (one entry per image in each sequence) with
        **one** ``PoseModel.infer`` call per model for the crops of all of them (batching
        across images: an evaluation's images with few persons fill one batch).  Each stage's
        ``pose`` timing is its share of that call by crop count."""
        pose = self._local_pose("run_models")
        n_img = len(images)
        if not (len(options) == len(boxes) == len(box_scores) == len(image_ids) == n_img):
            raise InvalidParameter(
                f"run_models_many: expected {n_img} options, boxes, box_scores and image_ids "
                f"(one per image), got {len(options)}, {len(boxes)}, {len(box_scores)}, "
                f"{len(image_ids)}"
            )
        prepared = []
        for image, o, b_in, s_in in zip(images, options, boxes, box_scores, strict=True):
            opts = o or self.options
            img, size, timings, b, s = self._detect(image, opts, b_in, s_in)
            t1 = time.perf_counter()
            centers, scales = crop_geometry(b, self.spec.aspect_ratio, opts)
            inputs = pose.inputs(img, centers, scales, opts.flip) if b.shape[0] else {}
            timings["crop"] = time.perf_counter() - t1
            prepared.append((opts, b, s, centers, scales, inputs, size, timings))
        counts = [next(iter(x.values())).shape[0] if x else 0 for *_, x, _, _ in prepared]
        total = sum(counts)
        outs: list[list[npt.NDArray[Any]]] = [[] for _ in prepared]
        pose_s = 0.0
        if total:
            t2 = time.perf_counter()
            edges = np.cumsum([0, *counts])
            for m in pose.pose_models:
                key = preprocess_key(m.spec)
                parts = [x[key] for *_, x, _, _ in prepared if x]
                out = np.asarray(m.infer(parts[0] if len(parts) == 1 else np.concatenate(parts)))
                if out.shape[0] != total:
                    raise ModelError(
                        f"pose model output: expected {total} results (one per crop), got "
                        f"{out.shape[0]}"
                    )
                for i in range(n_img):
                    outs[i].append(out[edges[i] : edges[i + 1]])
            pose_s = time.perf_counter() - t2
        stages = []
        for i, (opts, b, s, centers, scales, _, size, timings) in enumerate(prepared):
            n = b.shape[0]
            if n == 0:
                empty = np.zeros((0, self.spec.num_keypoints, 3), np.float32)
                outputs, flipped = empty, None
            else:
                outputs, flipped = pose.combine_outputs(outs[i], centers.shape[0], opts.flip)
                timings["pose"] = pose_s * counts[i] / total
            timings["total"] = timings["detect"] + timings["crop"] + timings["pose"]
            stages.append(
                PoseStage(b, s, centers, scales, outputs, flipped, size, timings, image_ids[i])
            )
        return stages

    def finish(self, stage: PoseStage, options: PipelineOptions | None = None) -> Poses:
        """Decode + postprocess a :class:`PoseStage`.  ``options.flip`` uses the flipped outputs
        when the stage has them (a stage run with flip can be finished with or without it)."""
        pose = self._local_pose("finish")
        opts = self.resolve_options(options)
        if opts.flip and stage.outputs_flipped is None and stage.boxes.shape[0] > 0:
            raise InvalidParameter(
                "options.flip: expected a stage computed with flip=True, got one without"
            )
        timings = dict(stage.timings)
        t0 = time.perf_counter()
        if stage.boxes.shape[0] == 0:
            timings["total"] = timings.get("total", 0.0) + time.perf_counter() - t0
            return self._empty(stage.image_size, timings, stage.image_id)
        flipped = stage.outputs_flipped if opts.flip else None
        kpts = pose.decode(stage.outputs, flipped, stage.centers, stage.scales, opts)
        kpts = merge_passes(kpts, stage.boxes.shape[0])
        t1 = time.perf_counter()
        timings["decode"] = t1 - t0
        result = self._postprocess(stage.boxes, stage.box_scores, kpts, opts)
        t2 = time.perf_counter()
        timings["postprocess"] = t2 - t1
        timings["total"] = timings.get("total", 0.0) + (t2 - t0)
        return dataclasses.replace(
            result, image_size=stage.image_size, timings=timings, image_id=stage.image_id
        )

    # -- helpers -----------------------------------------------------------------------------
    def _empty(
        self, size: tuple[int, int], timings: dict[str, float], image_id: int | None
    ) -> Poses:
        return Poses.empty(
            keypoint_names=tuple(self.spec.keypoint_names),
            image_size=size,
            timings=timings,
            image_id=image_id,
        )

    def _postprocess(self, boxes: F32, box_scores: F32, kpts: F32, opts: PipelineOptions) -> Poses:
        """Rescoring and OKS-NMS on the unclipped scores → :class:`Poses` sorted by score
        (keypoint scores clipped there)."""
        scores = rescore(box_scores, kpts[..., 2], threshold=opts.keypoint_score_threshold)
        n = boxes.shape[0]
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        if opts.soft_nms_sigma > 0 and n > 1:
            keep, soft = soft_oks_nms(
                kpts,
                scores,
                areas,
                opts.soft_nms_sigma,
                threshold=opts.oks_nms_threshold,
                sigmas=self.sigmas,
            )
            scores = soft.astype(np.float32)
        elif opts.oks_nms_threshold < 1.0 and n > 1:
            keep = np.asarray(
                oks_nms(kpts, scores, areas, threshold=opts.oks_nms_threshold, sigmas=self.sigmas),
                np.int64,
            )
        else:
            keep = np.arange(n, dtype=np.int64)
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        return Poses(
            boxes[keep],
            box_scores[keep],
            kpts[keep],
            np.asarray(scores, np.float32)[keep],
            keypoint_names=tuple(self.spec.keypoint_names),
        )
