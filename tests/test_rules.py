"""Each rule is defined once (darkpose.service.core.choices / core.codec): changing it in that
one place changes the settings, the model cards, the pipeline options, the codec, the HTTP
query's OpenAPI schema, ``serve --help`` and the Ray app together."""

from __future__ import annotations

import argparse
import typing

import numpy as np
import pytest

from darkpose.service.api import create_app
from darkpose.service.commands import docs, serve
from darkpose.service.core import choices, codec
from darkpose.service.core.cards import CodecCard
from darkpose.service.core.errors import InvalidParameter
from darkpose.service.core.pipeline import PipelineOptions
from darkpose.service.settings import Settings, default_of, settings_error_line
from tests.conftest import MODELS


def _blur_kernel_schema() -> dict[str, object]:
    schema = PipelineOptions.model_json_schema()["properties"]["blur_kernel"]["anyOf"][0]
    return dict(schema)


def test_changing_the_blur_kernel_rule_changes_every_user_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for accepted in (1, 3, 11):
        assert Settings(blur_kernel=accepted).pipeline.blur_kernel == accepted  # type: ignore[call-arg]
        assert PipelineOptions(blur_kernel=accepted).blur_kernel == accepted
    assert _blur_kernel_schema()["minimum"] == 1

    monkeypatch.setattr(codec, "BLUR_KERNEL_MIN", 5)  # the one place the rule's bound lives
    maps = np.zeros((1, 1, 8, 8), np.float32)
    for refuse in (
        lambda: Settings(blur_kernel=3),  # type: ignore[call-arg]
        lambda: PipelineOptions(blur_kernel=3),
        lambda: CodecCard(blur_kernel=3),
        lambda: codec.decode_heatmaps(maps, "dark", 3),
    ):
        with pytest.raises(ValueError, match="expected an odd integer >= 5, got 3"):
            refuse()
    assert PipelineOptions(blur_kernel=5).blur_kernel == 5
    schema = _blur_kernel_schema()
    assert schema["minimum"] == 5 and schema["description"] == "odd, >= 5"
    row = next(x for x in docs.configuration_page().splitlines() if "DARKPOSE_BLUR_KERNEL`" in x)
    assert "≥ 5" in row


def test_the_settings_pipeline_and_query_share_the_range_types() -> None:
    hints = typing.get_type_hints(PipelineOptions, include_extras=True)
    assert hints["det_score_threshold"] is choices.Probability
    assert hints["keypoint_score_threshold"] is choices.Probability
    assert hints["box_padding"] is choices.BoxPadding
    assert typing.get_type_hints(Settings, include_extras=True)["providers"] is choices.Providers
    with pytest.raises(InvalidParameter, match="det_score_threshold: expected a number at most"):
        PipelineOptions(det_score_threshold=1.5)
    with pytest.raises(ValueError) as err:
        Settings(det_score_threshold=1.5)  # type: ignore[call-arg]
    assert "det_score_threshold (DARKPOSE_DET_SCORE_THRESHOLD): expected a number at most" in (
        settings_error_line(err.value)
    )
    # the HTTP query's schema: the same type's upper bound; the lower one is the service's
    # floor (min_score_threshold), which bounds what a request may cost
    settings = Settings(warmup=False, model_dir=MODELS, min_score_threshold=0.07)  # type: ignore[call-arg]
    doc = create_app(settings).openapi()
    params = {p["name"]: p for p in doc["paths"]["/pose"]["post"]["parameters"]}
    schemas = params["score_threshold"]["schema"]["anyOf"]
    (number,) = [s for s in schemas if s.get("type") == "number"]
    bounds = PipelineOptions.model_json_schema()["properties"]["det_score_threshold"]
    assert (number["minimum"], number["maximum"]) == (0.07, bounds["maximum"])


def test_a_pipeline_default_is_one_line_that_settings_and_the_reference_follow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The settings hold the pipeline options: a default changed on the option (the one place
    it is written) is the setting's default, its configuration-reference row and Ray's."""
    for env in ("DARKPOSE_OKS_NMS_THRESHOLD", "DARKPOSE_DEFAULT_MAX_PERSONS"):
        monkeypatch.delenv(env, raising=False)
    assert Settings().pipeline == PipelineOptions()  # type: ignore[call-arg]
    monkeypatch.setattr(PipelineOptions.model_fields["oks_nms_threshold"], "default", 0.7)
    monkeypatch.setattr(PipelineOptions.model_fields["max_persons"], "default", 12)
    assert (default_of("oks_nms_threshold"), default_of("default_max_persons")) == (0.7, 12)
    page = docs.configuration_page().splitlines()
    assert "`0.7`" in next(x for x in page if "DARKPOSE_OKS_NMS_THRESHOLD`" in x)
    assert "`12`" in next(x for x in page if "DARKPOSE_DEFAULT_MAX_PERSONS`" in x)


def test_pipeline_options_read_their_own_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each option is a setting of its own (``DARKPOSE_<NAME>``, text converted as settings
    are), while built in Python an option is checked strictly."""
    monkeypatch.setenv("DARKPOSE_FLIP", "false")
    monkeypatch.setenv("DARKPOSE_DEFAULT_MAX_PERSONS", "7")
    monkeypatch.setenv("DARKPOSE_BOX_PADDING", "1.4")
    s = Settings()  # type: ignore[call-arg]
    assert (s.pipeline.flip, s.pipeline.max_persons, s.pipeline.box_padding) == (False, 7, 1.4)
    assert s.setting_source("default_max_persons") == "from DARKPOSE_DEFAULT_MAX_PERSONS"
    assert s.setting_source("flip") == "from DARKPOSE_FLIP"
    assert Settings(flip=True).pipeline.flip is True  # type: ignore[call-arg]  # keyword wins
    monkeypatch.setenv("DARKPOSE_BOX_PADDING", "wide")
    with pytest.raises(ValueError) as err:
        Settings()  # type: ignore[call-arg]
    assert settings_error_line(err.value).startswith("settings: box_padding (DARKPOSE_BOX_PADDING)")
    with pytest.raises(InvalidParameter, match="box_padding: expected a number"):
        PipelineOptions(box_padding="1.4")


def test_the_batch_wait_default_is_the_settings_in_help_and_ray(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DARKPOSE_MAX_WAIT_MS", raising=False)
    assert default_of("max_wait_ms") == Settings().max_wait_ms  # type: ignore[call-arg]
    monkeypatch.setattr(Settings.model_fields["max_wait_ms"], "default", 7.5)
    help_line = next(x for x in serve.epilog().splitlines() if "DARKPOSE_MAX_WAIT_MS" in x)
    assert "default 7.5" in help_line
    pytest.importorskip("ray")
    from darkpose.service.ray_app import common

    assert common.parse_batch_config({}) == (default_of("max_batch"), 7.5 / 1000.0)


def test_cli_choices_are_the_shared_tuples() -> None:
    from darkpose.service.commands import infer

    parser = argparse.ArgumentParser()
    infer.add_arguments(parser)
    actions = {a.dest: a for a in parser._actions}
    assert tuple(actions["providers"].choices) == choices.PROVIDERS
    assert tuple(actions["decode"].choices) == tuple(codec.DECODERS)
