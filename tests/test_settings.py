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
    assert (s.max_batch, s.decode) == (7, "standard")


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
    import inspect

    from darkpose.service.core.io import decode_image

    limits = Settings(max_image_side=1234).image_limits
    params = inspect.signature(decode_image).parameters
    keywords = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert set(limits) == keywords - {"exif_orientation", "on_header"}
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


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        ("DARKPOSE_POSE_MODELS", "[broken", "pose_models (DARKPOSE_POSE_MODELS)"),
        ("DARKPOSE_PORT", "abc", "port (DARKPOSE_PORT): expected a valid integer"),
        ("DARKPOSE_MAX_PERSONS", "5", "default_max_persons: expected at most max_persons (5)"),
    ],
)
def test_settings_errors_are_one_line(
    env: str, value: str, needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic_settings import SettingsError

    from darkpose.service.settings import settings_error_line

    monkeypatch.setenv(env, value)
    with pytest.raises((ValidationError, SettingsError)) as exc:
        Settings()
    line = settings_error_line(exc.value)
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
