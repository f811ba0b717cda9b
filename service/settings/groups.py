"""The settings by job: each group is a pydantic model that
:class:`darkpose.service.settings.Settings` inherits, so every setting keeps its one
environment variable (``DARKPOSE_<NAME>``) and attribute (``settings.<name>``).

The pipeline options are not here: they are :class:`darkpose.service.core.options.PipelineOptions`,
held by ``Settings.pipeline``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, IPvAnyNetwork, SecretStr, field_validator
from pydantic_settings import NoDecode

from darkpose.service.core.cards import ZOO_DIR
from darkpose.service.core.choices import Backend, FloatPrecision, IoU, Probability, Providers
from darkpose.service.core.io import DecodeLimits
from darkpose.service.core.nms import DEFAULT_PRE_NMS_TOPK
from darkpose.service.core.profiles import default_profile_value, profiles_table
from darkpose.service.core.tracking import TrackerConfig
from darkpose.service.settings.text import ENV_PREFIX, TextList, split_list, split_weight

__all__ = [
    "AccessSettings",
    "BatchingSettings",
    "HostileInputSettings",
    "LimitSettings",
    "ModelSettings",
    "ServerSettings",
    "VideoSettings",
]

#: The decoders' own limits (darkpose.service.core.io): the image settings start there.
_DECODE = DecodeLimits()
#: The tracker's own defaults (darkpose.service.core.tracking): the video settings start there.
_TRACK = TrackerConfig()


class ModelSettings(BaseModel):
    """Which models run and on what: model files, profile, detector, runtime and precision."""

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


class LimitSettings(BaseModel):
    """What an image request may be and ask for (413 / 422 beyond)."""

    max_image_bytes: int = Field(
        _DECODE.max_bytes, gt=0, description="largest request body / image file in bytes (413)"
    )
    max_image_pixels: int = Field(
        _DECODE.max_pixels, gt=0, description="most pixels of an image, read from its header (413)"
    )
    max_image_side: int = Field(
        _DECODE.max_side,
        gt=0,
        description="longest image side in pixels, read from its header (413)",
    )
    min_image_side: int = Field(
        _DECODE.min_side,
        gt=0,
        description="a valid image with a shorter side has no persons (not an error)",
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


class BatchingSettings(BaseModel):
    """Micro-batching and how much work runs at once (503 + Retry-After beyond)."""

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


class AccessSettings(BaseModel):
    """API keys, fair use per client, trusted proxies and the limits of a request head
    (docs/security.md)."""

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


class HostileInputSettings(BaseModel):
    """Bounds against costly files and slow or vanishing clients (docs/security.md)."""

    max_jpeg_scans: int = Field(
        _DECODE.max_jpeg_scans, gt=0, description="most scans (SOS) a JPEG may have"
    )
    max_png_chunks: int = Field(
        _DECODE.max_png_chunks, gt=0, description="most chunks a PNG may have"
    )
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


class ServerSettings(BaseModel):
    """Where ``darkpose serve`` listens and what it logs."""

    host: str = Field("127.0.0.1", description="bind address of darkpose serve")
    port: int = Field(8000, gt=0, lt=65536, description="port of darkpose serve")
    log_level: str = Field(
        "info", description="level of the service's and uvicorn's loggers (debug … critical)"
    )
    access_log: bool = Field(
        True, description="one INFO line per request: method, path, status, ms, request id"
    )


class VideoSettings(BaseModel):
    """Tracking, smoothing and the limits of videos and live streams (docs/video.md)."""

    track_det_every: int = Field(
        _TRACK.det_every,
        ge=1,
        description="run the person detector every this many frames (1 = every frame)",
    )
    track_match_threshold: Probability = Field(
        _TRACK.match_threshold,
        description="least max(OKS, box IoU) for a person to continue a track",
    )
    track_grace_frames: int = Field(
        _TRACK.grace_frames,
        ge=0,
        description="frames a track may go unmatched before it dies (same id within)",
    )
    track_max_tracks: int = Field(
        _TRACK.max_tracks, gt=0, description="most live tracks per stream"
    )
    track_redetect_score: Probability = Field(
        _TRACK.redetect_score,
        description="a track's keypoint confidence below which to re-detect",
    )
    smooth: bool = Field(_TRACK.smoothing, description="One-Euro smoothing of tracked keypoints")
    smooth_min_cutoff: float = Field(
        _TRACK.min_cutoff, gt=0.0, description="One-Euro minimum cutoff (Hz)"
    )
    smooth_beta: float = Field(
        _TRACK.beta,
        ge=0.0,
        description="One-Euro speed coefficient (per box diagonal per second)",
    )
    smooth_d_cutoff: float = Field(
        _TRACK.d_cutoff, gt=0.0, description="One-Euro derivative cutoff (Hz)"
    )
    smooth_keypoint_speed: float = Field(
        _TRACK.keypoint_speed,
        ge=0.0,
        description="weight of a keypoint's own speed (relative to the person's median "
        "motion) in opening its smoothing cutoff; 0 = the shared speed alone (smoother, limbs "
        "lag)",
    )
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
