"""Model cards: the shipped cards, card files beside a user's model, ONNX metadata, invalid and
missing cards (real models from ../shared, real onnxruntime)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest

from darkpose.service.core.cards import CARD_METADATA_KEY, ZOO_DIR, ModelCard, parse_card, read_card
from darkpose.service.core.errors import ModelError
from darkpose.service.runtime.cards import card_beside, resolve_card, shipped_card_path
from darkpose.service.runtime.detectors import OnnxDetector, PicoDetDetector, YoloxDetector
from darkpose.service.runtime.pose import OnnxPoseModel
from darkpose.service.settings import Settings
from tests.api.tiny_model import tiny_onnx_bytes
from tests.conftest import IMAGES, MODELS

SHARED_MODELS = (
    "pose_simplepose_256x192.onnx",
    "pp_tinypose_256x192.onnx",
    "yolox_nano_416.onnx",
    "picodet_s_416_pedestrian.onnx",
)
IMAGE = IMAGES / "000000370162.jpg"


def _shipped(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(shipped_card_path(name).read_text())
    return data


@pytest.mark.parametrize("name", SHARED_MODELS)
def test_shipped_cards_describe_the_shared_files(name: str) -> None:
    path = MODELS / name
    found = resolve_card(path)
    assert found is not None and found.source == "shipped"
    card = found.card
    assert card.file == name
    assert card.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card.provenance.licence and card.provenance.source
    assert card.backend == "onnxruntime" and card.precision == "fp32"
    # the names in the card are the graph's names
    model = onnx.load(str(path))
    assert card.input.name in {i.name for i in model.graph.input}
    assert {o.name for o in card.outputs} <= {o.name for o in model.graph.output}
    # round trip through JSON
    assert parse_card(card.to_json(), "round trip") == card


@pytest.mark.parametrize("path", sorted(ZOO_DIR.glob("*.onnx")), ids=lambda p: p.name)
def test_packaged_models_are_the_shared_files_with_their_cards(path: Path) -> None:
    """Each packaged model is a byte-identical copy of the ../shared file its card pins, and
    resolves to that card with a licence and a source."""
    assert path.read_bytes() == (MODELS / path.name).read_bytes()
    found = resolve_card(path)
    assert found is not None and found.where == str(card_beside(path))
    assert found.card.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "Apache-2.0" in found.card.provenance.licence and found.card.provenance.source


def test_shipped_cards_drive_the_backends() -> None:
    pose = OnnxPoseModel(MODELS / "pp_tinypose_256x192.onnx", providers="cpu")
    assert pose.card_source == "shipped" and pose.input_name == "image"
    assert pose.spec.input_size == (192, 256) and pose.spec.heatmap_size == (48, 64)
    pico = PicoDetDetector(MODELS / "picodet_s_416_pedestrian.onnx", providers="cpu")
    assert pico.card.input.resize == "stretch" and pico.layout == "boxes_scores"
    yolox = YoloxDetector(MODELS / "yolox_nano_416.onnx", providers="cpu")
    assert yolox.card.input.resize == "letterbox" and yolox.card.input.pad_value == 114


def _bad(change: dict[str, Any], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    data = _shipped("pp_tinypose_256x192.onnx")
    for key in drop:
        data.pop(key)
    for dotted, value in change.items():
        *parents, last = dotted.split(".")
        node = data
        for p in parents:
            node = node[p]
        node[last] = value
    return data


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (_bad({"codec.blur_kernel": 4}), "codec.blur_kernel: expected an odd integer >= 1, got 4"),
        (_bad({"colour": "red"}), 'colour: expected no such key (unknown field), got "red"'),
        (_bad({"schema": 2}), "schema"),
        (_bad({"kind": "segmenter"}), "kind"),
        (_bad({}, drop=("codec",)), "expected 'pose' and 'codec' sections"),
        (_bad({"outputs": [{"layout": "boxes"}]}), "expected one 'heatmaps' output"),
        (_bad({"input.resize": "stretch"}), "expected 'affine' for a top-down pose model"),
        (_bad({"input.std": [0.2, 0.0, 0.2]}), "std: expected values > 0"),
        (_bad({"input.size": [192]}), "input.size.1: expected a value, got none"),
        (_bad({"pose.flip_pairs": [[1, 17]]}), "flip_pairs: expected indices in [0, 17)"),
        (_bad({"sha256": "abc"}), "sha256"),
        (_bad({"kind": "detector"}), "expected ['yolox'] or ['boxes', 'scores']"),
    ],
)
def test_invalid_cards_name_the_field(data: dict[str, Any], needle: str) -> None:
    with pytest.raises(ModelError, match="expected") as exc:
        parse_card(data, "test")
    assert needle in exc.value.message, exc.value.message
    assert exc.value.message.startswith("model card test:")


def test_unreadable_and_non_json_card_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="expected a readable JSON file"):
        read_card(tmp_path / "nope.card.json")
    bad = tmp_path / "bad.card.json"
    bad.write_text("{kind: pose")
    with pytest.raises(ModelError, match="expected JSON, got a syntax error"):
        read_card(bad)


def _link(tmp: Path, name: str, target: Path) -> Path:
    dst = tmp / name
    dst.symlink_to(target)
    return dst


def test_user_detector_with_card_beside_it_serves_with_no_code_change(tmp_path: Path) -> None:
    """A PicoDet under a new name + its card file in a model directory of the user's."""
    _link(tmp_path, "people.onnx", MODELS / "picodet_s_416_pedestrian.onnx")
    card = _shipped("picodet_s_416_pedestrian.onnx")
    card.update(name="people", file="people.onnx", sha256=None)
    card_beside(tmp_path / "people.onnx").write_text(json.dumps(card))
    _link(tmp_path, "pose.onnx", MODELS / "pp_tinypose_256x192.onnx")
    pose_card = _shipped("pp_tinypose_256x192.onnx")
    pose_card.update(name="my_pose", file="pose.onnx", sha256=None)
    (tmp_path / "pose.card.json").write_text(json.dumps(pose_card))
    from darkpose.service.runtime.factory import build_pipeline

    settings = Settings(  # type: ignore[call-arg]
        model_dir=tmp_path,
        detector="onnx(model=people.onnx)",
        pose_models=["pose.onnx"],
        providers="cpu",
        intra_op_threads=1,
    )
    pipe = build_pipeline(settings)
    assert isinstance(pipe.detector, OnnxDetector) and pipe.detector.card.name == "people"
    assert pipe.spec.name == "my_pose"
    res = pipe(cv2.imread(str(IMAGE)))
    assert len(res.persons) >= 5
    assert all(np.isfinite(p.keypoints).all() for p in res.persons)


