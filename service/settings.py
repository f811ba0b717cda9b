"""Service settings (pydantic-settings, environment prefix ``DARKPOSE_``).

Example: ``DARKPOSE_MODEL_DIR=/models DARKPOSE_PROVIDERS=cuda darkpose serve``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypedDict

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.core.types import DecodeMethod

#: Repository root (this file is service/settings.py).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: ``../shared/models`` next to the checkout: the embedded default models.
DEFAULT_MODEL_DIR = (REPO_ROOT.parent / "shared" / "models").resolve()


class ImageLimits(TypedDict):
    """The keyword limits of :func:`service.core.io.decode_image` / ``read_image_file``."""

    max_bytes: int
    max_pixels: int
    max_side: int
    min_side: int


class Settings(BaseSettings):
    """All tunables of the pipeline and the HTTP service."""

    model_config = SettingsConfigDict(env_prefix="DARKPOSE_", env_file=None, extra="ignore")

    # --- models -----------------------------------------------------------------------------
    model_dir: Path = Field(DEFAULT_MODEL_DIR, description="directory holding the ONNX files")
    pose_models: list[str] = Field(
        default_factory=lambda: ["pose_simplepose_256x192.onnx"],
        description="pose model file(s), relative to model_dir or absolute; several = ensemble "
        "(heatmaps averaged before decoding)",
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

    # --- pipeline defaults ----------------------------------------------------------------
    decode: DecodeMethod = "dark"
    blur_kernel: int = Field(11, ge=1)
    flip: bool = False
    flip_shift: bool = True
    det_score_threshold: float = Field(0.3, ge=0.0, le=1.0)
    det_nms_iou: float = Field(0.65, gt=0.0, le=1.0)
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

    # --- server -----------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    log_level: str = "info"

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
        """The keyword limits of :func:`service.core.io.decode_image` / ``read_image_file``."""
        return {
            "max_bytes": self.max_image_bytes,
            "max_pixels": self.max_image_pixels,
            "max_side": self.max_image_side,
            "min_side": self.min_image_side,
        }

    def resolve_model(self, name: str) -> Path:
        """``name`` if absolute, else ``model_dir / name``."""
        p = Path(name)
        return p if p.is_absolute() else self.model_dir / p
