"""``darkpose-export``: checkpoint → ONNX with metadata and parity checks.

Example::

    darkpose-export --arch hrnet_w32 --checkpoint pose_hrnet_w32_256x192.pth \\
        --input-size 256x192 --out hrnet_w32.onnx [--opset 17] [--fp16] [--with-decode]

Exit codes: 0 written, 2 bad arguments / checkpoint mismatch / failed parity (message, no
traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from darkpose.service.core.errors import DarkPoseError

logger = logging.getLogger("darkpose.export")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="darkpose-export",
        description="Export an HRNet / SimpleBaseline pose checkpoint (official HRNet/DarkPose, "
        "mmpose 0.x or 1.x layout) to ONNX with darkpose.* metadata.",
    )
    p.add_argument("--arch", required=True, help="hrnet_w32 | hrnet_w48 | resnet50|101|152")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="PyTorch checkpoint (.pth)")
    src.add_argument(
        "--random-init", action="store_true", help="no checkpoint: random weights (testing)"
    )
    p.add_argument(
        "--input-size", default="256x192", help="HEIGHTxWIDTH, multiples of 32 (default 256x192)"
    )
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument(
        "--fp16", action="store_true", help="fp16 weights/activations, float32 input/output"
    )
    p.add_argument(
        "--with-decode",
        action="store_true",
        help="append the DARK decode: output keypoints (N, K, 3) = x, y (heatmap px), score",
    )
    p.add_argument("--blur-kernel", type=int, default=11, help="DARK blur kernel (default 11)")
    p.add_argument("--num-joints", type=int, default=17, help="keypoints (default 17, COCO)")
    p.add_argument("--name", default=None, help="model name written to the metadata")
    p.add_argument(
        "--unsafe-load",
        action="store_true",
        help="torch.load with weights_only=False (only for checkpoints you trust)",
    )
    p.add_argument("--parity-batch", type=int, default=2, help="batch of the parity check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch and the onnxruntime parity check (default 1: tracing is "
        "serial and many threads spin on busy machines; 0 = torch default)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return p


def run(args: argparse.Namespace) -> int:
    """Do the export described by parsed ``args``; raises typed errors on failure."""
    import torch

    from darkpose.exporters.export import export_onnx, make_spec
    from darkpose.models.checkpoint import load_checkpoint
    from darkpose.models.errors import ExportError
    from darkpose.models.registry import build_model, canonical_arch, parse_input_size

    if args.opset < 11:
        raise ExportError(f"--opset: expected >= 11, got {args.opset}")
    if args.blur_kernel < 1 or args.blur_kernel % 2 == 0:
        raise ExportError(f"--blur-kernel: expected a positive odd size, got {args.blur_kernel}")
    if args.parity_batch < 1:
        raise ExportError(f"--parity-batch: expected >= 1, got {args.parity_batch}")
    if args.threads < 0:
        raise ExportError(f"--threads: expected >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    logger.info("building %s (%d keypoints)", args.arch, args.num_joints)
    model = build_model(args.arch, num_joints=args.num_joints)
    input_size = parse_input_size(args.input_size, int(getattr(model, "stride_multiple", 32)))
    provenance = {"exporter.arch_requested": args.arch}
    if args.checkpoint:
        logger.info("loading checkpoint %s", args.checkpoint)
        layout = load_checkpoint(model, args.checkpoint, unsafe=args.unsafe_load)
        provenance["exporter.checkpoint_layout"] = layout
    else:
        logger.warning("no checkpoint: exporting RANDOM weights (testing only)")
        provenance["exporter.checkpoint_layout"] = "random-init"
    spec = make_spec(
        canonical_arch(args.arch),
        input_size,
        output_stride=int(getattr(model, "output_stride", 4)),
        num_joints=args.num_joints,
        name=args.name,
        with_decode=args.with_decode,
        blur_kernel=args.blur_kernel,
    )
    report = export_onnx(
        model,
        args.out,
        spec,
        opset=args.opset,
        fp16=args.fp16,
        parity_batch=args.parity_batch,
        seed=args.seed,
        provenance=provenance,
    )
    logger.info(
        "done: %s, input %dx%d (HxW), heatmaps %dx%d, parity max abs diff %.3g%s",
        report.path,
        spec.input_size[1],
        spec.input_size[0],
        spec.heatmap_size[1],
        spec.heatmap_size[0],
        report.heatmap_max_abs_diff,
        ""
        if report.decode_max_px_diff is None
        else f", decode max diff {report.decode_max_px_diff:.3g} px",
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code (2 with a one-line message on errors)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return run(args)
    except (DarkPoseError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    except OSError as exc:  # e.g. --out in a directory that cannot be written
        logger.error("expected a writable output path, got %s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