def test_missing_detector_card_is_a_model_error(tmp_path: Path) -> None:
    _link(tmp_path, "people.onnx", MODELS / "picodet_s_416_pedestrian.onnx")
    with pytest.raises(ModelError, match=r"expected a model card .*people\.card\.json.*got none"):
        OnnxDetector(tmp_path / "people.onnx", providers="cpu")


def test_missing_pose_card_falls_back_to_the_graph(tmp_path: Path) -> None:
    path = _link(tmp_path, "anon.onnx", MODELS / "pose_simplepose_256x192.onnx")
    model = OnnxPoseModel(path, providers="cpu")
    assert model.card_source == "graph"
    assert model.spec.input_size == (192, 256) and model.spec.heatmap_size == (48, 64)


def test_shipped_card_needs_the_matching_file(tmp_path: Path) -> None:
    """A different file under a shipped card's name does not get that card."""
    (tmp_path / "pp_tinypose_256x192.onnx").write_bytes(tiny_onnx_bytes())
    assert resolve_card(tmp_path / "pp_tinypose_256x192.onnx") is None


def test_card_in_onnx_metadata_wins(tmp_path: Path) -> None:
    model = onnx.load_model_from_string(tiny_onnx_bytes())
    card = _shipped("pp_tinypose_256x192.onnx")
    card.update(name="tiny", sha256=None, outputs=[{"name": "y", "layout": "heatmaps"}])
    card["input"].update(name="x", size=[6, 8])
    card["pose"] = {"heatmap_size": [6, 8], "keypoint_names": ["a", "b", "c", "d"]}
    card["pose"]["flip_pairs"] = [[0, 1]]
    onnx.helper.set_model_props(model, {CARD_METADATA_KEY: json.dumps(card)})
    path = tmp_path / "tiny.onnx"
    path.write_bytes(model.SerializeToString())
    # a (wrong) card beside the file loses against the metadata
    (tmp_path / "tiny.card.json").write_text(json.dumps(_shipped("yolox_nano_416.onnx")))
    pose = OnnxPoseModel(path, providers="cpu")
    assert pose.card_source == "metadata" and pose.spec.name == "tiny"
    assert pose.spec.flip_pairs == ((0, 1),) and pose.spec.num_keypoints == 4
    out = pose.infer(np.zeros((2, 3, 8, 6), np.float32))
    assert out.shape == (2, 4, 8, 6)


def test_card_of_the_wrong_kind_or_size_is_refused(tmp_path: Path) -> None:
    path = _link(tmp_path, "pose.onnx", MODELS / "pp_tinypose_256x192.onnx")
    card_beside(path).write_text(json.dumps(_shipped("picodet_s_416_pedestrian.onnx")))
    with pytest.raises(ModelError, match="expected a pose card, got a detector card"):
        OnnxPoseModel(path, providers="cpu")
    card = _shipped("pp_tinypose_256x192.onnx")
    card["input"]["size"] = [288, 384]
    card_beside(path).write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"input_size: expected the graph's \(192, 256\)"):
        OnnxPoseModel(path, providers="cpu")


def test_card_json_schema_is_available() -> None:
    schema = ModelCard.model_json_schema(by_alias=True)
    assert {"kind", "input", "outputs"} <= set(schema["required"])
    assert "codec" in schema["properties"] and "precision" in schema["properties"]


def test_card_command_prints_the_resolved_card(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from darkpose.service.cli import main

    assert main(["card", str(MODELS / "picodet_s_416_pedestrian.onnx")]) == 0
    out = capsys.readouterr()
    card = parse_card(out.out, "stdout")
    assert card.name == "picodet_s_416_pedestrian" and "card from shipped" in out.err
    assert main(["card", "--schema"]) == 0
    assert "ModelCard" in json.loads(capsys.readouterr().out)["title"]
    path = _link(tmp_path, "anon.onnx", MODELS / "picodet_s_416_pedestrian.onnx")
    assert main(["card", str(path)]) == 2
    assert "expected a model card" in caplog.text
    assert main(["card", str(MODELS / "yolox_nano_416.onnx"), "--kind", "pose"]) == 2
    assert "expected a pose card, got a detector card" in caplog.text
