"""Typed errors of the model definitions, checkpoint loader and exporter."""

from __future__ import annotations

from darkpose.service.core.errors import ModelError


class ExportError(ModelError, ValueError):
    """Something the user asked the exporter to do cannot work: unknown architecture,
    malformed/unsupported input size, a failed parity check.  The CLI prints the message and
    exits with code 2 (no traceback)."""

    code = "export_error"


class CheckpointError(ExportError):
    """A checkpoint that cannot be read or does not match the architecture (missing /
    unexpected keys, shape mismatches)."""

    code = "checkpoint_error"
