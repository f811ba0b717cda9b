"""``PoseEstimator``: settings → pipeline, then ``estimator(image) -> Poses``.

:class:`Poses` is the service's one result type (:mod:`darkpose.service.core.poses`): columns
``boxes`` (N, 4) xyxy, ``box_scores`` (N,), ``keypoints`` (N, K, 3) x, y, score in [0, 1],
``scores`` (N,), in the coordinates of the upright photo; it holds that photo (``image``, BGR
uint8 (H, W, 3)) for :meth:`~Poses.draw` and the file name (``source``) for
:meth:`~Poses.to_coco`.

Accepted images:

* a path (``str`` / ``os.PathLike``) or encoded bytes (JPEG/PNG/WebP/BMP): decoded with the
  service's limits, turned upright per EXIF orientation (``exif_orientation=False``: as stored);
* a ``PIL.Image.Image``: its mode says the colours (converted to BGR), EXIF orientation applied
  the same way;
* a numpy array ``(H, W, 3)`` / ``(H, W, 4)`` uint8 (or uint16): **the channel order must be
  stated**, ``channel_order="BGR"`` (``cv2.imread``, OpenCV video frames) or ``"RGB"`` (PIL,
  imageio, matplotlib) — per call or once in the constructor.  A colour array without a declared
  order is refused (:class:`~darkpose.service.core.errors.InvalidImage`): silently reading RGB as
  BGR
  changes the persons found.  Grayscale ``(H, W)`` / ``(H, W, 1)`` needs no order; a 4th
  channel (alpha) is dropped.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from darkpose.service.core.errors import InvalidImage, InvalidParameter
from darkpose.service.core.io import apply_exif_orientation, decode_image, read_image_file
from darkpose.service.core.options import given
from darkpose.service.core.pipeline import (
    Pipeline,
    PipelineOptions,
    as_bgr_uint8,
    too_small_for_person,
)
from darkpose.service.core.poses import Poses
from darkpose.service.core.tracking import PoseTracker, TrackerConfig
from darkpose.service.settings import Settings

ChannelOrder = Literal["BGR", "RGB"]
U8 = npt.NDArray[np.uint8]
_OPTION_NAMES = tuple(PipelineOptions.model_fields)


@dataclass(eq=False)
class TrackedPoses(Poses):
    """The persons of one video frame with their track ids (``track_ids[i]`` belongs to
    person ``i``; keypoints smoothed when smoothing is on); ``frame`` (the frame's number in
    the video or the iterable), ``timestamp`` (seconds), ``detected`` (the detector ran)."""

    track_ids: list[int] = field(default_factory=list)
    frame: int = 0
    timestamp: float = 0.0
    detected: bool = False


class PoseEstimator:
    """Detector + pose model(s) built once; call it on images (see the module docstring).

    ``PoseEstimator()`` uses :class:`~darkpose.service.settings.Settings` (``DARKPOSE_*``
    environment,
    the shared models by default); keyword arguments override settings fields
    (``PoseEstimator(providers="cpu", pose_models="pp_tinypose_256x192.onnx", flip=True)``) or
    a given ``settings`` object.  ``channel_order`` is the default order of colour arrays;
    ``exif_orientation`` whether files and bytes are turned upright (default yes).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        channel_order: ChannelOrder | None = None,
        exif_orientation: bool = True,
        **overrides: Any,
    ) -> None:
        from darkpose.service.runtime.factory import build_pipeline

        if settings is None:
            settings = Settings(**overrides)
        elif overrides:
            settings = Settings(**{**settings.model_dump(), **overrides})
        self.settings = settings
        self.channel_order = _check_order(channel_order)
        self.exif_orientation = bool(exif_orientation)
        self.pipeline: Pipeline = build_pipeline(settings)

    @property
    def options(self) -> PipelineOptions:
        """The default per-call options (from the settings)."""
        return self.pipeline.options

    def __call__(
        self,
        image: Any,
        *,
        channel_order: ChannelOrder | None = None,
        exif_orientation: bool | None = None,
        **options: Any,
    ) -> Poses:
        """Persons in ``image``; ``options`` override :class:`PipelineOptions` fields
        (``decode``, ``flip``, ``det_score_threshold``, ``max_persons``, …) for this call."""
        unknown = sorted(set(options) - set(_OPTION_NAMES))
        if unknown:
            raise InvalidParameter(
                f"options: expected names among {', '.join(_OPTION_NAMES)}, "
                f"got {', '.join(unknown)}"
            )
        upright = self.exif_orientation if exif_orientation is None else bool(exif_orientation)
        bgr, source = self.load(image, channel_order=channel_order, exif_orientation=upright)
        opts = self.pipeline.options.replace(**options) if options else self.pipeline.options
        if too_small_for_person(bgr, self.settings.min_image_side):
            result = Poses.empty(keypoint_names=tuple(self.pipeline.spec.keypoint_names))
        else:
            result = self.pipeline(bgr, opts)
        return dataclasses.replace(
            result, image=bgr, image_size=(int(bgr.shape[1]), int(bgr.shape[0])), source=source
        )

    def track(
        self,
        frames: Any,
        *,
        fps: float = 30.0,
        sample_fps: float | None = None,
        channel_order: ChannelOrder | None = None,
        det_every: int | None = None,
        smooth: bool | None = None,
        **options: Any,
    ) -> Iterator[TrackedPoses]:
        """Tracked persons of each frame, as the frames come: ``frames`` is a video file path
        (MP4/MOV/MKV/WebM: decoded with the service's limits, turned upright, its own timestamps,
        ``sample_fps`` keeps at most that many frames per second) or an iterable of images (any
        kind :meth:`__call__` takes, timestamped ``index / fps``).  ``det_every`` / ``smooth``
        override the ``track_det_every`` / ``smooth`` settings; ``options`` the pipeline's."""
        from darkpose.service.core.video import VIDEO_SUFFIXES, open_video

        unknown = sorted(set(options) - set(_OPTION_NAMES))
        if unknown:
            raise InvalidParameter(
                f"options: expected names among {', '.join(_OPTION_NAMES)}, "
                f"got {', '.join(unknown)}"
            )
        if not (isinstance(fps, int | float) and fps > 0):
            raise InvalidParameter(f"fps: expected a number > 0, got {fps!r}")
        config = TrackerConfig.from_settings(
            self.settings, **given(det_every=det_every, smoothing=smooth)
        )
        opts = self.pipeline.options.replace(**options) if options else self.pipeline.options
        tracker = PoseTracker(self.pipeline, config, opts, min_side=self.settings.min_image_side)
        names = tuple(self.pipeline.spec.keypoint_names)
        source: Iterable[tuple[int, float, U8]]
        if isinstance(frames, str | os.PathLike) and Path(frames).suffix.lower() in VIDEO_SUFFIXES:
            reader = open_video(Path(frames), **self.settings.video_limits)

            def decoded() -> Iterator[tuple[int, float, U8]]:
                with reader:
                    for vf in reader.frames(fps=sample_fps):
                        yield vf.index, vf.timestamp, vf.image

            source = decoded()
            name: str | None = Path(frames).name
        else:
            source = (
                (i, i / float(fps), self.load(img, channel_order=channel_order)[0])
                for i, img in enumerate(frames)
            )
            name = None
        for index, ts, image in source:
            frame = tracker.process(image, ts, index=index)
            yield TrackedPoses.from_persons(  # type: ignore[misc]
                [tp.person for tp in frame.persons],
                image=image,
                timings=frame.timings,
                keypoint_names=names,
                source=name,
                track_ids=[tp.track_id for tp in frame.persons],
                frame=frame.index,
                timestamp=frame.timestamp,
                detected=frame.detected,
            )

    def load(
        self,
        image: Any,
        *,
        channel_order: ChannelOrder | None = None,
        exif_orientation: bool = True,
    ) -> tuple[U8, str | None]:
        """``image`` (any accepted kind) → (BGR uint8 (H, W, 3), file name or None)."""
        limits = self.settings.image_limits
        if isinstance(image, str | os.PathLike):
            if channel_order is not None:
                raise InvalidParameter(
                    "channel_order: expected it only with an array, got it with a file path"
                )
            path = Path(image)
            return read_image_file(path, **limits, exif_orientation=exif_orientation), path.name
        if isinstance(image, bytes | bytearray | memoryview):
            if channel_order is not None:
                raise InvalidParameter(
                    "channel_order: expected it only with an array, got it with encoded bytes"
                )
            return decode_image(bytes(image), **limits, exif_orientation=exif_orientation), None
        if _is_pil_image(image):
            return _from_pil(image, exif_orientation), None
        if isinstance(image, np.ndarray):
            order = _check_order(channel_order) or self.channel_order
            return _from_array(image, order), None
        raise InvalidImage(
            "image: expected a file path, encoded bytes, a PIL image or a numpy array, "
            f"got {type(image).__name__}"
        )


