"""Profiles: named bundles of settings (``DARKPOSE_PROFILE`` = fast | balanced | accurate), read
from the table packaged with the models (``darkpose/zoo/profiles.json``; docs: accuracy.md).

The table is data, not code paths: the default profile's values are the defaults of the settings
and of :class:`~darkpose.service.core.pipeline.PipelineOptions` they govern (one definition).
This module is pure (JSON only).
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from darkpose.service.core.cards import ZOO_DIR

#: The profile table: named bundles of settings (``DARKPOSE_PROFILE``), data, not code paths.
PROFILES_FILE = ZOO_DIR / "profiles.json"


@cache
def profiles_table() -> dict[str, Any]:
    """The parsed :data:`PROFILES_FILE`: ``{"default": name, "profiles": {name:
    {"description": str, "settings": {setting: value}}}}``."""
    table: dict[str, Any] = json.loads(PROFILES_FILE.read_text(encoding="utf-8"))
    return table


def profile_names() -> list[str]:
    """The profile names of :data:`PROFILES_FILE` (``fast``, ``balanced``, ``accurate``)."""
    return list(profiles_table()["profiles"])


def profile_settings(name: str) -> dict[str, Any]:
    """The settings profile ``name`` sets (a fresh dict); ``ValueError`` ("expected one of
    ..., got ...") for an unknown name."""
    profiles = profiles_table()["profiles"]
    if name not in profiles:
        raise ValueError(f"profile: expected one of {', '.join(profiles)}, got {name!r}")
    return dict(profiles[name]["settings"])


def profile_governed() -> list[str]:
    """Every setting some profile sets (in table order)."""
    names: dict[str, None] = {}
    for entry in profiles_table()["profiles"].values():
        names.update(dict.fromkeys(entry["settings"]))
    return list(names)


def default_profile_value(name: str) -> Any:
    """The built-in default of a profile-governed setting: the default profile's value."""
    return profile_settings(profiles_table()["default"])[name]
