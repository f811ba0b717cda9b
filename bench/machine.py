"""The machine a benchmark runs on, printed with each of its tables: CPU model, cores (usable by
this process / the machine's) and the SIMD flags that change the speed of the models."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

#: /proc/cpuinfo flag prefixes shown: the vector extensions onnxruntime and OpenCV dispatch on
#: (AVX2 vs AVX-512, VNNI for int8, BF16/AMX for reduced precision).
FLAG_PREFIXES = ("sse4", "avx", "fma", "amx")


def usable_cores() -> int:
    """Cores this process may run on (its affinity; the machine's count without one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_line(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """``"<model>; <usable>/<all> cores; flags <…>"`` (platform.processor() without cpuinfo)."""
    model, flags = platform.processor() or "unknown CPU", ""
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ""
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    f = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    if m:
        model = m.group(1).strip()
    if f:
        flags = " ".join(x for x in f.group(1).split() if x.startswith(FLAG_PREFIXES))
    return f"{model}; {usable_cores()}/{os.cpu_count()} cores; flags {flags or 'unknown'}"
