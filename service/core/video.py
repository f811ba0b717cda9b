"""Video files → upright BGR frames, with the limits checked from the container header first.

:func:`open_video` opens a file or bytes with PyAV (FFmpeg), accepts only the MP4/MOV and
Matroska/WebM containers and the codecs of ``codecs``, and refuses from the header alone — before
any frame is decoded — a video over ``max_duration_s`` seconds, ``max_frames`` frames or the
image limits (``max_side``, ``max_pixels``).  :meth:`VideoReader.frames` decodes, turns each frame
upright per the container's rotation (display matrix), samples it to ``fps`` when asked, and
re-checks the count and the duration while decoding (headers may lie or be absent: an endless
or mislabelled stream stops at the limit with an error).  Corrupt or truncated data raises
:class:`InvalidVideo` (a decoder error, or fewer frames than the header declares); the frames
already yielded stay valid.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from darkpose.service.core.errors import (
    InputError,
    InvalidParameter,
    PayloadTooLarge,
    UnsupportedMediaType,
)

logger = logging.getLogger(__name__)

#: FFmpeg demuxer names accepted (MP4 / MOV / M4V, Matroska / WebM).
CONTAINERS: tuple[str, ...] = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm")
CONTAINER_TEXT = "an MP4, MOV, MKV or WebM video"
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".m4v", ".mov", ".mkv", ".webm")
VIDEO_MEDIA_TYPES: frozenset[str] = frozenset(
    {
        "video/mp4",
        "video/quicktime",
        "video/webm",
        "video/x-matroska",
        "video/matroska",
        "application/octet-stream",
    }
)


class InvalidVideo(InputError):
    """Bytes that are not a decodable video of an accepted container (HTTP 400)."""

    code = "invalid_video"


#: Frames per second assumed for a video whose header declares none.
ASSUMED_FPS = 30.0


@dataclass(frozen=True)
class VideoInfo:
    """What the container header says: codec (FFmpeg name), width × height as stored, fps
    (average; 0 when unknown), duration_s / frames (0 when undeclared), rotation (degrees
    counter-clockwise to turn a stored frame upright: 0, 90, 180, 270), container name."""

    codec: str
    width: int
    height: int
    fps: float
    duration_s: float
    frames: int
    rotation: int
    container: str

    @property
    def rate(self) -> float:
        """Frames per second: the declared ``fps``, else :data:`ASSUMED_FPS`."""
        return self.fps or ASSUMED_FPS

    @property
    def upright_size(self) -> tuple[int, int]:
        """(W, H) of the frames after rotation."""
        if self.rotation in (90, 270):
            return (self.height, self.width)
        return (self.width, self.height)

    def to_json(self) -> dict[str, Any]:
        w, h = self.upright_size
        return {
            "codec": self.codec,
            "width": w,
            "height": h,
            "fps": round(self.fps, 3),
            "duration_s": round(self.duration_s, 3),
            "frames": self.frames,
            "rotation": self.rotation,
        }


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame: index in the video (0-based, every decoded frame counts), timestamp
    (seconds from the first frame), image BGR uint8 (H, W, 3), upright."""

    index: int
    timestamp: float
    image: npt.NDArray[np.uint8]


def _av() -> Any:
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a dependency
        raise InvalidVideo("video: expected PyAV installed (pip install av), got none") from exc
    return av


def _upright_rotation(degrees: float) -> int:
    """A display-matrix angle (counter-clockwise) → 0/90/180/270 (nearest quarter turn)."""
    return int(round(float(degrees) / 90.0)) % 4 * 90


