"""Post-training int8 quantisation of a pose model, calibrated on real person crops.

Calibration crops are made by the service's own pre-processing (GT person boxes of a COCO
keypoint file → :func:`boxes_to_center_scale` → :func:`warp_crops` with the model's
:class:`ModelSpec`), never random tensors.  The images are split deterministically: the first
``calib_fraction`` of the annotated images (sorted ids) calibrate, the rest are held out, and the
parity of the result is measured on both: heatmap and DARK keypoint max |Δ| against the float
model on the same crops, and keypoint AP (GT boxes, DARK) of both models.

Quantiser: NNCF (optional extra ``openvino``) post-training quantisation of the ONNX graph into
a QDQ ONNX file that onnxruntime and OpenVINO both run; ``keep_float`` leaves chosen layers in
float (``depthwise`` = every grouped convolution; other words are ONNX op types, e.g. ``Resize``).
The result carries its card in ``metadata_props`` (``darkpose.card``): the float model's card
with ``precision=int8`` and a ``quantization`` record (tool, preset, calibration set, layers
kept in float, measured parity).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import onnx
from pycocotools.coco import COCO

from darkpose.service.core.cards import CARD_METADATA_KEY, ModelCard, parse_card
from darkpose.service.core.codec import decode_heatmaps
from darkpose.service.core.errors import InvalidParameter, ModelError
from darkpose.service.core.pipeline import Pipeline, PipelineOptions
from darkpose.service.core.transforms import boxes_to_center_scale, warp_crops
from darkpose.service.core.types import F32, ModelSpec, PoseModel
from darkpose.service.evaluation import coco_keypoint_metrics, gt_boxes

logger = logging.getLogger(__name__)

#: Keypoints with an fp32 heatmap maximum above this count as "confident" in the parity figures.
CONFIDENT_SCORE = 0.2
#: ``keep_float`` word for every grouped (depthwise) convolution.
DEPTHWISE = "depthwise"
PRESETS: tuple[str, ...] = ("mixed", "performance")
#: Graphs older than this opset are converted first (NNCF refuses opset < 10; SimpleBaseline
#: is opset 8: converted to 13, its heatmaps are bit-identical on onnxruntime).
MIN_OPSET = 13


@contextlib.contextmanager
def _as_model_error(what: str) -> Iterator[None]:
    """Turn a quantiser's own exception into a :class:`ModelError` (one line, no traceback)."""
    try:
        yield
    except (InvalidParameter, ModelError):
        raise
    except Exception as exc:  # nncf raises its own ValidationError and friends
        raise ModelError(
            f"quantize: expected a model {what}, got {type(exc).__name__}: {exc}"
        ) from exc


def annotated_image_ids(coco: COCO) -> list[int]:
    """Sorted ids of the images with at least one GT person box usable by :func:`gt_boxes`."""
    return [i for i in sorted(coco.getImgIds()) if len(gt_boxes(coco, i)[0])]


def split_images(ids: Sequence[int], calib_fraction: float) -> tuple[list[int], list[int]]:
    """``(calibration, held_out)``: the first ``ceil(fraction · n)`` ids, then the rest."""
    if not 0.0 < calib_fraction <= 1.0:
        raise InvalidParameter(f"calib_fraction: expected in (0, 1], got {calib_fraction}")
    n = int(np.ceil(calib_fraction * len(ids)))
    return list(ids[:n]), list(ids[n:])


def calibration_crops(
    spec: ModelSpec,
    images_dir: str | Path,
    coco: COCO,
    image_ids: Sequence[int],
    box_padding: float = 1.25,
) -> F32:
    """The network inputs (N, 3, H, W) float32 of every GT person box of ``image_ids``, made
    exactly as the service makes them (:func:`warp_crops` with ``spec``)."""
    crops: list[F32] = []
    for image_id in image_ids:
        boxes, _ = gt_boxes(coco, image_id)
        if len(boxes) == 0:
            continue
        image = _read(images_dir, coco, image_id)
        centers, scales = boxes_to_center_scale(boxes, spec.aspect_ratio, box_padding)
        crops.append(warp_crops(image, centers, scales, spec.input_size, spec=spec))
    if not crops:
        raise InvalidParameter(
            f"calibration: expected person boxes in {len(image_ids)} images, got none"
        )
    return np.concatenate(crops).astype(np.float32)


