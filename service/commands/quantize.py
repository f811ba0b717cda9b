"""``darkpose quantize``: an int8 pose model calibrated on real person crops, with its parity.

Example (docs/models.md, "Backends and precision")::

    darkpose quantize --out models/pp_tinypose_256x192.int8.onnx --keep-float depthwise

Calibration: GT person boxes of the first ``--calib-fraction`` of the annotated images of
``--ann`` (sorted ids), cut by the service's own pre-processing; the remaining images are held
out.  Parity (heatmap / DARK keypoint max |Δ|, keypoint AP with GT boxes for both models) is
measured on both parts with ``--backend`` and written into the output's card (ONNX
``metadata_props``) and printed as JSON.  Needs the optional extra ``openvino`` (nncf).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from darkpose.service.core.choices import BACKENDS

    parser.add_argument(
        "--model", default=None, help="float pose model (default: settings.pose_models[0])"
    )
    parser.add_argument("--out", type=Path, required=True, help="output QDQ ONNX file")
    parser.add_argument(
        "--images", type=Path, required=True, help="directory of the annotated images"
    )
    parser.add_argument(
        "--ann",
        type=Path,
        required=True,
        help="COCO keypoint annotations (GT boxes give the calibration crops)",
    )
    parser.add_argument(
        "--calib-fraction",
        type=float,
        default=0.5,
        help="share of the annotated images used for calibration; the rest is held out",
    )
    parser.add_argument(
        "--keep-float",
        default="depthwise",
        help="comma list of layers left in float: depthwise and/or ONNX op types; '' = none",
    )
    parser.add_argument("--preset", choices=("mixed", "performance"), default="mixed")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="openvino",
        help="runtime the parity is measured on (int8 numerics differ between runtimes)",
    )


def run(args: argparse.Namespace) -> int:
    from darkpose.service.core.errors import InvalidParameter
    from darkpose.service.evaluation import load_coco
    from darkpose.service.quantize import (
        annotated_image_ids,
        calibration_crops,
        int8_card,
        keypoint_ap,
        measure_parity,
        quantize_onnx,
        split_images,
        write_card,
    )
    from darkpose.service.runtime.onnx import make_batch_dynamic, read_model_bytes
    from darkpose.service.runtime.pose import OnnxPoseModel
    from darkpose.service.settings import Settings

    settings = Settings()  # type: ignore[call-arg]
    name = args.model or settings.pose_models[0]
    model_path = Path(name) if Path(name).is_file() else settings.resolve_model(name)
    if args.out.resolve() == model_path.resolve():
        raise InvalidParameter(f"--out: expected a new file, got the input model {model_path}")
    keep_float = [w.strip() for w in str(args.keep_float).split(",") if w.strip()]
    threads = settings.intra_op_threads
    fp32 = OnnxPoseModel(model_path, "cpu", threads, backend=args.backend, precision="fp32")
    spec = fp32.spec
    coco = load_coco(args.ann)
    calib_ids, held_ids = split_images(annotated_image_ids(coco), args.calib_fraction)
    pad = settings.pipeline.box_padding
    calib = calibration_crops(spec, args.images, coco, calib_ids, pad)
    logger.info("calibrating on %d crops from %d images", len(calib), len(calib_ids))
    raw = make_batch_dynamic(read_model_bytes(model_path))
    quantized, record = quantize_onnx(raw, calib, keep_float, args.preset)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(quantized.SerializeToString())
    int8 = OnnxPoseModel(
        args.out, "cpu", threads, spec=spec, backend=args.backend, precision="fp32"
    )
    parity: dict[str, object] = {"backend": args.backend}
    for part, ids in (("calibration", calib_ids), ("held_out", held_ids)):
        if not ids:
            continue
        crops = (
            calib if part == "calibration" else calibration_crops(spec, args.images, coco, ids, pad)
        )
        p = measure_parity(fp32.infer(crops), int8.infer(crops), spec.blur_kernel)
        parity[part] = {
            **p.to_dict(),
            "images": len(ids),
            "ap_fp32": round(keypoint_ap(fp32, args.images, coco, ids, pad), 4),
            "ap_int8": round(keypoint_ap(int8, args.images, coco, ids, pad), 4),
        }
    record.update(
        {
            "source_model": model_path.name,
            "calibration": {
                "annotations": str(args.ann),
                "images": len(calib_ids),
                "image_ids": calib_ids,
                "crops": int(len(calib)),
                "boxes": "gt",
                "box_padding": pad,
                "calib_fraction": args.calib_fraction,
            },
            "parity": parity,
        }
    )
    card = int8_card(fp32.card, args.out.name, record)
    args.out.write_bytes(write_card(quantized, card).SerializeToString())
    sys.stdout.write(card.to_json())
    return 0
