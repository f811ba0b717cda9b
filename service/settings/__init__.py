"""Service settings (pydantic-settings, environment prefix ``DARKPOSE_``).

Example: ``DARKPOSE_MODEL_DIR=/models DARKPOSE_PROVIDERS=cuda darkpose serve``.

:class:`Settings` is made of groups by job (:mod:`darkpose.service.settings.groups`: models,
limits, batching, access, hostile input, server, video) and holds the pipeline options
(:class:`~darkpose.service.core.options.PipelineOptions`, ``Settings.pipeline``); every setting,
pipeline options included, is one environment variable ``DARKPOSE_<NAME>`` and one keyword
``Settings(<name>=...)`` (:func:`setting_fields` lists them).

List settings (``DARKPOSE_POSE_MODELS``) accept what a person types: one value
(``/path/m.onnx``), a comma list (``a.onnx,b.onnx``) or a JSON list (``["a.onnx", "b.onnx"]``).
:func:`settings_error_line` turns any settings error into one line (the CLI logs it and exits 2).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from darkpose.service.core.options import SETTING_NAMES, PipelineOptions
from darkpose.service.core.profiles import (
    profile_governed,
    profile_names,
    profile_settings,
    profiles_table,
)
from darkpose.service.settings.groups import (
    AccessSettings,
    BatchingSettings,
    HostileInputSettings,
    LimitSettings,
    ModelSettings,
    ServerSettings,
    VideoSettings,
)
from darkpose.service.settings.text import (
    ENV_PREFIX,
    ImageLimits,
    TextList,
    settings_error_line,
    split_list,
    split_weight,
)

__all__ = [
    "ENV_NOT_SETTINGS",
    "ENV_PREFIX",
    "SETTING_GROUPS",
    "ImageLimits",
    "Settings",
    "TextList",
    "default_of",
    "group_fields",
    "setting_env_names",
    "setting_fields",
    "settings_error_line",
    "split_list",
    "split_weight",
    "unknown_env_warnings",
]

#: The pipeline option behind each setting name (``default_max_persons`` → ``max_persons``).
_OPTION_OF: dict[str, str] = {setting: option for option, setting in SETTING_NAMES.items()}

#: The settings the current validation took from the profile (before → after validator).
_FROM_PROFILE: ContextVar[frozenset[str]] = ContextVar("darkpose_from_profile", default=frozenset())


def default_of(name: str) -> Any:
    """The built-in default of the :class:`Settings` field ``name`` (no environment): what
    ``serve --help``, the Ray app and the configuration reference show and use."""
    field = setting_fields()[name]
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, with each pipeline option read from its own
    variable (``DARKPOSE_FLIP``, ``DARKPOSE_DEFAULT_MAX_PERSONS``) for ``Settings.pipeline``
    instead of one ``DARKPOSE_PIPELINE``."""

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        data.pop("pipeline", None)
        for setting in _OPTION_OF:
            key = f"{self.env_prefix}{setting}"
            value = self.env_vars.get(key if self.case_sensitive else key.lower())
            if value is not None:
                data[setting] = value
        return data


