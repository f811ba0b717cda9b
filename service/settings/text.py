"""How settings are written: list values, weighted model entries and one-line errors naming
the environment variable (``DARKPOSE_<NAME>``)."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationError
from pydantic_settings import NoDecode, SettingsError

from darkpose.service.core.choices import split_list
from darkpose.service.core.errors import describe_validation_errors
from darkpose.service.core.io import DecodeLimitKeywords
from darkpose.service.core.options import SETTING_NAMES

ENV_PREFIX = "DARKPOSE_"


def _split_text(value: Any) -> Any:
    return split_list(value) if isinstance(value, str) else value


#: A list setting as a person types it (environment or keyword): one value, a comma list or a
#: JSON list (:func:`split_list`; ``NoDecode``: the environment source leaves the text to it).
TextList = Annotated[list[str], NoDecode, BeforeValidator(_split_text)]


def settings_error_line(exc: Exception) -> str:
    """One line for a settings error (``ValidationError`` or ``SettingsError``), naming the
    setting and its environment variable: ``settings: det_score_threshold
    (DARKPOSE_DET_SCORE_THRESHOLD): expected a number at most 1.0, got 2``."""
    if isinstance(exc, ValidationError):
        return "settings: " + describe_validation_errors(exc.errors(), _setting_place)
    if isinstance(exc, SettingsError):
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        m = re.search(r'field "(\w+)"', str(exc))
        if m is None:
            return f"settings: {exc}{cause}".replace("\n", " ")
        name = m.group(1)
        return (
            f"settings: {name} ({ENV_PREFIX}{name.upper()}): expected a plain value, a comma "
            f"list or valid JSON, got a value that does not parse{cause}"
        ).replace("\n", " ")
    return f"settings: {exc}".replace("\n", " ")


def _setting_place(loc: Any) -> str:
    """``("pipeline", "flip")`` → ``flip (DARKPOSE_FLIP)``; ``("port",)`` → ``port
    (DARKPOSE_PORT)``: a validation error's place as the setting a user sets."""
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] == "pipeline" and parts[1] in SETTING_NAMES:
        parts = [SETTING_NAMES[parts[1]], *parts[2:]]
    return f"{'.'.join(parts)} ({ENV_PREFIX}{parts[0].upper()})"


#: The keyword limits of :func:`darkpose.service.core.io.decode_image` / ``read_image_file``.
ImageLimits = DecodeLimitKeywords


def split_weight(entry: str) -> tuple[str, float]:
    """``"model.onnx@0.7"`` → ``("model.onnx", 0.7)``; no ``@`` → weight 1.  ``ValueError``
    ("expected ..., got ...") for an empty name or a weight that is not a finite number > 0."""
    name, sep, raw = entry.rpartition("@")
    if not sep:
        name, raw = entry, "1"
    try:
        weight = float(raw)
    except ValueError:
        weight = math.nan
    if not name.strip() or not (math.isfinite(weight) and weight > 0):
        raise ValueError(
            f"pose model entry: expected 'file.onnx' or 'file.onnx@<weight > 0>', got {entry!r}"
        )
    return name.strip(), weight
