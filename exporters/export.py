"""Export a pose network (optionally with the DARK decode in the graph) to ONNX.

:func:`export_onnx` traces once with the TorchScript exporter (dynamic batch axis), checks
parity against torch on random inputs through onnxruntime (CPU), runs ``onnx.checker`` and
writes the :class:`~darkpose.service.core.types.ModelSpec` into ``metadata_props``.  Bounds:

* heatmaps, fp32: ``max |onnx - torch| <= 1e-4 * max(1, max |torch|)`` (``FP32_TOL``);
* heatmaps, ``--fp16`` (weights and activations fp16, I/O float32):
  ``<= 1e-2 * max(1, max |torch fp32|)`` (``FP16_TOL``);
* ``--with-decode``: the decode-only graph on peaked synthetic heatmaps vs torch
  :class:`~darkpose.models.dark.DarkDecode` within ``DECODE_TOL_PX`` (1e-3 heatmap px); the full
  graph's
  keypoints vs torch decode of the onnxruntime heatmaps within ``GRAPH_DECODE_TOL_PX`` (5e-2
  px: random inputs give flat maxima where the Newton step amplifies rounding); scores within
  the heatmap bound.  (On the mmpose golden heatmaps the decode graph is within ~1e-5 px.)
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from darkpose.models.dark import DarkDecode
from darkpose.models.errors import ExportError
from darkpose.service.core.types import ModelSpec

logger = logging.getLogger(__name__)

FP32_TOL = 1e-4
FP16_TOL = 1e-2
DECODE_TOL_PX = 1e-3
#: Full graph on random-weight heatmaps (flat maxima: the Newton step amplifies float
#: rounding of the blur); real, peaked heatmaps are checked against DECODE_TOL_PX.
GRAPH_DECODE_TOL_PX = 5e-2
DEFAULT_OPSET = 17
INPUT_NAME = "input"


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and measured."""

    path: Path
    spec: ModelSpec
    heatmap_max_abs_diff: float
    heatmap_tolerance: float
    decode_max_px_diff: float | None
    export_seconds: float
    size_bytes: int


