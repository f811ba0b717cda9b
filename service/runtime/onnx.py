"""onnxruntime session factory and small ONNX graph helpers.

``create_session`` picks execution providers from the ``providers`` setting
(``auto`` = CUDA when onnxruntime has it, else CPU; ``cpu``; ``cuda`` = CUDA or a
:class:`~darkpose.service.core.errors.ModelError`), applies the thread settings and logs the
providers the
session actually got.  ``cuda`` is checked on the real session (``session.get_providers()``):
onnxruntime-gpu lists CUDA as available whenever it was compiled in and silently falls back to
the CPU when the CUDA libraries or the device are missing, so a session without CUDA is a
``ModelError`` there.  ``auto`` runs on the CPU then, with one warning per process (a CPU-only
onnxruntime build runs on the CPU with no warning: a DEBUG line says so).

``make_batch_dynamic`` renames a fixed batch dimension (dim 0 of every graph input/output) to a
symbolic ``dim_param`` so that a model exported with batch 1 runs batched.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import onnx
import onnxruntime as ort

from darkpose.service.core.choices import BACKENDS, FLOAT_PRECISIONS
from darkpose.service.core.errors import ModelError

logger = logging.getLogger(__name__)


CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

#: Symbolic name given to the batch dimension by :func:`make_batch_dynamic`.
BATCH_DIM = "batch"

_fallback_lock = threading.Lock()
_fallback_warned = False


def ort_cuda_version() -> str | None:
    """The CUDA version this onnxruntime build was compiled for (``'12.8'``), ``None`` for a
    build without CUDA (onnxruntime-gpu ≥ 1.21 records it in ``capi/build_and_package_info``)."""
    try:
        from onnxruntime.capi import build_and_package_info as info  # type: ignore[import-untyped]
    except ImportError:
        return None
    version = getattr(info, "cuda_version", None)
    return str(version) if version else None


def cuda_diagnosis() -> str:
    """One line on why CUDA may not load: the build's CUDA version vs the CUDA runtime of the
    image (``CUDA_VERSION``, set by the nvidia/cuda base images)."""
    built = ort_cuda_version()
    runtime = os.environ.get("CUDA_VERSION")
    parts = [
        f"onnxruntime {ort.__version__} built for CUDA {built}"
        if built
        else f"onnxruntime {ort.__version__} built without CUDA"
    ]
    if runtime:
        parts.append(f"CUDA runtime {runtime} in this image")
    provider_lib = cuda_provider_library()
    if built and provider_lib.is_file():
        try:  # the dynamic loader names the first missing library
            load_cuda_provider_library(provider_lib)
        except OSError as exc:
            parts.append(f"missing library: {' '.join(str(exc).split())}")
        else:
            parts.append("CUDA libraries load: no visible GPU or a driver too old?")
    elif built:
        parts.append("check the NVIDIA driver, a visible GPU and the CUDA/cuDNN libraries")
    else:
        parts.append("install the [gpu] extra (onnxruntime-gpu) for CUDA")
    return "; ".join(parts)


def cuda_provider_library() -> Path:
    """Where onnxruntime keeps its CUDA provider library (present in onnxruntime-gpu only)."""
    return Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"


def load_cuda_provider_library(provider_lib: Path) -> None:
    """``dlopen`` onnxruntime's CUDA provider library the way onnxruntime does (its host
    symbols come from ``libonnxruntime_providers_shared.so``, loaded globally first), which
    resolves every CUDA/cuDNN library and symbol it needs; no GPU needed.  ``OSError`` names
    the first missing library or symbol."""
    import ctypes

    shared = provider_lib.with_name("libonnxruntime_providers_shared.so")
    if shared.is_file():
        ctypes.CDLL(str(shared), mode=ctypes.RTLD_GLOBAL)
    ctypes.CDLL(str(provider_lib))


def warn_cpu_fallback_once(reason: str, level: int = logging.WARNING) -> bool:
    """Log the ``providers=auto`` CPU fallback once per process at ``level`` (WARNING: a GPU
    install whose CUDA did not load; DEBUG: a CPU build, where the CPU is the normal path);
    True when this call logged."""
    global _fallback_warned
    with _fallback_lock:
        if _fallback_warned:
            return False
        _fallback_warned = True
    logger.log(level, "providers=auto: running on %s, %s", CPU, reason)
    return True


def resolve_providers(providers: str) -> list[str]:
    """Execution provider list for a ``providers`` setting (``auto`` | ``cpu`` | ``cuda``).

    Raises :class:`ModelError` for ``cuda`` when this onnxruntime build has no CUDA provider and
    :class:`ModelError` for an unknown setting.
    """
    available = ort.get_available_providers()
    if providers == "cpu":
        return [CPU]
    if providers == "cuda":
        if CUDA not in available:
            raise ModelError(
                f"providers: expected an onnxruntime build with {CUDA} for 'cuda', got only "
                f"{available} (install onnxruntime-gpu or use providers=auto|cpu)"
            )
        return [CUDA, CPU]
    if providers == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise ModelError(f"providers: expected auto, cpu or cuda, got {providers!r}")


def read_model_bytes(path: str | Path) -> bytes:
    """The bytes of the model file ``path``; :class:`ModelError` when it cannot be read."""
    p = Path(path)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise ModelError(f"model file: expected a readable ONNX file, got {p} ({exc})") from exc


class Session(Protocol):
    """What the pose model and the detectors use of a session (``ort.InferenceSession`` or
    :class:`darkpose.service.runtime.openvino.OpenVinoSession`)."""

    def run(self, output_names: Any, input_feed: Any) -> list[Any]: ...

    def get_inputs(self) -> Any: ...

    def get_outputs(self) -> Any: ...

    def get_providers(self) -> list[str]: ...


def create_session(
    path: str | Path | bytes,
    providers: str = "auto",
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    *,
    name: str | None = None,
    allow_spinning: bool = False,
    backend: str = "onnxruntime",
    precision: str = "fp32",
) -> Session:
    """A session for ``path`` (a file, or the serialised model as ``bytes``).

    ``backend``: ``onnxruntime`` (an ``ort.InferenceSession``; ``precision`` must be ``fp32``:
    onnxruntime's CPU provider has no bf16 convolutions) or ``openvino`` (an
    :class:`~darkpose.service.runtime.openvino.OpenVinoSession` on the CPU, ``precision`` fp32 |
    bf16,
    ``intra_op_threads`` = its thread count; ``providers`` cuda is refused there).

    ``intra_op_threads`` / ``inter_op_threads``: 0 = onnxruntime's default.  Logs the
    providers actually used (onnxruntime silently falls back to CPU when CUDA fails to load);
    ``name`` labels the model in the log.  ``allow_spinning=False`` (default) stops idle
    intra-op worker threads from busy-waiting: on a shared or oversubscribed CPU (a service with
    a detector, a batcher and HTTP threads) spinning workers steal the cores the other sessions
    need (measured on 2 shared cores: 2 threads 22.8 ms/crop spinning vs 10.2 ms not).
    """
    if intra_op_threads < 0 or inter_op_threads < 0:
        raise ModelError(
            f"threads: expected >= 0, got intra={intra_op_threads} inter={inter_op_threads}"
        )
    if backend not in BACKENDS:
        raise ModelError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in FLOAT_PRECISIONS:
        raise ModelError(
            f"precision: expected one of {', '.join(FLOAT_PRECISIONS)}, got {precision!r}"
        )
    model = path if isinstance(path, bytes) else read_model_bytes(path)
    if name is None:
        name = "<bytes>" if isinstance(path, bytes) else str(path)
    model = drop_per_channel_bn_spatial(model, name=name)
    if backend == "openvino":
        if providers == "cuda":
            raise ModelError("backend openvino: expected providers auto or cpu, got cuda")
        from darkpose.service.runtime.openvino import OpenVinoSession

        return OpenVinoSession(model, precision, intra_op_threads, name=name)
    if precision != "fp32":
        raise ModelError(
            f"precision {precision}: expected fp32 with backend onnxruntime (its CPU provider "
            "has no bf16 kernels), got onnxruntime; use backend openvino for bf16"
        )
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    if inter_op_threads:
        opts.inter_op_num_threads = inter_op_threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    opts.log_severity_level = 3  # errors only: the fixed-shape models warn about value_info
    wanted = resolve_providers(providers)
    try:
        session = ort.InferenceSession(model, sess_options=opts, providers=wanted)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(
            f"model {name}: expected a model onnxruntime can load, got {type(exc).__name__}: {exc}"
        ) from exc
    used = list(session.get_providers())
    logger.info(
        "onnxruntime session %s: providers requested=%s used=%s intra_op_threads=%d "
        "inter_op_threads=%d spinning=%s",
        name,
        wanted,
        used,
        intra_op_threads,
        inter_op_threads,
        allow_spinning,
    )
    if CUDA in wanted and CUDA not in used:
        if providers == "cuda":
            raise ModelError(
                f"providers: expected {CUDA} in use for providers=cuda, got {used} for model "
                f"{name} ({cuda_diagnosis()})"
            )
        warn_cpu_fallback_once(f"{CUDA} did not load ({cuda_diagnosis()})")
    elif providers == "auto" and CUDA not in used:  # a CPU build: the normal path, no warning
        warn_cpu_fallback_once(
            f"this onnxruntime build has no {CUDA} (install the [gpu] extra for a GPU)",
            logging.DEBUG,
        )
    return session


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs of ``model`` (old IR versions also list every initializer as an input)."""
    init_names = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in init_names]