def _read(images_dir: str | Path, coco: COCO, image_id: int) -> npt.NDArray[np.uint8]:
    path = Path(images_dir) / coco.loadImgs([image_id])[0]["file_name"]
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise InvalidParameter(f"image: expected a readable file, got {path}")
    return np.asarray(image, np.uint8)


def keypoint_ap(
    pose: PoseModel,
    images_dir: str | Path,
    coco: COCO,
    image_ids: Sequence[int],
    box_padding: float = 1.25,
) -> float:
    """COCO keypoint AP of ``pose`` on ``image_ids`` only (GT boxes, DARK, no flip)."""
    base = PipelineOptions(box_padding=box_padding, decode="dark", flip=False)
    pipeline = Pipeline(None, [pose], base)
    results: list[dict[str, Any]] = []
    for image_id in image_ids:
        boxes, scores = gt_boxes(coco, image_id)
        opts = base.replace(max_persons=max(base.max_persons, len(boxes)))
        stage = pipeline.run_models(
            _read(images_dir, coco, image_id), opts, boxes, scores, image_id=image_id
        )
        results.extend(pipeline.finish(stage, opts).to_coco(image_id))
    sub = COCO()
    sub.dataset = {
        "images": coco.loadImgs(list(image_ids)),
        "annotations": coco.loadAnns(coco.getAnnIds(imgIds=list(image_ids))),
        "categories": coco.loadCats(coco.getCatIds()),
    }
    with contextlib.redirect_stdout(io.StringIO()):
        sub.createIndex()
    return coco_keypoint_metrics(sub, results)["AP"]


@dataclass(frozen=True)
class Parity:
    """Reduced-precision heatmaps against float heatmaps of the same crops.

    ``keypoint_*`` are DARK-decoded keypoint distances in heatmap pixels (×4 = input pixels for
    a 4× heatmap); ``*_confident`` only over keypoints whose float score > ``CONFIDENT_SCORE``
    (the max over all keypoints is dominated by empty heatmaps whose maximum jumps).
    """

    crops: int
    heatmap_max_abs: float
    keypoint_max_abs: float
    keypoint_max_abs_confident: float
    keypoint_p95_confident: float
    argmax_agreement: float

    def to_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def measure_parity(reference: F32, heatmaps: F32, blur_kernel: int = 11) -> Parity:
    """:class:`Parity` of ``heatmaps`` against ``reference`` (both (N, K, h, w))."""
    if reference.shape != heatmaps.shape or reference.ndim != 4:
        raise InvalidParameter(
            f"parity: expected two (N, K, h, w) arrays of one shape, got {reference.shape} "
            f"and {heatmaps.shape}"
        )
    ref_xy, ref_score = decode_heatmaps(reference, "dark", blur_kernel)
    xy, _ = decode_heatmaps(heatmaps, "dark", blur_kernel)
    dist = np.linalg.norm(xy.astype(np.float64) - ref_xy, axis=-1)
    ref_arg, _ = decode_heatmaps(reference, "argmax")
    arg, _ = decode_heatmaps(heatmaps, "argmax")
    conf = ref_score > CONFIDENT_SCORE
    conf_d = dist[conf] if conf.any() else np.zeros(1)
    return Parity(
        crops=int(reference.shape[0]),
        heatmap_max_abs=float(np.abs(heatmaps - reference).max()) if reference.size else 0.0,
        keypoint_max_abs=float(dist.max()) if dist.size else 0.0,
        keypoint_max_abs_confident=float(conf_d.max()),
        keypoint_p95_confident=float(np.percentile(conf_d, 95)),
        argmax_agreement=float(np.mean(np.all(arg == ref_arg, axis=-1))) if dist.size else 1.0,
    )


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a unique name (``<op>_<index>``; NNCF scopes need names)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    return model


