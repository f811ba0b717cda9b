"""The GPU image's own check: onnxruntime-gpu's CUDA version against the image's CUDA.

``python -m darkpose.service.runtime.gpu_check --image
nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04``
(builder stage: the base image's tag) or ``python -m darkpose.service.runtime.gpu_check
--load-libraries`` (runtime stage: ``CUDA_VERSION``, which the nvidia/cuda images set, and the
CUDA provider's libraries — cuBLAS, cuDNN, cuFFT, cuRAND, cudart — must load; no GPU needed).
Prints one line and exits 0 when they match, 1 when they do not, so a wrong image fails its
build.  What needs a GPU (a session that really runs on CUDA) is checked when the service
starts: ``DARKPOSE_PROVIDERS=cuda`` ends ``darkpose serve`` when CUDA does not load.

Rule: the same CUDA major, and the image's CUDA minor at least the one the wheel was built
with (a wheel built with 12.8 may use symbols a 12.6 runtime lacks).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")
_IMAGE_RE = re.compile(r"^(?:[\w.\-/]+/)?cuda:(\d+\.\d+(?:\.\d+)?)-")


class CudaMismatch(ValueError):
    """The onnxruntime build and the image disagree (the message says how)."""


def parse_cuda_version(version: str) -> tuple[int, int]:
    """``"12.8"`` / ``"12.8.1"`` → ``(12, 8)``; ValueError for anything else."""
    m = _VERSION_RE.match(version.strip())
    if m is None:
        raise ValueError(f"CUDA version: expected MAJOR.MINOR[.PATCH], got {version!r}")
    return int(m.group(1)), int(m.group(2))


def image_cuda_version(image: str) -> str:
    """The CUDA version in an ``nvidia/cuda:<version>-…`` image reference."""
    m = _IMAGE_RE.match(image.strip())
    if m is None:
        raise ValueError(f"CUDA image: expected nvidia/cuda:<MAJOR.MINOR.PATCH>-…, got {image!r}")
    return m.group(1)


def compatible(built: str, runtime: str) -> str | None:
    """``None`` when a wheel built for CUDA ``built`` runs on CUDA ``runtime``, else why not."""
    b, r = parse_cuda_version(built), parse_cuda_version(runtime)
    if b[0] != r[0]:
        return (
            f"CUDA major: expected the wheel's {b[0]} (built for {built}), got {r[0]} ({runtime})"
        )
    if b[1] > r[1]:
        return f"CUDA minor: expected at least the wheel's {built}, got {runtime}"
    return None


def check(runtime_cuda: str, *, load_libraries: bool = False) -> str:
    """Compare the installed onnxruntime's CUDA with ``runtime_cuda``; the one-line summary,
    or :class:`CudaMismatch`."""
    import onnxruntime as ort

    from darkpose.service.runtime.onnx import ort_cuda_version

    built = ort_cuda_version()
    if built is None:
        raise CudaMismatch(
            f"onnxruntime: expected a CUDA build (onnxruntime-gpu >= 1.21), got "
            f"{ort.__version__} without build_and_package_info.cuda_version"
        )
    why = compatible(built, runtime_cuda)
    if why is not None:
        raise CudaMismatch(f"onnxruntime {ort.__version__}: {why}")
    summary = f"onnxruntime {ort.__version__} built for CUDA {built}, image CUDA {runtime_cuda}"
    if load_libraries:
        from darkpose.service.runtime.onnx import cuda_provider_library, load_cuda_provider_library

        lib = cuda_provider_library()
        try:
            load_cuda_provider_library(lib)
        except OSError as exc:
            raise CudaMismatch(
                f"CUDA provider libraries: expected {lib.name} to load, got "
                f"{' '.join(str(exc).split())}"
            ) from exc
        summary += f"; {lib.name} and its CUDA/cuDNN libraries load"
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m darkpose.service.runtime.gpu_check", description=__doc__
    )
    parser.add_argument(
        "--image", help="nvidia/cuda image reference to compare with (default: $CUDA_VERSION)"
    )
    parser.add_argument(
        "--load-libraries",
        action="store_true",
        help="also load the CUDA provider library (needs the image's CUDA/cuDNN, not a GPU)",
    )
    args = parser.parse_args(argv)
    try:
        runtime = image_cuda_version(args.image) if args.image else os.environ.get("CUDA_VERSION")
        if not runtime:
            raise CudaMismatch("CUDA_VERSION: expected the base image's CUDA version, got unset")
        print(f"gpu_check: ok: {check(runtime, load_libraries=args.load_libraries)}")  # noqa: T201
    except (CudaMismatch, ValueError) as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
