"""The pose stage of the :class:`~darkpose.service.core.pipeline.Pipeline`: crops → keypoints.

The pipeline detects, computes each box's crop geometry (centres / scales) and, after this
stage, rescores and runs OKS-NMS.  What happens in between is pluggable
(:class:`KeypointStage`):

* :class:`ModelPose` (the default) runs here: it cuts the crops, runs the pose model(s) — an
  ensemble is averaged, the flip test's mirrored crops ride in the same call — and decodes
  the heatmaps back to image pixels;
* another process can run the same :class:`ModelPose` from uint8 crops
  (:meth:`ModelPose.keypoints_from_crops`): the Ray split topology cuts crops on its ingress and
  ships them to a pose pool (``darkpose.service.ray_app.pose_pool``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from darkpose.service.core.codec import decode_heatmaps
from darkpose.service.core.errors import InputError, ModelError
from darkpose.service.core.flip import flip_batch, flip_heatmaps_back, flip_permutation, fuse_flip
from darkpose.service.core.transforms import cut_crops, heatmap_to_image, normalize_crops
from darkpose.service.core.types import F32, ModelSpec, PoseModel

if TYPE_CHECKING:
    from darkpose.service.core.pipeline import PipelineOptions

#: Network inputs of one image, per distinct preprocessing (input size, mean, std, …).
Inputs = dict[tuple[Any, ...], F32]


@runtime_checkable
class KeypointStage(Protocol):
    """Crops → keypoints: what the pipeline runs between the crop geometry and rescoring.

    ``spec``: the (first) pose model's spec (input size, heatmap size, keypoints, codec);
    ``pose_models``: the models it runs, for description and warm-up;
    ``keypoints(image, centers, scales, options)``: ``image`` (H, W, 3) BGR uint8,
    ``centers`` / ``scales`` (M, 2) float32 crop geometry (M ≥ 1), ``options`` resolved (decode
    and blur kernel set) → keypoints (M, K, 3) float32 (x, y image px, unclipped score) and the
    seconds of the ``crop``, ``pose`` and ``decode`` stages.
    """

    spec: ModelSpec

    @property
    def pose_models(self) -> Sequence[PoseModel]: ...

    def keypoints(
        self,
        image: npt.NDArray[np.uint8],
        centers: F32,
        scales: F32,
        options: PipelineOptions,
    ) -> tuple[F32, dict[str, float]]: ...


def preprocess_key(spec: ModelSpec) -> tuple[Any, ...]:
    return (spec.input_size, spec.mean, spec.std, spec.pixel_scale, spec.channel_order)


def check_ensemble(models: Sequence[PoseModel], weights: Sequence[float] | None) -> F32:
    """Raise :class:`ModelError` unless ``models`` can be averaged (same heatmap size, input
    aspect ratio and keypoints; a ``decoded_output`` model only alone) with ``weights`` (one
    finite number > 0 per model, default equal); return them normalised, (n_models,)."""
    if not models:
        raise ModelError("pose_models: expected at least one pose model, got none")
    spec0 = models[0].spec
    for m in models[1:]:
        if m.spec.decoded_output or spec0.decoded_output:
            raise ModelError(
                "pose_models: expected heatmap models for an ensemble, got a "
                "decoded_output model among several"
            )
        if m.spec.heatmap_size != spec0.heatmap_size:
            raise ModelError(
                f"pose_models: expected equal heatmap sizes in an ensemble, got "
                f"{spec0.heatmap_size} and {m.spec.heatmap_size}"
            )
        if abs(m.spec.aspect_ratio - spec0.aspect_ratio) > 1e-6:
            raise ModelError(
                f"pose_models: expected equal input aspect ratios in an ensemble, got "
                f"{spec0.input_size} and {m.spec.input_size}"
            )
        if m.spec.num_keypoints != spec0.num_keypoints:
            raise ModelError(
                f"pose_models: expected the same keypoints in an ensemble, got "
                f"{spec0.num_keypoints} and {m.spec.num_keypoints}"
            )
    if weights is None:
        weights = [1.0] * len(models)
    w = np.asarray(list(weights), np.float64)
    if w.shape != (len(models),) or not (np.all(np.isfinite(w)) and np.all(w > 0)):
        raise ModelError(
            f"ensemble weights: expected {len(models)} finite numbers > 0 (one per pose "
            f"model), got {list(weights)}"
        )
    return (w / w.sum()).astype(np.float32)


class ModelPose:
    """The pose stage that runs the pose model(s) in this process.

    ``pose_models``: one :class:`PoseModel` or several (an ensemble, :func:`check_ensemble`;
    heatmaps averaged before decoding, weighted by ``weights``).  Holds no mutable state
    besides ``pose_models`` (the HTTP service swaps its batchers in): callable from several
    threads at once.
    """

    def __init__(
        self, pose_models: PoseModel | Sequence[PoseModel], weights: Sequence[float] | None = None
    ) -> None:
        models = [pose_models] if isinstance(pose_models, PoseModel) else list(pose_models)
        #: (n_models,) ensemble weights, normalised to sum 1.
        self.weights: F32 = check_ensemble(models, weights)
        self._models: list[PoseModel] = models
        self.spec: ModelSpec = models[0].spec

    @property
    def pose_models(self) -> list[PoseModel]:
        return self._models

    @pose_models.setter
    def pose_models(self, models: Sequence[PoseModel]) -> None:
        if len(models) != len(self._models):
            raise ModelError(
                f"pose_models: expected {len(self._models)} models (one per ensemble member), "
                f"got {len(models)}"
            )
        self._models = list(models)

    # --- crops → network inputs ------------------------------------------------------------
    def inputs(self, image: npt.NDArray[np.uint8], centers: F32, scales: F32, flip: bool) -> Inputs:
        """The network inputs (N, 3, H, W) float32 of each distinct preprocessing: the crops
        of ``image`` (H, W, 3) BGR uint8 at ``centers`` / ``scales`` (M, 2), normalised, and
        with ``flip`` their mirror images after them (N = 2M, else M)."""
        cut: dict[tuple[int, int], npt.NDArray[np.generic]] = {}
        for m in self._models:
            size = m.spec.input_size
            if size not in cut:
                cut[size] = cut_crops(image, centers, scales, size)
        return self._normalise(lambda spec: cut[spec.input_size], flip)

    def inputs_from_crops(self, crops: npt.NDArray[np.uint8], flip: bool) -> Inputs:
        """:meth:`inputs` from crops already cut (M, H, W, 3) uint8 BGR at the (single) input
        size of the models."""
        sizes = {m.spec.input_size for m in self._models}
        got = (int(crops.shape[2]), int(crops.shape[1])) if crops.ndim == 4 else crops.shape
        if len(sizes) != 1 or got not in sizes:
            raise ModelError(
                f"crops: expected (M, H, W, 3) at the models' one input size {sorted(sizes)}, "
                f"got {crops.shape}"
            )
        return self._normalise(lambda _spec: crops, flip)

    def _normalise(self, crops_for: Any, flip: bool) -> Inputs:
        out: Inputs = {}
        for m in self._models:
            key = preprocess_key(m.spec)
            if key not in out:
                batch = normalize_crops(crops_for(m.spec), m.spec)
                out[key] = np.concatenate([batch, flip_batch(batch)]) if flip else batch
        return out

    # --- network ---------------------------------------------------------------------------
    def infer(self, inputs: Inputs, n: int, flip: bool) -> tuple[F32, F32 | None]:
        """One ``PoseModel.infer`` call per model on its inputs → the weighted ensemble split
        into (outputs (n, ...), flipped (n, ...) or ``None``), see :meth:`combine_outputs`."""
        outs = [m.infer(inputs[preprocess_key(m.spec)]) for m in self._models]
        return self.combine_outputs(outs, n, flip)

    def combine_outputs(
        self, outs: Sequence[npt.ArrayLike], n: int, flip: bool
    ) -> tuple[F32, F32 | None]:
        """One raw output per pose model, each (N, ...) with N = 2n with ``flip`` (the mirrored
        crops after the n plain ones), else n → the weighted ensemble split into (outputs
        (n, ...), flipped (n, ...) or None)."""
        arrays = [np.asarray(o, np.float32) for o in outs]
        total = arrays[0]
        if len(arrays) > 1:
            total = total * self.weights[0]
        for out, weight in zip(arrays[1:], self.weights[1:], strict=True):
            if out.shape != total.shape:
                raise ModelError(
                    f"ensemble outputs: expected equal shapes, got {total.shape} and {out.shape}"
                )
            total = total + out * weight
        expect = 2 * n if flip else n
        if total.shape[0] != expect:
            raise ModelError(
                f"pose model output: expected {expect} results (one per crop), got {total.shape[0]}"
            )
        return (total[:n], total[n:]) if flip else (total, None)

    # --- decoding --------------------------------------------------------------------------
    def decode(
        self,
        outputs: F32,
        flipped: F32 | None,
        centers: F32,
        scales: F32,
        options: PipelineOptions,
    ) -> F32:
        """Network outputs (M, K, h, w) heatmaps (or (M, K, 3) heatmap-px keypoints of a
        ``decoded_output`` model) and their mirrored twins (``None``: no flip test) → keypoints
        (M, K, 3) float32, x, y in image px, score.  ``options`` resolved."""
        spec = self.spec
        try:
            if spec.decoded_output:
                coords, scores = self._decoded_keypoints(outputs, flipped, options.flip_shift)
            else:
                hm = outputs
                if flipped is not None:
                    back = flip_heatmaps_back(flipped, spec.flip_pairs, options.flip_shift)
                    hm = fuse_flip(hm, back)
                # options are resolved: the card's values stand in only to narrow the types
                coords, scores = decode_heatmaps(
                    hm,
                    method=options.decode or spec.codec,
                    blur_kernel=options.blur_kernel or spec.blur_kernel,
                )
            xy = heatmap_to_image(coords, centers, scales, spec.heatmap_size)
        except InputError as exc:
            # Everything decoded here came from the model (options are validated up front): a
            # NaN/inf or misshapen output is a model failure (500), not the caller's input (4xx).
            raise ModelError(f"pose model output: {exc.message}") from exc
        return np.concatenate([xy, np.asarray(scores, np.float32)[..., None]], axis=2)

    def _decoded_keypoints(self, outputs: F32, flipped: F32 | None, shift: bool) -> tuple[F32, F32]:
        """(M, K, 3) keypoint outputs (heatmap px) → coords (M, K, 2), scores (M, K); with the
        flip test the mirrored outputs are mapped back (``x → w - 1 - x`` (+1 with ``shift``),
        left/right swapped) and averaged."""
        out = np.asarray(outputs, np.float32)
        if out.ndim != 3 or out.shape[2] != 3:
            raise ModelError(f"decoded pose output: expected (N, K, 3), got {out.shape}")
        coords, scores = out[..., :2].copy(), out[..., 2].copy()
        if flipped is not None:
            f = np.asarray(flipped, np.float32)
            perm = flip_permutation(f.shape[1], self.spec.flip_pairs)
            f = f[:, perm]
            fx = np.float32(self.spec.heatmap_size[0] - 1 + (1 if shift else 0)) - f[..., 0]
            coords[..., 0] = (coords[..., 0] + fx) * 0.5
            coords[..., 1] = (coords[..., 1] + f[..., 1]) * 0.5
            scores = (scores + f[..., 2]) * 0.5
        return coords, scores

    # --- the whole stage -------------------------------------------------------------------
    def keypoints(
        self,
        image: npt.NDArray[np.uint8],
        centers: F32,
        scales: F32,
        options: PipelineOptions,
    ) -> tuple[F32, dict[str, float]]:
        """:class:`KeypointStage`: crop, infer, decode."""
        t0 = time.perf_counter()
        inputs = self.inputs(image, centers, scales, options.flip)
        t1 = time.perf_counter()
        kpts, timings = self._infer_decode(inputs, centers, scales, options)
        return kpts, {"crop": t1 - t0, **timings}

    def keypoints_from_crops(
        self,
        crops: npt.NDArray[np.uint8],
        centers: F32,
        scales: F32,
        options: PipelineOptions,
    ) -> tuple[F32, dict[str, float]]:
        """:meth:`keypoints` from crops cut elsewhere: (M, H, W, 3) uint8 BGR
        (:func:`~darkpose.service.core.transforms.cut_crops`) → keypoints (M, K, 3) and the
        seconds of ``pose`` (normalising included) and ``decode``."""
        t0 = time.perf_counter()
        inputs = self.inputs_from_crops(crops, options.flip)
        t1 = time.perf_counter()
        kpts, timings = self._infer_decode(inputs, centers, scales, options)
        timings["pose"] += t1 - t0
        return kpts, timings

    def _infer_decode(
        self, inputs: Inputs, centers: F32, scales: F32, options: PipelineOptions
    ) -> tuple[F32, dict[str, float]]:
        t0 = time.perf_counter()
        n = int(np.asarray(centers).shape[0])
        outputs, flipped = self.infer(inputs, n, options.flip)
        t1 = time.perf_counter()
        kpts = self.decode(outputs, flipped, centers, scales, options)
        return kpts, {"pose": t1 - t0, "decode": time.perf_counter() - t1}