class VideoReader:
    """An open video (use :func:`open_video`); ``info`` from the header; iterate
    :meth:`frames`; :meth:`close` when done (also a context manager)."""

    def __init__(
        self,
        container: Any,
        stream: Any,
        info: VideoInfo,
        limits: dict[str, Any],
        decoded: Iterator[Any] | None = None,
    ):
        self.container = container
        self.stream = stream
        self.info = info
        self.limits = limits
        self._decoded = decoded if decoded is not None else container.decode(stream)

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.container.close()
        except Exception:  # closing a broken container must not mask the real error
            logger.debug("closing the video container failed", exc_info=True)

    def frames(
        self, fps: float | None = None, check: Callable[[], None] | None = None
    ) -> Iterator[VideoFrame]:
        """Decoded upright frames, sampled to at most ``fps`` per second when given (the first
        frame at or after each 1/fps step).  ``check`` is called before each frame is decoded
        (a job's cancellation).  Raises :class:`InvalidVideo` on corrupt data and
        :class:`PayloadTooLarge` past ``max_frames`` / ``max_duration_s``."""
        av = _av()
        max_frames = int(self.limits["max_frames"])
        max_duration = float(self.limits["max_duration_s"])
        step = 1.0 / fps if fps else 0.0
        next_t = 0.0
        start: float | None = None
        index = -1
        decoded = self._decoded
        while True:
            if check is not None:
                check()
            try:
                frame = next(decoded)
            except StopIteration:
                self._check_complete(index + 1)
                return
            except av.error.FFmpegError as exc:
                raise InvalidVideo(
                    f"video: expected decodable {self.info.codec} data, got an error after "
                    f"{index + 1} frames ({_ffmpeg_text(exc)}): corrupt or truncated"
                ) from exc
            index += 1
            if index >= max_frames:
                raise PayloadTooLarge(
                    f"video: expected at most {max_frames} frames (video_max_frames), got more"
                )
            t = float(frame.time) if frame.time is not None else index / self.info.rate
            if start is None:
                start = t
            ts = max(0.0, t - start)
            if ts > max_duration:
                raise PayloadTooLarge(
                    f"video: expected at most {max_duration:g} s (video_max_duration_s), got "
                    "more frames past it"
                )
            if step and ts + 1e-6 < next_t:
                continue
            if step:
                next_t = max(next_t + step, ts + step * 0.5)
            img = frame.to_ndarray(format="bgr24")
            rot = _upright_rotation(getattr(frame, "rotation", 0) or 0)
            if rot:
                img = np.rot90(img, k=rot // 90)
            yield VideoFrame(index, ts, np.ascontiguousarray(img, dtype=np.uint8))

    def _check_complete(self, decoded: int) -> None:
        """FFmpeg ends a truncated or corrupt file quietly: fewer frames than the header
        declares (beyond a small tolerance for estimated counts) is an :class:`InvalidVideo`."""
        declared = self.info.frames
        if declared and decoded < declared - max(2, declared // 50):
            raise InvalidVideo(
                f"video: expected the {declared} frames its header declares, got {decoded}: "
                "truncated or corrupt"
            )


def _ffmpeg_text(exc: Exception) -> str:
    text = str(getattr(exc, "strerror", "") or exc)
    return " ".join(text.split())[:200]


def check_fps(fps: float | None) -> float | None:
    """``fps`` sampling: None (every frame) or a finite number > 0."""
    if fps is None:
        return None
    if isinstance(fps, bool) or not (isinstance(fps, int | float) and math.isfinite(fps)):
        raise InvalidParameter(f"fps: expected a number > 0, got {fps!r}")
    if fps <= 0:
        raise InvalidParameter(f"fps: expected a number > 0, got {fps!r}")
    return float(fps)


def open_video(
    source: bytes | str | Path,
    *,
    codecs: Sequence[str],
    max_duration_s: float,
    max_frames: int,
    max_side: int,
    max_pixels: int,
) -> VideoReader:
    """Open ``source`` (encoded bytes or a path) and check it from its header (module
    docstring).  Raises :class:`InvalidVideo` (not a video / no video stream / broken header),
    :class:`UnsupportedMediaType` (container or codec not accepted) or
    :class:`PayloadTooLarge`."""
    av = _av()
    if isinstance(source, bytes | bytearray | memoryview):
        if not source:
            raise InvalidVideo(f"video: expected {CONTAINER_TEXT}, got an empty body")
        target: Any = io.BytesIO(bytes(source))
    else:
        target = str(source)
    try:
        container = av.open(target, mode="r", options={"probesize": "5000000"})
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise InvalidVideo(
            f"video: expected {CONTAINER_TEXT}, got bytes FFmpeg cannot open ({_ffmpeg_text(exc)})"
        ) from exc
    try:
        info, stream = _check_header(
            container, codecs, max_duration_s, max_frames, max_side, max_pixels
        )
    except BaseException:
        container.close()
        raise
    limits = {"max_frames": max_frames, "max_duration_s": max_duration_s}
    # the rotation (display matrix) comes with the decoded frames: decode the first one now so
    # that the header reports the upright size; it is yielded first by VideoReader.frames
    decoded = container.decode(stream)
    try:
        first = next(decoded)
    except StopIteration:
        container.close()
        raise InvalidVideo(f"video: expected at least one {info.codec} frame, got none") from None
    except av.error.FFmpegError as exc:
        container.close()
        raise InvalidVideo(
            f"video: expected decodable {info.codec} data, got an error on the first frame "
            f"({_ffmpeg_text(exc)})"
        ) from exc
    rotation = _upright_rotation(getattr(first, "rotation", 0) or 0)
    info = dataclasses.replace(info, rotation=rotation)
    return VideoReader(container, stream, info, limits, itertools.chain([first], decoded))


def _check_header(
    container: Any,
    codecs: Sequence[str],
    max_duration_s: float,
    max_frames: int,
    max_side: int,
    max_pixels: int,
) -> tuple[VideoInfo, Any]:
    fmt = str(container.format.name)
    if fmt not in CONTAINERS:
        raise UnsupportedMediaType(f"video: expected {CONTAINER_TEXT}, got the {fmt} container")
    if not container.streams.video:
        raise InvalidVideo(f"video: expected a video stream in the {fmt} container, got none")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    codec = str(ctx.name)
    if codec not in codecs:
        raise UnsupportedMediaType(
            f"video codec: expected one of {', '.join(codecs)} (video_codecs), got {codec}"
        )
    w, h = int(ctx.width or 0), int(ctx.height or 0)
    if w <= 0 or h <= 0:
        raise InvalidVideo(f"video: expected a frame size in the header, got {w}x{h}")
    if max(w, h) > max_side or w * h > max_pixels:
        raise PayloadTooLarge(
            f"video frames: expected at most {max_side} px a side and {max_pixels} pixels "
            f"(max_image_side, max_image_pixels), got {w}x{h}"
        )
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    duration = 0.0
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = float(container.duration) / 1_000_000.0
    if duration > max_duration_s:
        raise PayloadTooLarge(
            f"video: expected at most {max_duration_s:g} s (video_max_duration_s), "
            f"got {duration:.1f} s"
        )
    frames = int(stream.frames or 0)
    if frames == 0 and duration and fps:
        frames = int(round(duration * fps))
    if frames > max_frames:
        raise PayloadTooLarge(
            f"video: expected at most {max_frames} frames (video_max_frames), got {frames}"
        )
    info = VideoInfo(codec, w, h, fps, duration, frames, 0, fmt)
    return info, stream


class VideoWriter:
    """BGR frames (H, W, 3) uint8 → a video via PyAV: H.264 in MP4/MOV/MKV, VP9 in WebM.

    ``target``: a path (its suffix picks the container) or a seekable binary file object
    (``container`` names the format, default ``mp4``).  Frame sides are cut to even numbers
    (yuv420p).  Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        target: str | Path | Any,
        width: int,
        height: int,
        fps: float,
        container: str | None = None,
    ) -> None:
        from fractions import Fraction

        av = _av()
        if isinstance(target, str | Path):
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            kind = container or path.suffix.lower().lstrip(".") or "mp4"
            self.container = av.open(str(path), mode="w")
        else:
            kind = container or "mp4"
            self.container = av.open(target, mode="w", format=kind)
        codec = "libvpx-vp9" if kind == "webm" else "libx264"
        stream: Any = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width = max(2, width - width % 2)
        stream.height = max(2, height - height % 2)
        stream.pix_fmt = "yuv420p"
        self.stream = stream
        self.frames = 0

    def write(self, image: npt.NDArray[np.uint8]) -> None:
        """Append one frame (BGR, at least the writer's size; larger is cut)."""
        av = _av()
        img = np.ascontiguousarray(image[: self.stream.height, : self.stream.width])
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the container (idempotent)."""
        if self.container is None:
            return
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()
            self.container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