class Settings(
    BaseSettings,
    ModelSettings,
    LimitSettings,
    BatchingSettings,
    AccessSettings,
    HostileInputSettings,
    ServerSettings,
    VideoSettings,
):
    """All tunables of the pipeline and the HTTP service."""

    model_config = SettingsConfigDict(env_prefix="DARKPOSE_", env_file=None, extra="ignore")

    pipeline: PipelineOptions = Field(
        default_factory=PipelineOptions,
        description="the pipeline options, each a setting of its own (setting_fields)",
    )

    _from_profile: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _EnvSource(settings_cls), dotenv_settings, file_secret_settings)

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        """Gather the pipeline options given by their setting names (environment or keyword:
        ``flip=True``, ``DARKPOSE_DEFAULT_MAX_PERSONS=5``) into ``pipeline``, then fill every
        setting the profile sets and the caller did not from the profile table
        (:mod:`darkpose.service.core.profiles`); remembers which (:meth:`setting_source`)."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        given = out.pop("pipeline", None)
        if isinstance(given, PipelineOptions):
            given = {k: getattr(given, k) for k in given.model_fields_set}
        options = dict(given) if isinstance(given, Mapping) else {}
        for setting, option in _OPTION_OF.items():
            if setting in out:
                options[option] = out.pop(setting)
        name = str(out.get("profile", profiles_table()["default"]))
        if name not in profile_names():
            raise ValueError(
                f"profile ({ENV_PREFIX}PROFILE): expected one of {', '.join(profile_names())}, "
                f"got {name!r}"
            )
        filled = []
        for key, value in profile_settings(name).items():
            target, field = (options, _OPTION_OF[key]) if key in _OPTION_OF else (out, key)
            if field not in target:
                target[field] = value
                filled.append(key)
        out["pipeline"] = options
        _FROM_PROFILE.set(frozenset(filled))
        return out

    @model_validator(mode="after")
    def _remember_profile(self) -> Settings:
        self._from_profile = _FROM_PROFILE.get()
        _FROM_PROFILE.set(frozenset())
        return self

    def setting_source(self, name: str) -> str:
        """Where setting ``name``'s value came from: ``from profile <p>``, ``from
        DARKPOSE_<NAME>`` (environment), ``set explicitly`` (keyword) or ``default``."""
        if name in self._from_profile:
            return f"from profile {self.profile}"
        option = _OPTION_OF.get(name)
        given = self.pipeline.model_fields_set if option else self.model_fields_set
        if (option or name) in given:
            env = ENV_PREFIX + name.upper()
            return f"from {env}" if env in os.environ else "set explicitly"
        return "default"

    def value(self, name: str) -> Any:
        """The value of the setting ``name`` (a pipeline option by its setting name too:
        ``value("default_max_persons")`` is ``pipeline.max_persons``)."""
        option = _OPTION_OF.get(name)
        return getattr(self.pipeline, option) if option else getattr(self, name)

    def profile_report(self) -> dict[str, Any]:
        """The profile and every profile-governed setting's value and source, for
        ``/v1/models``, the startup log and ``serve --help``: ``{"name": "balanced",
        "settings": {"flip": {"value": False, "source": "from profile balanced"}, ...}}``."""
        return {
            "name": self.profile,
            "settings": {
                n: {"value": self.value(n), "source": self.setting_source(n)}
                for n in profile_governed()
            },
        }

    def profile_line(self) -> str:
        """One log line: ``profile balanced: detector=picodet (from profile balanced), ...``."""
        parts = []
        for n, entry in self.profile_report()["settings"].items():
            v = entry["value"]
            shown = ",".join(map(str, v)) if isinstance(v, list) else str(v)
            parts.append(f"{n}={shown} ({entry['source']})")
        return f"profile {self.profile}: " + ", ".join(parts)

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.pipeline.max_persons > self.max_persons:
            raise ValueError(
                f"default_max_persons: expected at most max_persons ({self.max_persons}), "
                f"got {self.pipeline.max_persons}"
            )
        return self

    @property
    def image_limits(self) -> ImageLimits:
        """The keyword limits of :func:`darkpose.service.core.io.decode_image` /
        ``read_image_file`` (a fresh dict).  ``min_side`` is 1: a valid image with a side under
        ``min_image_side`` decodes, and its callers answer it with no persons rather than
        refuse it."""
        return {
            "max_bytes": self.max_image_bytes,
            "max_pixels": self.max_image_pixels,
            "max_side": self.max_image_side,
            "min_side": 1,
            "max_jpeg_scans": self.max_jpeg_scans,
            "max_png_chunks": self.max_png_chunks,
        }

    @property
    def video_limits(self) -> dict[str, Any]:
        """The keyword limits of :func:`darkpose.service.core.video.open_video` (a fresh dict):
        the codec allow-list, duration and frame count, and the image limits on frame size."""
        return {
            "codecs": list(self.video_codecs),
            "max_duration_s": self.video_max_duration_s,
            "max_frames": self.video_max_frames,
            "max_side": self.max_image_side,
            "max_pixels": self.max_image_pixels,
        }


def _option_alias(setting: str, option: str) -> property:
    def read(self: Settings) -> Any:
        return getattr(self.pipeline, option)

    return property(read, doc=f"``pipeline.{option}`` (read-only alias)")


# ``settings.flip``, ``settings.default_max_persons``, ...: the pipeline options by their setting
# names, read-only (the values live in ``settings.pipeline``).
for _setting, _option in _OPTION_OF.items():
    setattr(Settings, _setting, _option_alias(_setting, _option))


#: The settings by job, in the order help and the configuration reference show them; the
#: pipeline options are listed under their setting names (:data:`SETTING_NAMES`).
SETTING_GROUPS: dict[str, type[BaseModel]] = {
    "Models and runtime": ModelSettings,
    "Pipeline": PipelineOptions,
    "Image requests": LimitSettings,
    "Batching and concurrency": BatchingSettings,
    "Access control and request heads": AccessSettings,
    "Hostile input and slow clients": HostileInputSettings,
    "Server": ServerSettings,
    "Video and live streams": VideoSettings,
}


def group_fields(group: type[BaseModel]) -> dict[str, FieldInfo]:
    """The settings of one of :data:`SETTING_GROUPS` by setting name, with their fields."""
    if group is PipelineOptions:
        return {SETTING_NAMES[n]: f for n, f in PipelineOptions.model_fields.items()}
    return {name: Settings.model_fields[name] for name in group.model_fields}


@functools.cache
def setting_fields() -> dict[str, FieldInfo]:
    """Every setting a user sets (``DARKPOSE_<NAME>``, keyword ``<name>``) and its field, group
    by group (:data:`SETTING_GROUPS`), the pipeline options under their setting names: what
    ``serve --help``, the configuration reference and the unknown-variable check list."""
    out: dict[str, FieldInfo] = {}
    for group in SETTING_GROUPS.values():
        out.update(group_fields(group))
    return out


#: ``DARKPOSE_*`` environment variables that are not :class:`Settings` but are read elsewhere:
#: the test switch of ``.ci/run`` and the variables docker compose and the Ray head script
#: substitute.  :func:`unknown_env_warnings` leaves them alone (the ``htc`` detector's
#: ``DARKPOSE_HTC_*`` come from its own settings class).
ENV_NOT_SETTINGS: frozenset[str] = frozenset(
    {
        "DARKPOSE_REQUIRE_TOOLS",
        "DARKPOSE_MODELS",
        "DARKPOSE_MEM_LIMIT",
        "DARKPOSE_HTTP_PORT",
        "DARKPOSE_GPU_HTTP_PORT",
        "DARKPOSE_RAY_HTTP_PORT",
        "DARKPOSE_SERVE_DEPLOY_ATTEMPTS",
        "DARKPOSE_SERVE_DEPLOY_DELAY_S",
    }
)


def setting_env_names(*others: type[BaseSettings]) -> list[str]:
    """Every environment variable a setting reads: ``DARKPOSE_<FIELD>`` of :class:`Settings`
    and ``<prefix><FIELD>`` of each settings class of ``others`` (the ``htc`` detector's
    defaults, ``DARKPOSE_HTC_*``: the runtime passes them, this layer does not import it)."""
    names = [ENV_PREFIX + name.upper() for name in setting_fields()]
    for other in others:
        prefix = str(other.model_config.get("env_prefix", ""))
        names += [prefix + name.upper() for name in other.model_fields]
    return names


def unknown_env_warnings(environ: Mapping[str, str], *others: type[BaseSettings]) -> list[str]:
    """One message per ``DARKPOSE_*`` variable of ``environ`` that no setting (of
    :class:`Settings` or ``others``) reads (a typo is silently ignored otherwise), naming the
    closest setting when one is close."""
    import difflib

    known = setting_env_names(*others)
    ignored = set(known) | ENV_NOT_SETTINGS
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in known}  # the shared prefix
    out = []  # would make every name look close
    for var in sorted(environ):
        name = var.upper()
        if not name.startswith(ENV_PREFIX) or name in ignored:
            continue
        close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), suffixes, 1, 0.6)
        hint = f"; did you mean {suffixes[close[0]]}?" if close else "; see darkpose serve --help"
        out.append(f"environment: {var} is not a darkpose setting and is ignored{hint}")
    return out