def static_shape(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """Shape of a graph input/output: ints for fixed dims, the ``dim_param`` string for symbolic
    ones, ``None`` when unknown."""
    dims: list[int | str | None] = []
    for d in value.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(str(d.dim_param))
        else:
            dims.append(None)
    return dims


def load_model(data: bytes) -> onnx.ModelProto:
    """Parse serialised ONNX; :class:`ModelError` when the bytes are not a model."""
    try:
        return onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(f"model: expected serialised ONNX, got unparsable bytes ({exc})") from exc


def drop_per_channel_bn_spatial(model_bytes: bytes, *, name: str = "<bytes>") -> bytes:
    """Remove ``spatial=0`` from opset ≤ 8 ``BatchNormalization`` nodes whose scale is 1-D.

    ``spatial=0`` declares scale/bias/mean/var of shape (C, D1, …, Dn), but exporters (MXNet,
    e.g. the shared SimpleBaseline) wrote it with per-channel (C,) tensors.  onnxruntime ≥ 1.27
    applies them per channel; 1.21–1.26 (the CUDA 12 builds of onnxruntime-gpu) reject the
    node at run time ("Invalid input scale: NumDimensions() != 3").  Dropping the attribute
    gives the per-channel meaning the weights have on every version.  Returns ``model_bytes``
    unchanged when no node needs it (without parsing unless the bytes mention ``spatial``).
    """
    if b"spatial" not in model_bytes:
        return model_bytes
    model = load_model(model_bytes)
    ranks = {t.name: len(t.dims) for t in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "BatchNormalization" or len(node.input) < 2:
            continue
        for attr in list(node.attribute):
            if attr.name == "spatial" and attr.i == 0 and ranks.get(node.input[1]) == 1:
                node.attribute.remove(attr)
                changed += 1
    if not changed:
        return model_bytes
    logger.info(
        "model %s: %d BatchNormalization nodes with spatial=0 and per-channel (1-D) scale run "
        "per channel",
        name,
        changed,
    )
    return model.SerializeToString()


def make_batch_dynamic(model_bytes: bytes, dim_name: str = BATCH_DIM) -> bytes:
    """Rename dim 0 of every real graph input and output to the symbolic ``dim_name``.

    Intermediate ``value_info`` shapes are cleared when a dimension was changed (they were
    inferred with the fixed batch and would contradict a larger one).  Returns ``model_bytes``
    unchanged when every batch dimension is already symbolic.
    """
    model = load_model(model_bytes)
    changed = False
    values: Sequence[onnx.ValueInfoProto] = [*graph_inputs(model), *model.graph.output]
    for value in values:
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 0:
            continue
        if dims[0].HasField("dim_param") and dims[0].dim_param:
            continue
        dims[0].Clear()
        dims[0].dim_param = dim_name
        changed = True
    if not changed:
        return model_bytes
    del model.graph.value_info[:]
    return model.SerializeToString()
