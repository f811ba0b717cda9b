"""Settings: env prefix, defaults that resolve on a fresh checkout, cross-field limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from darkpose.service.settings import Settings


def test_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKPOSE_MAX_BATCH", "7")
    monkeypatch.setenv("DARKPOSE_DECODE", "standard")
    s = Settings()
    assert (s.max_batch, s.pipeline.decode) == (7, "standard")


@pytest.mark.parametrize(
    ("field", "value"),
    [("decode", "bogus"), ("max_batch", 0), ("providers", "tpu"), ("det_score_threshold", 1.5)],
)
def test_bad_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_default_max_persons_must_fit_the_limit() -> None:
    with pytest.raises(ValidationError, match="expected at most max_persons"):
        Settings(max_persons=10, default_max_persons=30)


def test_image_limits_are_decode_image_keywords() -> None:
    import dataclasses

    from darkpose.service.core.io import DecodeLimitKeywords, DecodeLimits

    limits = Settings(max_image_side=1234).image_limits
    assert set(limits) == {f.name for f in dataclasses.fields(DecodeLimits)}
    assert set(DecodeLimitKeywords.__annotations__) == set(limits)
    defaults = DecodeLimits()
    assert (Settings().max_image_bytes, Settings().max_png_chunks) == (  # type: ignore[call-arg]
        defaults.max_bytes,
        defaults.max_png_chunks,
    )
    assert limits["max_side"] == 1234


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/models/m.onnx", ["/models/m.onnx"]),
        ("a.onnx,b.onnx", ["a.onnx", "b.onnx"]),
        (" a.onnx , b.onnx ,", ["a.onnx", "b.onnx"]),
        ('["a.onnx", "b.onnx"]', ["a.onnx", "b.onnx"]),
    ],
)
def test_list_settings_take_what_a_person_types(
    text: str, expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DARKPOSE_POSE_MODELS", text)
    assert Settings().pose_models == expected
    monkeypatch.delenv("DARKPOSE_POSE_MODELS")
    assert Settings(pose_models=text).pose_models == expected


def _error_line(env: str, value: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The one line ``settings_error_line`` makes of the error of ``Settings()`` with
    ``env=value`` set (the test fails when no error is raised)."""
    from pydantic_settings import SettingsError

    from darkpose.service.settings import settings_error_line

    monkeypatch.setenv(env, value)
    with pytest.raises((ValidationError, SettingsError)) as exc:
        Settings()
    return settings_error_line(exc.value)


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        ("DARKPOSE_POSE_MODELS", "[broken", "pose_models (DARKPOSE_POSE_MODELS)"),
        ("DARKPOSE_PORT", "abc", 'port (DARKPOSE_PORT): expected an integer, got "abc"'),
        ("DARKPOSE_MAX_PERSONS", "5", "default_max_persons: expected at most max_persons (5)"),
    ],
)
def test_settings_errors_are_one_line(
    env: str, value: str, needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = _error_line(env, value, monkeypatch)
    assert "\n" not in line
    assert needle in line, line


def test_default_model_dir_is_the_packaged_zoo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default model directory is the one packaged with darkpose, wherever the process runs;
    a model directory that does not exist gets a hint naming the setting."""
    from darkpose.service.core.cards import ZOO_DIR

    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.model_dir == ZOO_DIR and (ZOO_DIR / "pp_tinypose_256x192.onnx").is_file()
    assert s.resolve_model("yolox_nano_416.onnx").is_file()
    missing = Settings(model_dir=tmp_path / "none")  # type: ignore[call-arg]
    hint = missing.model_dir_hint()
    assert "DARKPOSE_MODEL_DIR=" in hint and str(tmp_path / "none") in hint


def test_weighted_pose_model_entries() -> None:
    s = Settings(pose_models=["a.onnx@0.7", "dir/b.onnx", "/abs/c@d.onnx@2"])  # type: ignore[call-arg]
    assert s.pose_model_files == ["a.onnx", "dir/b.onnx", "/abs/c@d.onnx"]
    assert s.pose_model_weights == [0.7, 1.0, 2.0]


@pytest.mark.parametrize("entry", ["a.onnx@0", "a.onnx@-1", "a.onnx@x", "@1", "a.onnx@nan"])
def test_bad_weighted_entries(entry: str) -> None:
    with pytest.raises(ValidationError, match="expected 'file.onnx' or 'file.onnx@<weight > 0>'"):
        Settings(pose_models=[entry])  # type: ignore[call-arg]


@pytest.mark.parametrize(("field", "value"), [("blur_kernel", 4), ("decode", "soft")])
def test_decode_settings_are_checked(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match="expected"):
        Settings(**{field: value})  # type: ignore[arg-type]


#: Words that are pydantic's, not ours: no error line a user sees contains them.
PYDANTIC_JARGON = ("Input should", "unable to", "Value error", "valid integer", "<class")
BOOL_WORDS = "(also 1/0, yes/no, on/off)"
JSON = "expected a plain value, a comma list or a JSON list, got '[broken', which does not parse"


@pytest.mark.parametrize(
    ("env", "value", "line"),
    [
        ("DARKPOSE_PORT", "abc", 'port (DARKPOSE_PORT): expected an integer, got "abc"'),
        ("DARKPOSE_PORT", "70000",
         'port (DARKPOSE_PORT): expected a number less than 65536, got "70000"'),
        ("DARKPOSE_MAX_BATCH", "0",
         'max_batch (DARKPOSE_MAX_BATCH): expected a number greater than 0, got "0"'),
        ("DARKPOSE_MAX_WAIT_MS", "soon",
         'max_wait_ms (DARKPOSE_MAX_WAIT_MS): expected a number, got "soon"'),
        ("DARKPOSE_DET_SCORE_THRESHOLD", "2",
         "det_score_threshold (DARKPOSE_DET_SCORE_THRESHOLD): expected a number at most 1.0, "
         'got "2"'),
        ("DARKPOSE_FLIP", "maybe",
         f'flip (DARKPOSE_FLIP): expected true or false {BOOL_WORDS}, got "maybe"'),
        ("DARKPOSE_PROVIDERS", "gpu",
         'providers (DARKPOSE_PROVIDERS): expected one of auto, cpu, cuda, got "gpu"'),
        ("DARKPOSE_DECODE", "magic",
         "decode (DARKPOSE_DECODE): expected one of argmax, standard, dark, got 'magic'"),
        ("DARKPOSE_BLUR_KERNEL", "4",
         "blur_kernel (DARKPOSE_BLUR_KERNEL): expected an odd integer >= 1, got 4"),
        ("DARKPOSE_POSE_MODELS", "a.onnx@0",
         "pose_models (DARKPOSE_POSE_MODELS): pose model entry: expected 'file.onnx' or "
         "'file.onnx@<weight > 0>', got 'a.onnx@0'"),
        ("DARKPOSE_POSE_MODELS", "[broken",
         f"pose_models (DARKPOSE_POSE_MODELS): {JSON} as JSON (Expecting value)"),
        ("DARKPOSE_MAX_PERSONS", "5",
         "default_max_persons: expected at most max_persons (5), got 30"),
    ],
)  # fmt: skip
def test_settings_errors_read_as_sentences(
    env: str, value: str, line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exact line a user reads: "<setting> (<variable>): expected X, got Y", once."""
    text = _error_line(env, value, monkeypatch)
    assert text == f"settings: {line}"
    assert text.count("expected") == 1 and "expected expected" not in text
    assert not [w for w in PYDANTIC_JARGON if w in text], text


@pytest.mark.parametrize(
    ("variable", "closest"),
    [
        ("DARKPOSE_DETECTER", "DARKPOSE_DETECTOR"),
        ("DARKPOSE_POSE_MODEL", "DARKPOSE_POSE_MODELS"),
        ("DARKPOSE_MAXBATCH", "DARKPOSE_MAX_BATCH"),
        ("DARKPOSE_LOGLEVEL", "DARKPOSE_LOG_LEVEL"),
        ("DARKPOSE_HTC_SCAL", "DARKPOSE_HTC_SCALE"),
    ],
)
def test_unknown_environment_variable_names_the_closest_setting(
    variable: str, closest: str
) -> None:
    from darkpose.service.runtime.detector_config import HtcSettings
    from darkpose.service.settings import unknown_env_warnings

    warnings = unknown_env_warnings({variable: "x", "PATH": "/bin"}, HtcSettings)
    assert warnings == [
        f"environment: {variable} is not a darkpose setting and is ignored; did you mean {closest}?"
    ]


def test_settings_and_allowed_variables_get_no_warning() -> None:
    """Every setting's variable, the htc detector's and the allow-list (CI switch, compose and
    Ray variables) pass; each allow-listed name is really used somewhere in the repository."""
    from darkpose.service.runtime.detector_config import HtcSettings
    from darkpose.service.settings import (
        ENV_NOT_SETTINGS,
        setting_env_names,
        unknown_env_warnings,
    )

    names = [*setting_env_names(HtcSettings), *ENV_NOT_SETTINGS]
    assert unknown_env_warnings(dict.fromkeys(names, "1"), HtcSettings) == []
    assert unknown_env_warnings({"DARKPOSE_NO_SUCH_THING_AT_ALL": "1"})[0].endswith(
        "; see darkpose serve --help"
    )
    repo = Path(__file__).resolve().parent.parent
    texts = "".join(
        p.read_text(errors="replace")
        for pattern in (
            "docker-compose*.yml",
            ".ci/run",
            "deploy/**/*",
            "docker/**/*",
            "tests/**/*.py",
        )
        for p in repo.glob(pattern)
        if p.is_file()
    )
    unused = sorted(n for n in ENV_NOT_SETTINGS if n not in texts)
    assert not unused, f"expected every allow-listed variable in use, got unused {unused}"


@pytest.mark.parametrize("name", ["/abs/dir/model.onnx", "model.onnx", "sub/model.onnx"])
def test_model_dir_hint_fits_the_name(name: str, tmp_path: Path) -> None:
    """An absolute name is not told to "give the file's absolute path"; a relative one is told
    where relative names are read from."""
    hint = Settings(model_dir=tmp_path).model_dir_hint(name)  # type: ignore[call-arg]
    if name.startswith("/"):
        assert "absolute path" in hint and "give the file's absolute path" not in hint, hint
    else:
        assert f"relative model names are read from {tmp_path}" in hint, hint


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            '["a.onnx", 3',
            "expected a plain value, a comma list or a JSON list, got '[\"a.onnx\", 3'",
        ),
        ('["a.onnx"', "expected a plain value, a comma list or a JSON list, got '[\"a.onnx\"'"),
    ],
)
def test_list_setting_keyword_errors_name_the_setting(text: str, line: str) -> None:
    """A list setting given as text (keyword, as ``darkpose serve`` flags pass them) that does
    not parse names the setting, although the check runs before any field is validated."""
    from darkpose.service.settings import settings_error_line

    with pytest.raises(ValidationError) as exc:
        Settings(pose_models=text)  # type: ignore[call-arg]
    got = settings_error_line(exc.value)
    assert got.startswith(f"settings: pose_models (DARKPOSE_POSE_MODELS): {line}"), got
    assert got.count("expected") == 1, got


