"""Service settings (pydantic-settings, environment prefix ``DARKPOSE_``).

Example: ``DARKPOSE_MODEL_DIR=/models DARKPOSE_PROVIDERS=cuda darkpose serve``.

List settings (``DARKPOSE_POSE_MODELS``) accept what a person types: one value
(``/path/m.onnx``), a comma list (``a.onnx,b.onnx``) or a JSON list (``["a.onnx", "b.onnx"]``).
:func:`settings_error_line` turns any settings error into one line (the CLI logs it and exits 2).
"""

from __future__ import annotations

import json
import math
import os
import re
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypedDict, get_origin

from pydantic import (
    Field,
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
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from darkpose.service.core.cards import ZOO_DIR
from darkpose.service.core.types import DecodeMethod

ENV_PREFIX = "DARKPOSE_"

# --- profiles (docs/accuracy.md#profiles) -----------------------------------------------------
#: The profile table: named bundles of settings (``DARKPOSE_PROFILE``), data, not code paths.
PROFILES_FILE = ZOO_DIR / "profiles.json"


@cache
def profiles_table() -> dict[str, Any]:
    """The parsed :data:`PROFILES_FILE`: ``{"default": name, "profiles": {name:
    {"description": str, "settings": {setting: value}}}}``."""
    table: dict[str, Any] = json.loads(PROFILES_FILE.read_text(encoding="utf-8"))
    return table


def profile_names() -> list[str]:
    """The profile names of :data:`PROFILES_FILE` (``fast``, ``balanced``, ``accurate``)."""
    return list(profiles_table()["profiles"])


def profile_settings(name: str) -> dict[str, Any]:
    """The settings profile ``name`` sets (a fresh dict); ``ValueError`` ("expected one of
    ..., got ...") for an unknown name."""
    profiles = profiles_table()["profiles"]
    if name not in profiles:
        raise ValueError(f"profile: expected one of {', '.join(profiles)}, got {name!r}")
    return dict(profiles[name]["settings"])


def profile_governed() -> list[str]:
    """Every setting some profile sets (in table order)."""
    names: dict[str, None] = {}
    for entry in profiles_table()["profiles"].values():
        names.update(dict.fromkeys(entry["settings"]))
    return list(names)


def _default_profile_value(name: str) -> Any:
    """The built-in default of a profile-governed setting: the default profile's value."""
    return profile_settings(profiles_table()["default"])[name]


#: The settings the current validation took from the profile (before → after validator).
_FROM_PROFILE: ContextVar[frozenset[str]] = ContextVar("darkpose_from_profile", default=frozenset())


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


def settings_error_line(exc: Exception) -> str:
    """One line for a settings error (``ValidationError`` or ``SettingsError``), naming the
    setting and its environment variable: ``settings: det_score_threshold
    (DARKPOSE_DET_SCORE_THRESHOLD): expected ..., got 2``."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ())]
            msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            msg = msg.removeprefix("Input should be ")
            if not loc:  # a cross-field check: its message names the fields
                parts.append(msg)
                continue
            name = loc[0]
            got = err.get("input")
            got_s = json.dumps(got, default=str) if got is not None else "nothing"
            if len(got_s) > 80:
                got_s = got_s[:77] + "..."
            where = f"{'.'.join(loc)} ({ENV_PREFIX}{name.upper()})"
            parts.append(f"{where}: expected {msg[:1].lower() + msg[1:]}, got {got_s}")
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
    profile: str = Field(
        default_factory=lambda: str(profiles_table()["default"]),
        description="named bundle of accuracy/speed settings: fast | balanced | accurate "
        "(darkpose/zoo/profiles.json; docs: accuracy.md#profiles); a setting given explicitly "
        "(environment or keyword) overrides its profile value",
    )
    pose_models: list[str] = Field(
        default_factory=lambda: list(_default_profile_value("pose_models")),
        description="pose model file(s), relative to model_dir or absolute; several = ensemble "
        "(heatmaps averaged before decoding); 'file.onnx@0.7' gives a model a weight "
        "(default 1; the weights are normalised); default: the profile's (docs: "
        "accuracy.md#profiles)",
    )
    detector: str = Field(
        default_factory=lambda: str(_default_profile_value("detector")),
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
        None,
        ge=1,
        description="DARK blur kernel (odd); None = the model card's (docs: "
        "accuracy.md#blur-kernel)",
    )
    flip: bool = Field(
        default_factory=lambda: bool(_default_profile_value("flip")),
        description="flip test (mirrored crops averaged); default: the profile's "
        "(docs: accuracy.md#flip)",
    )
    flip_shift: bool = True
    det_score_threshold: float = Field(
        default_factory=lambda: float(_default_profile_value("det_score_threshold")),
        ge=0.0,
        le=1.0,
        description="serving detector score threshold; default: the profile's, the best F1 of "
        "persons matched at OKS >= 0.5 for its detector (docs: accuracy.md#serving-threshold)",
    )
    det_nms_iou: float = Field(
        0.65, gt=0.0, le=1.0, description="detector NMS IoU (docs: accuracy.md#nms)"
    )
    eval_det_score_threshold: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="detector score threshold of `darkpose eval` (COCO protocol: low); serving "
        "uses det_score_threshold (docs: accuracy.md#eval-threshold)",
    )
    oks_nms_threshold: float = Field(
        0.9, gt=0.0, le=1.0, description="OKS-NMS threshold (docs: accuracy.md#did-not-help)"
    )
    keypoint_score_threshold: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="keypoints above it count in the rescored person score (docs: "
        "accuracy.md#did-not-help)",
    )
    box_padding: float = Field(
        1.25, gt=0.0, description="box enlargement before cropping (HRNet/mmpose; not re-measured)"
    )

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

    _from_profile: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        """Fill every setting the profile sets and the caller did not (environment or keyword)
        from :data:`PROFILES_FILE`; remembers which (:meth:`setting_sources`)."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        name = str(out.get("profile", profiles_table()["default"]))
        if name not in profile_names():
            raise ValueError(
                f"profile ({ENV_PREFIX}PROFILE): expected one of {', '.join(profile_names())}, "
                f"got {name!r}"
            )
        filled = []
        for key, value in profile_settings(name).items():
            if key not in out:
                out[key] = value
                filled.append(key)
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
        if name in self.model_fields_set:
            env = ENV_PREFIX + name.upper()
            return f"from {env}" if env in os.environ else "set explicitly"
        return "default"

    def profile_report(self) -> dict[str, Any]:
        """The profile and every profile-governed setting's value and source, for
        ``/v1/models``, the startup log and ``serve --help``: ``{"name": "balanced",
        "settings": {"flip": {"value": False, "source": "from profile balanced"}, ...}}``."""
        return {
            "name": self.profile,
            "settings": {
                n: {"value": getattr(self, n), "source": self.setting_source(n)}
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
                out[name] = split_list(value)
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

    def resolve_model(self, name: str) -> Path:
        """``name`` if absolute, else ``model_dir / name``."""
        p = Path(name)
        return p if p.is_absolute() else self.model_dir / p

    def model_dir_hint(self) -> str:
        """How to point the service at its models, for "model file not found" errors."""
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