class _Half(nn.Module):
    """Runs ``net`` in fp16 with float32 input/output: ``(N, 3, H, W) f32 -> (N, K, h, w) f32``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.half()).float()


def make_spec(
    arch: str,
    input_size: tuple[int, int],
    *,
    output_stride: int = 4,
    num_joints: int = 17,
    name: str | None = None,
    with_decode: bool = False,
    blur_kernel: int = 11,
    **overrides: object,
) -> ModelSpec:
    """The :class:`ModelSpec` of an exported model: ``input_size`` (W, H), heatmap size
    ``input / output_stride``, ImageNet mean/std on RGB 0-1 (the HRNet / mmpose training
    pipelines), COCO keypoints when ``num_joints == 17``."""
    base = ModelSpec()
    if num_joints != base.num_keypoints and "keypoint_names" not in overrides:
        overrides["keypoint_names"] = tuple(f"kpt_{i}" for i in range(num_joints))
        overrides.setdefault("flip_pairs", ())
    return replace(
        base,
        name=name or f"{arch}_{input_size[1]}x{input_size[0]}",
        arch=arch,
        input_size=input_size,
        heatmap_size=(input_size[0] // output_stride, input_size[1] // output_stride),
        codec="dark",
        blur_kernel=blur_kernel,
        decoded_output=with_decode,
        **overrides,  # type: ignore[arg-type]
    )


def _trace_to_file(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    outputs: list[str],
    opset: int,
    input_name: str = INPUT_NAME,
) -> None:
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of dynamo (needs onnxscript)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[input_name],
            output_names=outputs,
            dynamic_axes={input_name: {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
            do_constant_folding=True,
        )


def _session(path: Path) -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = torch.get_num_threads()  # same budget as torch (--threads)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class _WithHeatmaps(nn.Module):
    """``x -> (keypoints (N, K, 3), heatmaps (N, K, h, w))``; traced once, the heatmap output
    is used for the parity check and then removed from the graph."""

    def __init__(self, net: nn.Module, decoder: DarkDecode) -> None:
        super().__init__()
        self.net = net
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hm = self.net(x)
        return self.decoder(hm.float()), hm


def synthetic_heatmaps(
    n: int, k: int, heatmap_size: tuple[int, int], seed: int = 0, sigma: float = 2.0
) -> np.ndarray:
    """Peaked heatmaps like a trained network's: a Gaussian of ``sigma`` px at a random
    sub-pixel position, random peak in [0.3, 1], plus small positive noise.
    Returns ``(n, k, H, W)`` float32."""
    W, H = heatmap_size
    rng = np.random.default_rng(seed)
    cx = rng.uniform(-1.0, W, size=(n, k, 1, 1))
    cy = rng.uniform(-1.0, H, size=(n, k, 1, 1))
    amp = rng.uniform(0.3, 1.0, size=(n, k, 1, 1))
    yy, xx = np.mgrid[0:H, 0:W]
    hm = amp * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    hm += 0.01 * np.abs(rng.standard_normal(hm.shape))
    return hm.astype(np.float32)


def check_decoder_parity(
    num_keypoints: int,
    heatmap_size: tuple[int, int],
    blur_kernel: int,
    opset: int,
    heatmaps: np.ndarray | None = None,
) -> float:
    """Export :class:`DarkDecode` alone, run it in onnxruntime on ``heatmaps`` (default:
    :func:`synthetic_heatmaps`, 8 x K) and return max |x, y| difference (px) to torch."""
    hm = heatmaps if heatmaps is not None else synthetic_heatmaps(8, num_keypoints, heatmap_size)
    with tempfile.TemporaryDirectory(prefix="darkpose-decode-") as tmp:
        path = export_decoder(
            Path(tmp) / "decode.onnx", num_keypoints, heatmap_size, blur_kernel, opset
        )
        sess = _session(path)
        out = np.asarray(sess.run(None, {"heatmaps": hm})[0])  # type: ignore[attr-defined]
    with torch.no_grad():
        ref = DarkDecode(num_keypoints, blur_kernel)(torch.from_numpy(hm)).numpy()
    return float(np.abs(out[..., :2] - ref[..., :2]).max())


def export_onnx(
    net: nn.Module,
    out: str | Path,
    spec: ModelSpec,
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    parity_batch: int = 2,
    seed: int = 0,
    provenance: dict[str, str] | None = None,
) -> ExportReport:
    """Export ``net`` (heatmaps ``(N, K, h, w)``) to ``out``; with ``spec.decoded_output`` the
    DARK decode (``spec.blur_kernel``) is appended and the output is keypoints ``(N, K, 3)``.

    Raises :class:`ExportError` when the checker or the parity check fails (``out`` is then
    not written).
    """
    t0 = time.perf_counter()
    out = Path(out)
    net = net.eval()
    W, H = spec.input_size
    example = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        probe = net(example)
    if tuple(probe.shape[1:]) != (spec.num_keypoints, spec.heatmap_size[1], spec.heatmap_size[0]):
        raise ExportError(
            f"network output: expected (N, {spec.num_keypoints}, {spec.heatmap_size[1]}, "
            f"{spec.heatmap_size[0]}) for the spec, got {tuple(probe.shape)}"
        )
    heat_net: nn.Module = _Half(net).eval() if fp16 else net
    tol_rel = FP16_TOL if fp16 else FP32_TOL
    decoder = DarkDecode(spec.num_keypoints, spec.blur_kernel).eval()
    precision = "fp16" if fp16 else "fp32"

    with tempfile.TemporaryDirectory(prefix="darkpose-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        if spec.decoded_output:
            logger.info(
                "tracing %s graph with in-graph DARK decode (blur %d, opset %d)",
                precision,
                spec.blur_kernel,
                opset,
            )
            module: nn.Module = _WithHeatmaps(heat_net, decoder).eval()
            outputs = ["keypoints", "heatmaps"]
        else:
            logger.info("tracing %s heatmap graph (opset %d)", precision, opset)
            module, outputs = heat_net, ["heatmaps"]
        _trace_to_file(module, example, path, outputs, opset)
        logger.info("traced in %.1f s", time.perf_counter() - t0)

        # --- parity on random inputs, batch != the traced batch (checks the dynamic axis) ----
        x = torch.randn(parity_batch, 3, H, W, generator=torch.Generator().manual_seed(seed + 1))
        with torch.no_grad():
            ref = net(x).numpy()
        results = _session(path).run(None, {INPUT_NAME: x.numpy()})  # type: ignore[attr-defined]
        hm = np.asarray(results[-1], dtype=np.float32)
        if hm.shape != ref.shape:
            raise ExportError(
                f"parity: expected onnx heatmaps {ref.shape}, got {hm.shape} (batch axis)"
            )
        tol = tol_rel * max(1.0, float(np.abs(ref).max()))
        diff = float(np.abs(hm - ref).max())
        logger.info(
            "parity heatmaps (%s, batch %d): max abs diff %.3g (tolerance %.3g)",
            precision,
            parity_batch,
            diff,
            tol,
        )
        if not diff <= tol:
            raise ExportError(
                f"parity: expected max |onnx - torch| <= {tol:.3g} on heatmaps, got {diff:.3g}"
            )
        decode_diff: float | None = None
        if spec.decoded_output:
            kp = np.asarray(results[0], dtype=np.float32)
            with torch.no_grad():
                kp_ref = decoder(torch.from_numpy(hm)).numpy()
            graph_diff = float(np.abs(kp[..., :2] - kp_ref[..., :2]).max())
            score_diff = float(np.abs(kp[..., 2] - kp_ref[..., 2]).max())
            decode_diff = check_decoder_parity(
                spec.num_keypoints, spec.heatmap_size, spec.blur_kernel, opset
            )
            logger.info(
                "parity decode: peaked heatmaps max |xy| diff %.3g px (tolerance %g); full graph "
                "on random-input heatmaps %.3g px (tolerance %g), scores %.3g",
                decode_diff,
                DECODE_TOL_PX,
                graph_diff,
                GRAPH_DECODE_TOL_PX,
                score_diff,
            )
            if not (
                decode_diff <= DECODE_TOL_PX
                and graph_diff <= GRAPH_DECODE_TOL_PX
                and score_diff <= tol
            ):
                raise ExportError(
                    f"parity: expected in-graph DARK within {DECODE_TOL_PX} px on peaked "
                    f"heatmaps, {GRAPH_DECODE_TOL_PX} px in the full graph and scores within "
                    f"{tol:.3g}, got {decode_diff:.3g} px, {graph_diff:.3g} px, {score_diff:.3g}"
                )

        model = onnx.load(str(path))
        if spec.decoded_output:  # drop the parity-only heatmap output
            keep = [o for o in model.graph.output if o.name == "keypoints"]
            del model.graph.output[:]
            model.graph.output.extend(keep)
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as exc:  # pragma: no cover - exporter bug
            raise ExportError(f"onnx.checker: expected a valid model, got {exc}") from exc
        logger.info("onnx.checker: ok")
        extra = {
            "exporter.torch": torch.__version__,
            "exporter.opset": str(opset),
            "exporter.precision": precision,
            "exporter.parity_max_abs_diff": f"{diff:.3g}",
            **(provenance or {}),
        }
        onnx.helper.set_model_props(model, {**spec.to_metadata(), **extra})
        out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(out))
    size = out.stat().st_size
    seconds = time.perf_counter() - t0
    logger.info("wrote %s (%.1f MB) in %.1f s", out, size / 1e6, seconds)
    return ExportReport(out, spec, diff, tol, decode_diff, seconds, size)


def export_decoder(
    out: str | Path,
    num_keypoints: int,
    heatmap_size: tuple[int, int],
    blur_kernel: int = 11,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export :class:`DarkDecode` alone: input ``heatmaps (N, K, H, W)`` (``heatmap_size`` =
    (W, H)) → output ``keypoints (N, K, 3)``.  Used to check the in-graph decode against the
    numpy codec / mmpose golden values, and usable on its own after any heatmap model."""
    out = Path(out)
    W, H = heatmap_size
    example = torch.rand(1, num_keypoints, H, W, generator=torch.Generator().manual_seed(0))
    module = DarkDecode(num_keypoints, blur_kernel).eval()
    _trace_to_file(module, example, out, ["keypoints"], opset, input_name="heatmaps")
    onnx.checker.check_model(str(out), full_check=True)
    return out
