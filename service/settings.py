"""Service settings (pydantic-settings, environment prefix ``DARKPOSE_``).

Example: ``DARKPOSE_MODEL_DIR=/models DARKPOSE_PROVIDERS=cuda darkpose serve``.

List settings (``DARKPOSE_POSE_MODELS``) accept what a person types: one value
(``/path/m.onnx``), a comma list (``a.onnx,b.onnx``) or a JSON list (``["a.onnx", "b.onnx"]``).
:func:`settings_error_line` turns any settings error into one line (the CLI logs it and exits 2).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypedDict, get_origin

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from darkpose.service.core.cards import ZOO_DIR
from darkpose.service.core.types import DecodeMethod

ENV_PREFIX = "DARKPOSE_"


def split_list(value: str) -> list[Any]:
    """``'a,b'`` → ``['a', 'b']``, ``'a'`` → ``['a']``, ``'["a", "b"]'`` (JSON) → its list."""
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"expected a JSON list, got {text[:60]!r} ({exc.msg})") from None
        if not isinstance(parsed, list):
            raise ValueError(f"expected a JSON list, got {text[:60]!r}")
        return parsed
    return [part.strip() for part in text.split(",") if part.strip()]


class _PlainTextEnvSource(EnvSettingsSource):
    """The environment source, except that a complex (list) value that does not look like JSON
    is passed on as text for :meth:`Settings._split_lists` instead of failing ``json.loads``."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        if isinstance(value, str) and not value.lstrip().startswith(("[", "{")):
            return value
        return super().decode_complex_value(field_name, field, value)


def _got(value: Any) -> str:
    """The value a user gave, as an error message quotes it (JSON, at most 80 characters)."""
    if value is None:
        return "nothing"
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


#: What a pydantic error type expects, in words (types not listed: pydantic's own message).
_EXPECTED_BY_TYPE: dict[str, str] = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_parsing": "true or false (also 1/0, yes/no, on/off)",
    "bool_type": "true or false",
    "string_type": "text",
    "list_type": "a list",
    "path_type": "a file system path",
    "missing": "a value",
}
#: pydantic bound error type → (its context key, the words for it).
_BOUNDS: dict[str, tuple[str, str]] = {
    "greater_than": ("gt", "greater than"),
    "greater_than_equal": ("ge", "at least"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "at most"),
}


def validation_error_text(err: Mapping[str, Any]) -> str:
    """One pydantic error (an item of ``ValidationError.errors()``) as "expected X, got Y",
    in words (no "Input should be", no doubled "expected").  A ``ValueError`` of our own
    validators already says "expected ..., got ..." and is kept as it is."""
    kind = str(err.get("type", ""))
    ctx = err.get("ctx") or {}
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    got = _got(err.get("input"))
    if kind == "value_error":
        return msg if "expected" in msg else f"expected {msg}, got {got}"
    if kind in _BOUNDS and _BOUNDS[kind][0] in ctx:
        key, words = _BOUNDS[kind]
        expected = f"a number {words} {ctx[key]}"
    elif kind in ("literal_error", "enum") and "expected" in ctx:
        choices = re.findall(r"'([^']*)'", str(ctx["expected"]))
        expected = f"one of {', '.join(choices)}" if choices else str(ctx["expected"])
    elif kind in _EXPECTED_BY_TYPE:
        expected = _EXPECTED_BY_TYPE[kind]
    else:  # pydantic's words: "Input should be a valid X, <detail>" -> "a valid X"
        expected = msg.removeprefix("Input should be ").split(", ")[0] or "a valid value"
        expected = expected[:1].lower() + expected[1:]
    return f"expected {expected}, got {got}"


def settings_error_line(exc: Exception) -> str:
    """One line for a settings error (``ValidationError`` or ``SettingsError``), naming the
    setting and its environment variable: ``settings: det_score_threshold
    (DARKPOSE_DET_SCORE_THRESHOLD): expected a number at most 1.0, got 2``."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ())]
            text = validation_error_text(err)
            if not loc:  # a cross-field check: its message names the fields
                parts.append(text)
                continue
            parts.append(f"{'.'.join(loc)} ({ENV_PREFIX}{loc[0].upper()}): {text}")
        return "settings: " + "; ".join(parts)
    if isinstance(exc, SettingsError):
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        m = re.search(r'field "(\w+)"', str(exc))
        if m is None:
            return f"settings: {exc}{cause}".replace("\n", " ")
        name = m.group(1)
        return (
            f"settings: {name} ({ENV_PREFIX}{name.upper()}): expected a plain value, a comma "
            f"list or valid JSON, got a value that does not parse{cause}"
        ).replace("\n", " ")
    return f"settings: {exc}".replace("\n", " ")


class ImageLimits(TypedDict):
    """The keyword limits of :func:`darkpose.service.core.io.decode_image` / ``read_image_file``."""

    max_bytes: int
    max_pixels: int
    max_side: int
    min_side: int
    max_jpeg_scans: int
    max_png_chunks: int


def split_weight(entry: str) -> tuple[str, float]:
    """``"model.onnx@0.7"`` → ``("model.onnx", 0.7)``; no ``@`` → weight 1.  ``ValueError``
    ("expected ..., got ...") for an empty name or a weight that is not a finite number > 0."""
    name, sep, raw = entry.rpartition("@")
    if not sep:
        name, raw = entry, "1"
    try:
        weight = float(raw)
    except ValueError:
        weight = math.nan
    if not name.strip() or not (math.isfinite(weight) and weight > 0):
        raise ValueError(
            f"pose model entry: expected 'file.onnx' or 'file.onnx@<weight > 0>', got {entry!r}"
        )
    return name.strip(), weight


class Settings(BaseSettings):
    """All tunables of the pipeline and the HTTP service."""

    model_config = SettingsConfigDict(env_prefix="DARKPOSE_", env_file=None, extra="ignore")

    # --- models -----------------------------------------------------------------------------
    model_dir: Path = Field(
        ZOO_DIR,
        description="directory holding the ONNX files named by relative paths (default: the "
        "models packaged with darkpose, darkpose/zoo)",
    )
    pose_models: list[str] = Field(
        default_factory=lambda: ["pp_tinypose_256x192.onnx"],
        description="pose model file(s), relative to model_dir or absolute; several = ensemble "
        "(heatmaps averaged before decoding); 'file.onnx@0.7' gives a model a weight "
        "(default 1; the weights are normalised)",
    )
    detector: str = Field(
        "yolox",
        description="detector config: picodet | yolox | onnx(model=...) | htc | chips(...) | "
        "fused(picodet,yolox,...)",
    )
    detector_model: str = Field("yolox_nano_416.onnx", description="YOLOX ONNX file (yolox)")
    picodet_model: str = Field(
        "picodet_s_416_pedestrian.onnx", description="PicoDet ONNX file (picodet)"
    )
    det_max_detections: int = Field(
        100, gt=0, description="the detector's own cap on boxes per image (before max_persons)"
    )
    providers: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(0, ge=0, description="0 = onnxruntime default")
    inter_op_threads: int = Field(0, ge=0)

    # --- runtime backend / precision (README "Reduced precision") ---------------------------
    pose_backend: Literal["onnxruntime", "openvino"] | None = Field(
        None,
        description="pose-model runtime (None = the model card's, onnxruntime by default); "
        "openvino = optional extra, CPU only",
    )
    pose_precision: Literal["fp32", "bf16"] | None = Field(
        None,
        description="pose float precision (None = the card's); bf16 needs backend openvino and "
        "a CPU with native bf16; int8 = a model file from `darkpose quantize`",
    )
    detector_backend: Literal["onnxruntime", "openvino"] | None = Field(
        None, description="detector runtime (None = the card's)"
    )
    detector_precision: Literal["fp32", "bf16"] | None = Field(
        None, description="detector float precision (None = the card's)"
    )

    # --- pipeline defaults ----------------------------------------------------------------
    decode: DecodeMethod | None = Field(
        None,
        description="heatmap decoder (darkpose.service.core.codec.DECODERS); None = the "
        "model card's",
    )
    blur_kernel: int | None = Field(
        None, ge=1, description="DARK blur kernel (odd); None = the model card's"
    )
    flip: bool = False
    flip_shift: bool = True
    det_score_threshold: float = Field(0.3, ge=0.0, le=1.0)
    det_nms_iou: float = Field(0.65, gt=0.0, le=1.0)
    eval_det_score_threshold: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="detector score threshold of `darkpose eval` (COCO protocol: low); serving "
        "uses det_score_threshold",
    )
    oks_nms_threshold: float = Field(0.9, gt=0.0, le=1.0)
    keypoint_score_threshold: float = Field(0.2, ge=0.0, le=1.0)
    box_padding: float = Field(1.25, gt=0.0)

    # --- limits ---------------------------------------------------------------------------
    max_image_bytes: int = Field(20 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(40_000_000, gt=0)
    max_image_side: int = Field(16384, gt=0)
    min_image_side: int = Field(8, gt=0)
    max_persons: int = Field(100, gt=0, description="upper bound a request may ask for")
    default_max_persons: int = Field(30, gt=0)

    # --- batching / concurrency --------------------------------------------------------------
    batching: bool = True
    max_batch: int = Field(32, gt=0)
    max_wait_ms: float = Field(2.0, ge=0.0)
    queue_size: int = Field(512, gt=0, description="max crops waiting for the pose model")
    batch_workers: int = Field(
        2, gt=0, description="micro-batcher threads: pose-model calls that may run at once"
    )
    max_inflight_requests: int = Field(64, gt=0)
    retry_after_s: float = Field(1.0, gt=0.0)
    request_timeout_s: float = Field(30.0, gt=0.0)
    warmup: bool = True

    # --- access control and fair use (service/api/access.py; README "Securing the service") -
    api_keys: SecretStr = Field(
        SecretStr(""), description="comma-separated API keys; empty and no file = no keys"
    )
    api_keys_file: Path | None = Field(
        None, description="one API key per line (# comments); re-read on SIGHUP or change"
    )
    metrics_key: SecretStr | None = Field(
        None, description="key GET /metrics requires (unset: /metrics is open)"
    )
    rate_limit: float = Field(0.0, ge=0.0, description="requests/s per client; 0 = off")
    rate_burst: int = Field(0, ge=0, description="token bucket size; 0 = ceil(rate_limit)")
    max_inflight_per_client: int = Field(0, ge=0, description="0 = no per-client cap")
    trusted_proxies: str = Field(
        "", description="comma-separated proxy IPs/CIDRs whose X-Forwarded-For is honoured"
    )

    # --- hostile input and slow clients (README "Reliability") ----------------------------------
    max_jpeg_scans: int = Field(100, gt=0, description="most scans (SOS) a JPEG may have")
    max_png_chunks: int = Field(20_000, gt=0, description="most chunks a PNG may have")
    work_timeout_s: float = Field(
        30.0, gt=0.0, description="deadline of a request's work once its body arrived (503)"
    )
    memory_budget_mb: int = Field(
        3072, gt=0, description="estimated memory of the requests being worked on (503 beyond)"
    )
    max_concurrent_uploads: int = Field(
        128, gt=0, description="request bodies being received at once (503 beyond)"
    )
    max_render_side: int = Field(
        2048, gt=0, description="longest side of a render=true overlay (downscaled beyond)"
    )
    max_connections: int = Field(
        1024, gt=0, description="open HTTP connections (new ones are closed at once beyond)"
    )
    header_timeout_s: float = Field(
        10.0, gt=0.0, description="time a connection has to send a request's headers"
    )
    response_write_timeout_s: float = Field(
        30.0, gt=0.0, description="time a client may leave a response unread before it is cut"
    )
    min_body_chunk_bytes: int = Field(
        256, ge=0, description="mean body chunk size below which a many-chunk upload is cut"
    )

    # --- server -----------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    log_level: str = "info"
    access_log: bool = Field(
        True, description="one INFO line per request: method, path, status, ms, request id"
    )

    # --- video and live streams (docs/video.md) --------------------------------------------
    track_det_every: int = Field(
        5, ge=1, description="run the person detector every this many frames (1 = every frame)"
    )
    track_match_threshold: float = Field(
        0.3, ge=0.0, le=1.0, description="least max(OKS, box IoU) for a person to continue a track"
    )
    track_grace_frames: int = Field(
        15, ge=0, description="frames a track may go unmatched before it dies (same id within)"
    )
    track_max_tracks: int = Field(30, gt=0, description="most live tracks per stream")
    track_redetect_score: float = Field(
        0.35, ge=0.0, le=1.0, description="a track's keypoint confidence below which to re-detect"
    )
    smooth: bool = Field(True, description="One-Euro smoothing of tracked keypoints")
    smooth_min_cutoff: float = Field(1.0, gt=0.0, description="One-Euro minimum cutoff (Hz)")
    smooth_beta: float = Field(
        30.0, ge=0.0, description="One-Euro speed coefficient (per box diagonal per second)"
    )
    smooth_d_cutoff: float = Field(1.0, gt=0.0, description="One-Euro derivative cutoff (Hz)")
    video_max_bytes: int = Field(200 * 1024 * 1024, gt=0, description="largest video upload")
    video_max_duration_s: float = Field(
        600.0, gt=0.0, description="longest video (container header) accepted"
    )
    video_max_frames: int = Field(
        36_000, gt=0, description="most frames a video may declare or decode"
    )
    video_codecs: list[str] = Field(
        default_factory=lambda: ["h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg"],
        description="video codecs accepted (FFmpeg names)",
    )
    video_max_jobs: int = Field(
        16, gt=0, description="videos + live streams processed at once in total (503 beyond)"
    )
    video_max_jobs_per_client: int = Field(
        4, gt=0, description="videos + live streams at once per client (503 beyond)"
    )
    stream_max_fps: float = Field(
        30.0, gt=0.0, description="frames/s a live stream may send (faster frames are skipped)"
    )
    stream_idle_timeout_s: float = Field(
        30.0, gt=0.0, description="a live stream that sends nothing this long is closed"
    )
    demo: bool = Field(False, description="serve the browser demo page at /demo")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            _PlainTextEnvSource(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )

    @model_validator(mode="before")
    @classmethod
    def _split_lists(cls, data: Any) -> Any:
        """Text given to a list setting (environment or keyword) → :func:`split_list`."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, info in cls.model_fields.items():
            value = out.get(name)
            if isinstance(value, str) and get_origin(info.annotation) in (list, tuple, set):
                try:
                    out[name] = split_list(value)
                except ValueError as exc:  # name the setting: this check has no field location
                    raise ValueError(f"{name} ({ENV_PREFIX}{name.upper()}): {exc}") from None
        return out

    @field_validator("pose_models")
    @classmethod
    def _weighted_entries(cls, v: list[str]) -> list[str]:
        for entry in v:
            split_weight(entry)
        return v

    @property
    def pose_model_files(self) -> list[str]:
        """``pose_models`` without their ``@weight`` suffixes."""
        return [split_weight(e)[0] for e in self.pose_models]

    @property
    def pose_model_weights(self) -> list[float]:
        """The ensemble weight of each ``pose_models`` entry (1 unless ``file@weight``)."""
        return [split_weight(e)[1] for e in self.pose_models]

    @field_validator("decode")
    @classmethod
    def _known_decoder(cls, v: str | None) -> str | None:
        from darkpose.service.core.codec import DECODERS

        if v is not None and v not in DECODERS:
            raise ValueError(f"expected one of {', '.join(DECODERS)}, got {v!r}")
        return v

    @field_validator("blur_kernel")
    @classmethod
    def _odd_kernel(cls, v: int | None) -> int | None:
        if v is not None and v % 2 == 0:
            raise ValueError(f"expected an odd kernel size, got {v}")
        return v

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.default_max_persons > self.max_persons:
            raise ValueError(
                f"default_max_persons: expected at most max_persons ({self.max_persons}), "
                f"got {self.default_max_persons}"
            )
        return self

    @property
    def image_limits(self) -> ImageLimits:
        """The keyword limits of :func:`darkpose.service.core.io.decode_image` / ``read_image_file``
        (a fresh dict).  ``min_side`` is 1: a valid image with a side under ``min_image_side``
        decodes, and its callers answer it with no persons rather than refuse it."""
        return {
            "max_bytes": self.max_image_bytes,
            "max_pixels": self.max_image_pixels,
            "max_side": self.max_image_side,
            "min_side": 1,
            "max_jpeg_scans": self.max_jpeg_scans,
            "max_png_chunks": self.max_png_chunks,
        }

    @property
    def video_limits(self) -> dict[str, Any]:
        """The keyword limits of :func:`darkpose.service.core.video.open_video` (a fresh dict):
        the codec allow-list, duration and frame count, and the image limits on frame size."""
        return {
            "codecs": list(self.video_codecs),
            "max_duration_s": self.video_max_duration_s,
            "max_frames": self.video_max_frames,
            "max_side": self.max_image_side,
            "max_pixels": self.max_image_pixels,
        }

    def resolve_model(self, name: str) -> Path:
        """``name`` if absolute, else ``model_dir / name``."""
        p = Path(name)
        return p if p.is_absolute() else self.model_dir / p

    def model_dir_hint(self, name: str | Path | None = None) -> str:
        """How to point the service at the model ``name`` (as the user gave it), for "model
        file not found" errors; an absolute ``name`` is not read from the model directory."""
        if name is not None and Path(name).is_absolute():
            return "; nothing is at that absolute path: check it, or give a name relative to " + (
                f"{ENV_PREFIX}MODEL_DIR ({self.model_dir})"
            )
        if self.model_dir.is_dir():
            return (
                f"; relative model names are read from {self.model_dir}: set "
                f"{ENV_PREFIX}MODEL_DIR to the directory holding the ONNX files, or give the "
                "file's absolute path"
            )
        return (
            f"; the model directory {self.model_dir} does not exist: set "
            f"{ENV_PREFIX}MODEL_DIR=/path/to/models, the directory holding the ONNX files "
            f"(unset, the packaged models in {ZOO_DIR} are used)"
        )


#: ``DARKPOSE_*`` environment variables that are not :class:`Settings` but are read elsewhere:
#: the test switch of ``.ci/run`` and the variables docker compose and the Ray head script
#: substitute.  :func:`unknown_env_warnings` leaves them alone (the ``htc`` detector's
#: ``DARKPOSE_HTC_*`` come from its own settings class).
ENV_NOT_SETTINGS: frozenset[str] = frozenset(
    {
        "DARKPOSE_REQUIRE_TOOLS",
        "DARKPOSE_MODELS",
        "DARKPOSE_MEM_LIMIT",
        "DARKPOSE_HTTP_PORT",
        "DARKPOSE_GPU_HTTP_PORT",
        "DARKPOSE_RAY_HTTP_PORT",
        "DARKPOSE_SERVE_DEPLOY_ATTEMPTS",
        "DARKPOSE_SERVE_DEPLOY_DELAY_S",
    }
)


def setting_env_names() -> list[str]:
    """Every environment variable a setting reads: ``DARKPOSE_<FIELD>`` of :class:`Settings`
    and ``DARKPOSE_HTC_<FIELD>`` of the ``htc`` detector's defaults."""
    from darkpose.service.runtime.detector_config import HtcSettings

    names = [ENV_PREFIX + name.upper() for name in Settings.model_fields]
    prefix = str(HtcSettings.model_config.get("env_prefix", ""))
    return names + [prefix + name.upper() for name in HtcSettings.model_fields]


def unknown_env_warnings(environ: Mapping[str, str]) -> list[str]:
    """One message per ``DARKPOSE_*`` variable of ``environ`` that no setting reads (a typo is
    silently ignored otherwise), naming the closest setting when one is close."""
    import difflib

    known = setting_env_names()
    ignored = set(known) | ENV_NOT_SETTINGS
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in known}  # the shared prefix
    out = []  # would make every name look close
    for var in sorted(environ):
        name = var.upper()
        if not name.startswith(ENV_PREFIX) or name in ignored:
            continue
        close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), suffixes, 1, 0.6)
        hint = f"; did you mean {suffixes[close[0]]}?" if close else "; see darkpose serve --help"
        out.append(f"environment: {var} is not a darkpose setting and is ignored{hint}")
    return out
