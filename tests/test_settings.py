"""Settings: env prefix, defaults that resolve on a fresh checkout, cross-field limits."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings
from tests.conftest import MODELS


def test_default_model_dir_is_the_shared_models() -> None:
    s = Settings()
    assert s.model_dir == MODELS
    assert s.resolve_model(s.pose_models[0]).is_file()


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

    from service.core.io import decode_image

    limits = Settings(max_image_side=1234).image_limits
    params = inspect.signature(decode_image).parameters
    keywords = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert set(limits) == keywords - {"exif_orientation"}
    assert limits["max_side"] == 1234
