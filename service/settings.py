"""Service settings (pydantic-settings, environment prefix ``DARKPOSE_``).

Example: ``DARKPOSE_MODEL_DIR=/models DARKPOSE_PROVIDERS=cuda darkpose serve``.

List settings (``DARKPOSE_POSE_MODELS``) accept what a person types: one value
(``/path/m.onnx``), a comma list (``a.onnx,b.onnx``) or a JSON list (``["a.onnx", "b.onnx"]``).
:func:`settings_error_line` turns any settings error into one line (the CLI logs it and exits 2).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, TypedDict

from pydantic import (
    BeforeValidator,
    Field,
    IPvAnyNetwork,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from darkpose.service.core.cards import ZOO_DIR
from darkpose.service.core.choices import (
    Backend,
    FloatPrecision,
    IoU,
    Probability,
    Providers,
)
from darkpose.service.core.errors import describe_validation_errors
from darkpose.service.core.nms import DEFAULT_PRE_NMS_TOPK
from darkpose.service.core.options import SETTING_NAMES, PipelineOptions
from darkpose.service.core.profiles import (
    default_profile_value,
    profile_governed,
    profile_names,
    profile_settings,
    profiles_table,
)

ENV_PREFIX = "DARKPOSE_"
#: The pipeline option behind each setting name (``default_max_persons`` → ``max_persons``).
_OPTION_OF: dict[str, str] = {setting: option for option, setting in SETTING_NAMES.items()}

#: The settings the current validation took from the profile (before → after validator).
_FROM_PROFILE: ContextVar[frozenset[str]] = ContextVar("darkpose_from_profile", default=frozenset())


def split_list(value: str) -> list[Any]:
    """``'a,b'`` → ``['a', 'b']``, ``'a'`` → ``['a']``, ``'["a", "b"]'`` (JSON) → its list."""
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"expected a plain value, a comma list or a JSON list, got {text[:60]!r}, "
                f"which does not parse as JSON ({exc.msg})"
            ) from None
        if not isinstance(parsed, list):
            raise ValueError(f"expected a JSON list, got {text[:60]!r}")
        return parsed
    return [part.strip() for part in text.split(",") if part.strip()]


def _split_text(value: Any) -> Any:
    return split_list(value) if isinstance(value, str) else value


#: A list setting as a person types it (environment or keyword): one value, a comma list or a
#: JSON list (:func:`split_list`; ``NoDecode``: the environment source leaves the text to it).
TextList = Annotated[list[str], NoDecode, BeforeValidator(_split_text)]


def default_of(name: str) -> Any:
    """The built-in default of the :class:`Settings` field ``name`` (no environment): what
    ``serve --help``, the Ray app and the configuration reference show and use."""
    field = setting_fields()[name]
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default


def settings_error_line(exc: Exception) -> str:
    """One line for a settings error (``ValidationError`` or ``SettingsError``), naming the
    setting and its environment variable: ``settings: det_score_threshold
    (DARKPOSE_DET_SCORE_THRESHOLD): expected a number at most 1.0, got 2``."""
    if isinstance(exc, ValidationError):
        return "settings: " + describe_validation_errors(exc.errors(), _setting_place)
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


def _setting_place(loc: Any) -> str:
    """``("pipeline", "flip")`` → ``flip (DARKPOSE_FLIP)``; ``("port",)`` → ``port
    (DARKPOSE_PORT)``: a validation error's place as the setting a user sets."""
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] == "pipeline" and parts[1] in SETTING_NAMES:
        parts = [SETTING_NAMES[parts[1]], *parts[2:]]
    return f"{'.'.join(parts)} ({ENV_PREFIX}{parts[0].upper()})"


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, with each pipeline option read from its own
    variable (``DARKPOSE_FLIP``, ``DARKPOSE_DEFAULT_MAX_PERSONS``) for ``Settings.pipeline``
    instead of one ``DARKPOSE_PIPELINE``."""

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        data.pop("pipeline", None)
        for setting in _OPTION_OF:
            key = f"{self.env_prefix}{setting}"
            value = self.env_vars.get(key if self.case_sensitive else key.lower())
            if value is not None:
                data[setting] = value
        return data


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
    profile: str = Field(
        default_factory=lambda: str(profiles_table()["default"]),
        description="named bundle of accuracy/speed settings: fast | balanced | accurate "
        "(darkpose/zoo/profiles.json; docs: accuracy.md#profiles); a setting given explicitly "
        "(environment or keyword) overrides its profile value",
    )
    pose_models: TextList = Field(
        default_factory=lambda: list(default_profile_value("pose_models")),
        description="pose model file(s), relative to model_dir or absolute; several = ensemble "
        "(heatmaps averaged before decoding); 'file.onnx@0.7' gives a model a weight "
        "(default 1; the weights are normalised); default: the profile's (docs: "
        "accuracy.md#profiles)",
    )
    detector: str = Field(
        default_factory=lambda: str(default_profile_value("detector")),
        description="detector config: picodet | yolox | onnx(model=...) | htc | chips(...) | "
        "fused(picodet,yolox,...); default: the profile's (docs: accuracy.md#detector)",
    )
    detector_model: str = Field("yolox_nano_416.onnx", description="YOLOX ONNX file (yolox)")
    picodet_model: str = Field(
        "picodet_s_416_pedestrian.onnx", description="PicoDet ONNX file (picodet)"
    )
    det_max_detections: int = Field(
        100,
        gt=0,
        description="the detector's own cap on boxes per image (before max_persons); every box "
        "up to the 20th measurably counts (docs: accuracy.md#cap)",
    )
    providers: Providers = Field(
        "auto",
        description="onnxruntime execution providers: auto = CUDA when a session gets it, else "
        "CPU; cuda = every session must run on CUDA (else the start fails); cpu = CPU only",
    )
    intra_op_threads: int = Field(
        0, ge=0, description="onnxruntime intra-op threads per session; 0 = onnxruntime default"
    )
    inter_op_threads: int = Field(
        0, ge=0, description="onnxruntime inter-op threads per session; 0 = onnxruntime default"
    )

    # --- runtime backend / precision (docs/models.md "Backends and precision") ----------
    pose_backend: Backend | None = Field(
        None,
        description="pose-model runtime (None = the model card's, onnxruntime by default); "
        "openvino = optional extra, CPU only",
    )
    pose_precision: FloatPrecision | None = Field(
        None,
        description="pose float precision (None = the card's); bf16 needs backend openvino and "
        "a CPU with native bf16; int8 = a model file from `darkpose quantize`",
    )
    detector_backend: Backend | None = Field(
        None, description="detector runtime (None = the card's)"
    )
    detector_precision: FloatPrecision | None = Field(
        None, description="detector float precision (None = the card's)"
    )

    # --- pipeline options (core/options.py; each read from DARKPOSE_<its setting name>) -------
    pipeline: PipelineOptions = Field(
        default_factory=PipelineOptions,
        description="the pipeline options, each a setting of its own (setting_fields)",
    )
    det_nms_iou: IoU = Field(
        0.65,
        description="IoU of the detectors' box NMS where neither the config nor the card sets "
        "one (docs: accuracy.md#nms)",
    )
    eval_det_score_threshold: Probability = Field(
        0.05,
        description="detector score threshold of `darkpose eval` (COCO protocol: low); serving "
        "uses det_score_threshold (docs: accuracy.md#eval-threshold)",
    )

    # --- limits ---------------------------------------------------------------------------
    max_image_bytes: int = Field(
        20 * 1024 * 1024, gt=0, description="largest request body / image file in bytes (413)"
    )
    max_image_pixels: int = Field(
        40_000_000, gt=0, description="most pixels of an image, read from its header (413)"
    )
    max_image_side: int = Field(
        16384, gt=0, description="longest image side in pixels, read from its header (413)"
    )
    min_image_side: int = Field(
        8, gt=0, description="a valid image with a shorter side has no persons (not an error)"
    )
    max_persons: int = Field(100, gt=0, description="upper bound of a request's max_persons")
    working_side: int = Field(
        2000,
        ge=0,
        description="photos with a longer side are worked on at a reduced size keeping at least "
        "this longest side (JPEG: DCT-scaled decode) and answered in original coordinates; "
        "0 = full resolution",
    )
    min_score_threshold: Probability = Field(
        0.05,
        description="lowest score_threshold a /pose request may ask for (422 below; "
        "`darkpose eval` uses eval_det_score_threshold)",
    )
    det_pre_nms_topk: int = Field(
        DEFAULT_PRE_NMS_TOPK,
        gt=0,
        description="detector candidates (highest scores) kept before NMS; bounds its cost",
    )

    # --- batching / concurrency --------------------------------------------------------------
    batching: bool = Field(
        True, description="micro-batch the pose crops of concurrent requests into one model call"
    )
    max_batch: int = Field(32, gt=0, description="most crops in one micro-batched model call")
    max_wait_ms: float = Field(
        2.0, ge=0.0, description="how long a batch waits for more crops before it runs"
    )
    queue_size: int = Field(512, gt=0, description="max crops waiting for the pose model")
    batch_workers: int = Field(
        2, gt=0, description="micro-batcher threads: pose-model calls that may run at once"
    )
    max_inflight_requests: int = Field(
        64, gt=0, description="requests being worked on at once; more are refused 503"
    )
    retry_after_s: float = Field(
        1.0, gt=0.0, description="Retry-After of 503 / per-client 429 answers, in seconds"
    )
    request_timeout_s: float = Field(
        30.0, gt=0.0, description="time a request body has to arrive (408 beyond)"
    )
    warmup: bool = Field(
        True, description="run the models once at start, before /readyz answers 200"
    )

    # --- access control, fair use, edge limits (service/api/access_control; docs/security.md) -
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
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = Field(
        default_factory=list,
        description="comma-separated proxy IPs/CIDRs whose X-Forwarded-For is honoured",
    )
    key_id_secret: SecretStr | None = Field(
        None,
        description="secret keying the API key ids in logs and metrics; share it between "
        "replicas (unset: random per process)",
    )
    allow_short_keys: bool = Field(
        False, description="accept API keys shorter than 16 characters (refused otherwise)"
    )
    auth_failure_rate: float = Field(
        1.0, ge=0.0, description="failed authentications/s per client address; 0 = off"
    )
    auth_failure_burst: int = Field(
        20, gt=0, description="failed authentications an address may make at once (then 429)"
    )
    max_url_bytes: int = Field(
        8192, gt=0, description="longest request target (URL) in bytes (414 beyond)"
    )
    max_header_bytes: int = Field(
        8192, gt=0, description="longest single header line in bytes (431 beyond)"
    )
    max_headers_bytes: int = Field(
        32768, gt=0, description="most bytes of a request head (request line + headers; 431)"
    )
    max_header_count: int = Field(100, gt=0, description="most headers in a request (431)")

    # --- hostile input and slow clients (docs/security.md) ------------------------------------
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
    host: str = Field("127.0.0.1", description="bind address of darkpose serve")
    port: int = Field(8000, gt=0, lt=65536, description="port of darkpose serve")
    log_level: str = Field(
        "info", description="level of the service's and uvicorn's loggers (debug … critical)"
    )
    access_log: bool = Field(
        True, description="one INFO line per request: method, path, status, ms, request id"
    )

    # --- video and live streams (docs/video.md) --------------------------------------------
    track_det_every: int = Field(
        5, ge=1, description="run the person detector every this many frames (1 = every frame)"
    )
    track_match_threshold: Probability = Field(
        0.3, description="least max(OKS, box IoU) for a person to continue a track"
    )
    track_grace_frames: int = Field(
        15, ge=0, description="frames a track may go unmatched before it dies (same id within)"
    )
    track_max_tracks: int = Field(30, gt=0, description="most live tracks per stream")
    track_redetect_score: Probability = Field(
        0.35, description="a track's keypoint confidence below which to re-detect"
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
    video_codecs: TextList = Field(
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

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, v: Any) -> Any:
        """Addresses or CIDR networks: one value, a comma list or a JSON list (host bits
        allowed: ``10.0.0.1/8`` is ``10.0.0.0/8``)."""
        if isinstance(v, str):
            v = split_list(v)
        if not isinstance(v, list):
            return v
        out = []
        for item in v:
            try:
                out.append(ipaddress.ip_network(str(item).strip(), strict=False))
            except ValueError:
                raise ValueError("addresses or CIDR networks (e.g. 10.0.0.0/8)") from None
        return out

    _from_profile: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _EnvSource(settings_cls), dotenv_settings, file_secret_settings)

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        """Gather the pipeline options given by their setting names (environment or keyword:
        ``flip=True``, ``DARKPOSE_DEFAULT_MAX_PERSONS=5``) into ``pipeline``, then fill every
        setting the profile sets and the caller did not from the profile table
        (:mod:`darkpose.service.core.profiles`); remembers which (:meth:`setting_source`)."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        given = out.pop("pipeline", None)
        if isinstance(given, PipelineOptions):
            given = {k: getattr(given, k) for k in given.model_fields_set}
        options = dict(given) if isinstance(given, Mapping) else {}
        for setting, option in _OPTION_OF.items():
            if setting in out:
                options[option] = out.pop(setting)
        name = str(out.get("profile", profiles_table()["default"]))
        if name not in profile_names():
            raise ValueError(
                f"profile ({ENV_PREFIX}PROFILE): expected one of {', '.join(profile_names())}, "
                f"got {name!r}"
            )
        filled = []
        for key, value in profile_settings(name).items():
            target, field = (options, _OPTION_OF[key]) if key in _OPTION_OF else (out, key)
            if field not in target:
                target[field] = value
                filled.append(key)
        out["pipeline"] = options
        _FROM_PROFILE.set(frozenset(filled))
        return out

    @model_validator(mode="after")
    def _remember_profile(self) -> Settings:
        self._from_profile = _FROM_PROFILE.get()
        _FROM_PROFILE.set(frozenset())
        return self

    def setting_source(self, name: str) -> str:
        """Where setting ``name``'s value came from: ``from profile <p>``, ``from
        DARKPOSE_<NAME>`` (environment), ``set explicitly`` (keyword) or ``default``."""
        if name in self._from_profile:
            return f"from profile {self.profile}"
        option = _OPTION_OF.get(name)
        given = self.pipeline.model_fields_set if option else self.model_fields_set
        if (option or name) in given:
            env = ENV_PREFIX + name.upper()
            return f"from {env}" if env in os.environ else "set explicitly"
        return "default"

    def value(self, name: str) -> Any:
        """The value of the setting ``name`` (a pipeline option by its setting name too:
        ``value("default_max_persons")`` is ``pipeline.max_persons``)."""
        option = _OPTION_OF.get(name)
        return getattr(self.pipeline, option) if option else getattr(self, name)

    def profile_report(self) -> dict[str, Any]:
        """The profile and every profile-governed setting's value and source, for
        ``/v1/models``, the startup log and ``serve --help``: ``{"name": "balanced",
        "settings": {"flip": {"value": False, "source": "from profile balanced"}, ...}}``."""
        return {
            "name": self.profile,
            "settings": {
                n: {"value": self.value(n), "source": self.setting_source(n)}
                for n in profile_governed()
            },
        }

    def profile_line(self) -> str:
        """One log line: ``profile balanced: detector=picodet (from profile balanced), ...``."""
        parts = []
        for n, entry in self.profile_report()["settings"].items():
            v = entry["value"]
            shown = ",".join(map(str, v)) if isinstance(v, list) else str(v)
            parts.append(f"{n}={shown} ({entry['source']})")
        return f"profile {self.profile}: " + ", ".join(parts)

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

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.pipeline.max_persons > self.max_persons:
            raise ValueError(
                f"default_max_persons: expected at most max_persons ({self.max_persons}), "
                f"got {self.pipeline.max_persons}"
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


@functools.cache
def setting_fields() -> dict[str, FieldInfo]:
    """Every setting a user sets (``DARKPOSE_<NAME>``, keyword ``<name>``) and its field, in
    the class's order, with the pipeline options (:class:`PipelineOptions`) under their
    setting names where ``pipeline`` stands: what ``serve --help``, the configuration reference
    and the unknown-variable check list."""
    out: dict[str, FieldInfo] = {}
    for name, field in Settings.model_fields.items():
        if name == "pipeline":
            for option, opt_field in PipelineOptions.model_fields.items():
                out[SETTING_NAMES[option]] = opt_field
        else:
            out[name] = field
    return out


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


def setting_env_names(*others: type[BaseSettings]) -> list[str]:
    """Every environment variable a setting reads: ``DARKPOSE_<FIELD>`` of :class:`Settings`
    and ``<prefix><FIELD>`` of each settings class of ``others`` (the ``htc`` detector's
    defaults, ``DARKPOSE_HTC_*``: the runtime passes them, this layer does not import it)."""
    names = [ENV_PREFIX + name.upper() for name in setting_fields()]
    for other in others:
        prefix = str(other.model_config.get("env_prefix", ""))
        names += [prefix + name.upper() for name in other.model_fields]
    return names


def unknown_env_warnings(environ: Mapping[str, str], *others: type[BaseSettings]) -> list[str]:
    """One message per ``DARKPOSE_*`` variable of ``environ`` that no setting (of
    :class:`Settings` or ``others``) reads (a typo is silently ignored otherwise), naming the
    closest setting when one is close."""
    import difflib

    known = setting_env_names(*others)
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