@pytest.mark.parametrize(
    "value", ["127.0.0.1,10.0.0.1/8", '["127.0.0.1", "10.0.0.0/8"]', " 127.0.0.1 , 10.0.0.0/8 "]
)
def test_trusted_proxies_from_the_environment(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A comma list or a JSON list of addresses / networks; host bits are dropped."""
    import ipaddress

    monkeypatch.setenv("DARKPOSE_TRUSTED_PROXIES", value)
    assert Settings().trusted_proxies == [
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
    ]


def test_every_setting_is_in_one_group_and_each_option_is_a_setting() -> None:
    """The groups (and the pipeline options under their setting names) are every setting once,
    so help, the configuration reference and the unknown-variable check miss none."""
    from darkpose.service.core.options import SETTING_NAMES, PipelineOptions
    from darkpose.service.settings import SETTING_GROUPS, group_fields, setting_fields

    names = [n for group in SETTING_GROUPS.values() for n in group_fields(group)]
    assert len(names) == len(set(names))
    assert set(names) == (set(Settings.model_fields) - {"pipeline"}) | set(SETTING_NAMES.values())
    assert list(setting_fields()) == names
    assert set(SETTING_NAMES) == set(PipelineOptions.model_fields)


def test_pipeline_options_read_by_their_setting_names() -> None:
    s = Settings(flip=False, default_max_persons=7, box_padding=1.3)  # type: ignore[call-arg]
    assert (s.flip, s.default_max_persons, s.box_padding) == (False, 7, 1.3)  # type: ignore[attr-defined]
    assert (s.pipeline.max_persons, s.max_persons) == (7, 100)
    with pytest.raises(AttributeError):
        s.flip = True  # type: ignore[attr-defined]
