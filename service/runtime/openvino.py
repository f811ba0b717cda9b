"""OpenVINO CPU backend: an onnxruntime-session look-alike over an OpenVINO compiled model.

:class:`OpenVinoSession` offers the part of ``ort.InferenceSession`` the pose model and the
detectors use (``run``, ``get_inputs``, ``get_outputs``, ``get_providers``), so a backend switch
is one argument of :func:`darkpose.service.runtime.onnx.create_session` and every ONNX component
(pose
models, detectors) can run on either runtime unchanged.

Precision (``INFERENCE_PRECISION_HINT`` of OpenVINO's CPU plugin):

- ``fp32``: float32 everywhere (heatmaps match onnxruntime to ~1e-4);
- ``bf16``: float ops in bfloat16 where the CPU has native bf16 (AVX512_BF16 or AMX); a CPU
  without it is a :class:`ModelError` (OpenVINO would silently run f32 and the speed-up would
  not be there);
- an int8 model (QDQ ONNX from ``darkpose quantize``) runs its quantised ops in int8 under
  either hint; the hint applies to the ops left in float.

``openvino`` is the optional extra ``openvino``; without it, asking for this backend is a
:class:`ModelError` naming the extra.  Thread safety: one infer request per calling thread
(the micro-batcher runs several pose calls at once; an OpenVINO request is single-threaded).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from darkpose.service.core.errors import ModelError

logger = logging.getLogger(__name__)

#: ``get_providers()`` of an OpenVINO session (stands where onnxruntime names its provider).
OPENVINO_CPU = "OpenVINO:CPU"

#: Setting value → ``INFERENCE_PRECISION_HINT``.
_HINTS: dict[str, str] = {"fp32": "f32", "bf16": "bf16"}


@cache
def _core() -> Any:
    """One ``openvino.Core`` per process (:class:`ModelError` when openvino is missing)."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise ModelError(
            "backend openvino: expected the optional openvino package "
            "(pip install 'darkpose-service[openvino]'), got an ImportError "
            f"({exc}); or use backend onnxruntime"
        ) from exc
    return ov.Core()