def float_nodes(model: onnx.ModelProto, keep_float: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(node names, op types)`` that ``keep_float`` leaves in float (``depthwise`` → names of
    the grouped convolutions; any other word is an op type present in the graph)."""
    ops = {n.op_type for n in model.graph.node}
    names: list[str] = []
    types: list[str] = []
    for word in keep_float:
        if word == DEPTHWISE:
            names += [
                n.name
                for n in model.graph.node
                if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
            ]
        elif word in ops:
            types.append(word)
        else:
            raise InvalidParameter(
                f"--keep-float: expected {DEPTHWISE} or op types of the graph "
                f"({', '.join(sorted(ops))}), got {word!r}"
            )
    return names, types


def quantize_onnx(
    model_bytes: bytes,
    crops: F32,
    keep_float: Sequence[str] = (),
    preset: str = "mixed",
    fast_bias_correction: bool = True,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """NNCF post-training int8 quantisation of ONNX ``model_bytes`` calibrated on ``crops``
    (N, 3, H, W).  Returns the QDQ model and a record of what was done (tool, preset, how many
    nodes were kept in float)."""
    if preset not in PRESETS:
        raise InvalidParameter(f"--preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    try:
        import nncf
    except ImportError as exc:
        raise ModelError(
            "quantize: expected the optional nncf package (pip install "
            f"'darkpose-service[openvino]'), got an ImportError ({exc})"
        ) from exc
    model = name_nodes(onnx.load_model_from_string(model_bytes))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:  # NNCF quantises opset >= 10 only; the conversion is exact here
        from onnx import version_converter

        from darkpose.service.runtime.onnx import drop_per_channel_bn_spatial

        logger.info("quantize: converting the graph from opset %d to %d", opset, MIN_OPSET)
        fixed = drop_per_channel_bn_spatial(model.SerializeToString())  # spatial=0 BNs (opset 8)
        with _as_model_error(f"convertible to opset {MIN_OPSET}"):
            converted = version_converter.convert_version(onnx.load_model_from_string(fixed), 13)
        model = name_nodes(converted)
    input_name = model.graph.input[0].name
    names, types = float_nodes(model, keep_float)
    dataset = nncf.Dataset([{input_name: crops[i : i + 1]} for i in range(len(crops))])
    scope = nncf.IgnoredScope(names=names, types=types, validate=False)
    logging.getLogger("nncf").setLevel(logging.WARNING)  # it logs every node to stdout
    with contextlib.redirect_stdout(io.StringIO()), _as_model_error("NNCF can quantise"):
        quantized = nncf.quantize(
            model,
            dataset,
            preset=getattr(nncf.QuantizationPreset, preset.upper()),
            subset_size=len(crops),
            fast_bias_correction=fast_bias_correction,
            ignored_scope=scope,
        )
    record = {
        "tool": f"nncf {nncf.__version__}",
        "preset": preset,
        "keep_float": list(keep_float),
        "float_nodes": len(names),
        "float_op_types": types,
        "quantized_nodes": sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node),
    }
    return quantized, record


def int8_card(card: ModelCard, out_name: str, quantization: dict[str, Any]) -> ModelCard:
    """The card of the int8 file ``out_name`` made from the float model of ``card``:
    ``precision=int8``, no ``sha256`` (it travels inside the file), the quantisation record."""
    data = card.model_dump(by_alias=True, exclude_none=True)
    data.update(
        {
            "name": f"{card.name}-int8",
            "file": out_name,
            "precision": "int8",
            "quantization": quantization,
        }
    )
    data.pop("sha256", None)
    return parse_card(data, f"int8 card of {out_name}")


def write_card(model: onnx.ModelProto, card: ModelCard) -> onnx.ModelProto:
    """Store ``card`` as JSON under ``darkpose.card`` in ``model.metadata_props`` (the first
    place :func:`darkpose.service.runtime.cards.resolve_card` looks), dropping older ``darkpose.*``
    keys so they cannot contradict it."""
    keep = [p for p in model.metadata_props if not p.key.startswith("darkpose.")]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    model.metadata_props.add(key=CARD_METADATA_KEY, value=card.to_json())
    return model