def _check_order(order: Any) -> ChannelOrder | None:
    if order is None:
        return None
    if order not in get_args(ChannelOrder):
        raise InvalidParameter(f"channel_order: expected 'BGR' or 'RGB', got {order!r}")
    return order  # type: ignore[no-any-return]


def _is_pil_image(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(obj, Image.Image)


def _from_pil(im: Any, exif_orientation: bool) -> U8:
    """A PIL image → BGR (its mode defines the colours); upright per its EXIF orientation."""
    from darkpose.service.core.io import exif_orientation_of

    rgb = np.asarray(im.convert("RGB"))
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    return apply_exif_orientation(bgr, exif_orientation_of(im)) if exif_orientation else bgr


def _from_array(image: npt.NDArray[Any], order: ChannelOrder | None) -> U8:
    colour = image.ndim == 3 and image.shape[2] in (3, 4)
    if colour and order is None:
        raise InvalidImage(
            f"image: expected channel_order='BGR' (cv2.imread, OpenCV frames) or 'RGB' (PIL, "
            f"imageio, matplotlib) for a {image.shape[2]}-channel array, got none; "
            "e.g. estimator(frame, channel_order='BGR')"
        )
    if colour and order == "RGB":
        image = image[..., 2::-1]  # RGB(A) → BGR, alpha dropped
    return as_bgr_uint8(image)