def cpu_capabilities() -> list[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU (e.g. ``['BF16', 'FP32', 'INT8']``)."""
    return [str(c) for c in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def has_native_bf16() -> bool:
    """True when OpenVINO's CPU plugin runs bf16 natively here (AVX512_BF16 or AMX)."""
    return "BF16" in cpu_capabilities()


@dataclass(frozen=True)
class IOInfo:
    """``name`` and ``shape`` of a graph input/output (ints; ``None`` for a dynamic dim), like
    onnxruntime's ``NodeArg``."""

    name: str
    shape: list[int | None]


def _io_info(port: Any) -> IOInfo:
    dims = [None if d.is_dynamic else int(d.get_length()) for d in port.get_partial_shape()]
    return IOInfo(str(port.get_any_name()), dims)


class OpenVinoSession:
    """An OpenVINO compiled model behind ``run(output_names, feeds) -> list[ndarray]``.

    ``model``: serialised ONNX (bytes) or a path to an ONNX / OpenVINO IR file.
    ``threads``: ``INFERENCE_NUM_THREADS`` (0 = OpenVINO's default).
    """

    def __init__(
        self,
        model: bytes | str,
        precision: str = "fp32",
        threads: int = 0,
        *,
        name: str = "<bytes>",
    ) -> None:
        if precision not in _HINTS:
            raise ModelError(
                f"precision: expected one of {sorted(_HINTS)} for backend openvino, "
                f"got {precision!r}"
            )
        if threads < 0:
            raise ModelError(f"threads: expected >= 0, got {threads}")
        core = _core()
        if precision == "bf16" and not has_native_bf16():
            raise ModelError(
                "precision bf16: expected a CPU with native bf16 (AVX512_BF16 or AMX), got "
                f"OpenVINO CPU capabilities {cpu_capabilities()}; use precision fp32"
            )
        import openvino as ov

        try:
            ov_model = ov.convert_model(io.BytesIO(model)) if isinstance(model, bytes) else None
            if ov_model is None:
                ov_model = core.read_model(str(model))
        except Exception as exc:  # openvino raises RuntimeError and friends
            raise ModelError(
                f"model {name}: expected a model OpenVINO can read, got {type(exc).__name__}: {exc}"
            ) from exc
        self.name = name
        self.precision = precision
        self.threads = int(threads)
        self._model = ov_model
        self._config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _HINTS[precision],
            "PERFORMANCE_HINT": "LATENCY",
            # a shared CPU (detector, batcher, HTTP threads, other processes): no pinning
            "ENABLE_CPU_PINNING": False,
        }
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self._inputs = [_io_info(p) for p in ov_model.inputs]
        self._outputs = [_io_info(p) for p in ov_model.outputs]
        #: batch-dynamic inputs are compiled once per batch size (static shapes: measured 1.2×
        #: faster than one dynamic-shape compile on PP-TinyPose bf16, batch 1 and 8)
        self._dynamic = [i.name for i in self._inputs if i.shape and i.shape[0] is None]
        self._compiled: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._compile(1)  # fail fast: a model OpenVINO cannot compile fails at load time
        logger.info(
            "openvino session %s: precision=%s threads=%d per-batch-size compile=%s",
            name,
            precision,
            threads,
            bool(self._dynamic),
        )

    def _compile(self, batch: int) -> Any:
        """The compiled model for ``batch`` rows (one per size when the batch dim is dynamic)."""
        key = batch if self._dynamic else -1
        compiled = self._compiled.get(key)
        if compiled is not None:
            return compiled
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is None:
                model = self._model
                if self._dynamic:
                    model = model.clone()
                    shapes = {}
                    for port in model.inputs:
                        if port.get_any_name() in self._dynamic:
                            shape = port.get_partial_shape()
                            shape[0] = batch
                            shapes[port.get_any_name()] = shape
                    model.reshape(shapes)
                try:
                    compiled = _core().compile_model(model, "CPU", self._config)
                except Exception as exc:  # openvino raises RuntimeError and friends
                    raise ModelError(
                        f"model {self.name}: expected a model OpenVINO can compile, got "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                self._compiled[key] = compiled
        return compiled

    def prepare(self, batch_sizes: Iterable[int]) -> None:
        """Compile ``batch_sizes`` now (≈0.5 s each for PP-TinyPose on this CPU) instead of at
        their first call; the pose model prepares 1…``max_batch`` at load time, so no request
        pays a compile (measured: lazy compiles inside a load test raised CPU-ms/image by 40 %)."""
        if self._dynamic:
            for n in batch_sizes:
                self._compile(int(n))

    def get_inputs(self) -> list[IOInfo]:
        return list(self._inputs)

    def get_outputs(self) -> list[IOInfo]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return [OPENVINO_CPU]

    def _request(self, batch: int) -> Any:
        """This thread's infer request for ``batch`` rows."""
        requests: dict[int, Any] | None = getattr(self._local, "requests", None)
        if requests is None:
            requests = {}
            self._local.requests = requests
        req = requests.get(batch)
        if req is None:
            req = self._compile(batch).create_infer_request()
            requests[batch] = req
        return req

    def run(
        self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]
    ) -> list[np.ndarray]:
        """Outputs ``output_names`` (``None`` = all, graph order) for ``feeds`` (name → array);
        arrays are copies (the request reuses its buffers)."""
        names = list(output_names) if output_names is not None else [o.name for o in self._outputs]
        known = {o.name for o in self._outputs}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ModelError(
                f"model {self.name}: expected output names from {sorted(known)}, got {unknown}"
            )
        batch = -1
        if self._dynamic:
            batch = int(np.shape(feeds[self._dynamic[0]])[0]) if self._dynamic[0] in feeds else 1
        req = self._request(batch)
        req.infer(dict(feeds))
        return [np.array(req.get_tensor(n).data, copy=True) for n in names]
