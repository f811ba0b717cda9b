"""``darkpose infer`` / ``darkpose eval`` through the real CLI dispatcher."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from darkpose.service.cli import main
from tests.api.conftest import free_port
from tests.conftest import IMAGES, KPT_ANN, MODELS, REPO, match_persons, upright_and_sideways_jpeg


@pytest.fixture()
def image_dir(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    shutil.copy(IMAGES / "000000370162.jpg", d)
    # a 16-bit grayscale PNG: converted, not a crash
    img = cv2.imread(str(IMAGES / "000000433998.jpg"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(d / "000000433998.png"), img.astype("uint16") * 257)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return d


def test_infer_directory_writes_results_and_overlays(
    image_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out, vis = tmp_path / "res.json", tmp_path / "vis"
    rc = main(["infer", str(image_dir), "--out", str(out), "--vis", str(vis), "--no-progress"])
    assert rc == 1  # the broken file is reported, the others are processed
    assert "broken.jpg" in caplog.text
    results = json.loads(out.read_text())
    assert {r["image_id"] for r in results} == {370162, 433998}
    assert sum(r["image_id"] == 370162 for r in results) >= 6
    loaded = COCO(str(KPT_ANN)).loadRes(results)
    assert len(loaded.getAnnIds()) == len(results)
    pngs = sorted(p.name for p in vis.iterdir())
    assert pngs == ["000000370162.png", "000000433998.png"]
    overlay = cv2.imread(str(vis / "000000370162.png"))
    original = cv2.imread(str(image_dir / "000000370162.jpg"))
    assert overlay.shape == original.shape
    assert (abs(overlay.astype(int) - original.astype(int)).sum(axis=2) > 60).mean() > 0.01


def test_infer_single_image_options(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    argv = ["infer", str(IMAGES / "000000370162.jpg"), "--out", str(out), "--no-progress"]
    assert main([*argv, "--max-persons", "2", "--decode", "argmax", "--flip", "on"]) == 0
    assert 1 <= len(json.loads(out.read_text())) <= 2


@pytest.mark.parametrize(
    "argv_tail",
    [["/nonexistent/dir"], []],
)
def test_infer_missing_input(
    tmp_path: Path, argv_tail: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    target = argv_tail or [str(empty)]
    assert main(["infer", *target, "--out", str(tmp_path / "r.json")]) == 2
    assert "('" not in caplog.text  # suffixes listed as words, not a Python tuple


def test_eval_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["eval", "--images", str(IMAGES), "--ann", str(KPT_ANN), "--limit", "12"]
    rc = main([*argv, "--decode", "argmax,dark", "--flip", "off,on", "--json", "--no-progress"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["decode"], r["flip"]) for r in rows] == [
        ("argmax", False),
        ("dark", False),
        ("argmax", True),
        ("dark", True),
    ]
    assert all(0.0 <= r["AP"] <= 1.0 and r["boxes"] == "gt" for r in rows)


def test_eval_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["eval", "--images", str(IMAGES), "--ann", str(KPT_ANN), "--limit", "5"]
    assert main([*argv, "--decode", "dark", "--results-dir", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == [
        "boxes",
        "decode",
        "flip",
        *["AP", "AP50", "AP75", "APM", "APL", "AR"],
    ]
    assert (tmp_path / "gt_dark_flip-off.json").is_file()


@pytest.mark.parametrize(
    "bad",
    [["--decode", "soft"], ["--flip", "maybe"], ["--boxes", "yolo"]],
)
def test_eval_bad_arguments(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--images", str(IMAGES), "--ann", str(KPT_ANN), *bad])
    assert exc.value.code == 2


def test_eval_missing_annotations(tmp_path: Path) -> None:
    rc = main(["eval", "--images", str(IMAGES), "--ann", str(tmp_path / "none.json")])
    assert rc == 2


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        # a detection file (no keypoints): an all-zero table would mean nothing
        (lambda d: (IMAGES, KPT_ANN.parent / "instances_train2017.json"), "expected COCO keypoint"),
        # the right annotations, but none of their images in --images
        (lambda d: (d, KPT_ANN), "expected the annotated images"),
    ],
)
def test_eval_refuses_to_score_nothing(
    make: Any, needle: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images, ann = make(tmp_path)
    rc = main(["eval", "--images", str(images), "--ann", str(ann), "--no-progress"])
    assert rc == 2
    assert needle in caplog.text


def test_eval_keeps_low_scoring_detector_boxes_by_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """COCO protocol: the evaluation threshold (eval_det_score_threshold) is not the serving one;
    a low one keeps more boxes (results) than the serving threshold does."""
    argv = ["eval", "--images", str(IMAGES), "--ann", str(KPT_ANN), "--limit", "6"]
    argv += ["--boxes", "detector", "--decode", "dark", "--json", "--no-progress"]
    monkeypatch.setenv("DARKPOSE_DETECTOR", "yolox")
    monkeypatch.setenv("DARKPOSE_POSE_MODELS", '["pose_simplepose_256x192.onnx"]')
    monkeypatch.setenv("DARKPOSE_MODEL_DIR", str(MODELS))
    assert main(argv) == 0
    default = json.loads(capsys.readouterr().out)[0]["num_results"]
    assert main([*argv, "--det-threshold", "0.3"]) == 0
    serving = json.loads(capsys.readouterr().out)[0]["num_results"]
    assert default > serving > 0


@pytest.mark.parametrize("command", ["infer", "eval"])
def test_bad_environment_setting_is_exit_2(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An invalid DARKPOSE_* value ends any command with one logged line and status 2."""
    monkeypatch.setenv("DARKPOSE_DET_SCORE_THRESHOLD", "2")
    argv = {
        "infer": ["infer", str(IMAGES), "--out", str(tmp_path / "r.json")],
        "eval": ["eval", "--images", str(IMAGES), "--ann", str(KPT_ANN)],
    }[command]
    assert main([*argv, "--no-progress"]) == 2
    assert "det_score_threshold" in caplog.text


def test_infer_applies_exif_orientation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real JPEG stored sideways with EXIF Orientation=6 gives the upright photo's persons
    (same count, keypoints within a few px, in the upright frame); ``--exif-orientation off``
    runs on the stored (sideways) pixels, where the detector misses most of them."""
    # what a detector finds on the sideways pixels depends on the detector: this test was
    # written for YOLOX, so it pins it (the default profile's detector is PicoDet)
    monkeypatch.setenv("DARKPOSE_DETECTOR", "yolox")
    upright, sideways = upright_and_sideways_jpeg(IMAGES / "000000211325.jpg")
    d = tmp_path / "photos"
    d.mkdir()
    (d / "upright.jpg").write_bytes(upright)
    (d / "sideways.jpg").write_bytes(sideways)
    out = tmp_path / "r.json"
    assert main(["infer", str(d), "--out", str(out), "--no-progress"]) == 0
    results = json.loads(out.read_text())
    by_file: dict[str, list[dict[str, object]]] = {"upright.jpg": [], "sideways.jpg": []}
    for r in results:
        by_file[r["file_name"]].append(r)
    assert len(by_file["upright.jpg"]) >= 6
    assert len(by_file["sideways.jpg"]) == len(by_file["upright.jpg"])
    errors = match_persons(by_file["upright.jpg"], by_file["sideways.jpg"])
    assert max(errors) < 3.0, errors

    off = tmp_path / "off.json"
    argv = ["infer", str(d / "sideways.jpg"), "--out", str(off), "--no-progress"]
    assert main([*argv, "--exif-orientation", "off"]) == 0
    assert len(json.loads(off.read_text())) < len(by_file["upright.jpg"])


def test_infer_without_out_prints_json_with_file_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["infer", str(IMAGES / "000000370162.jpg"), "--no-progress"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results and {r["file_name"] for r in results} == {"000000370162.jpg"}
    assert {r["image_id"] for r in results} == {370162}


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert re.fullmatch(r"darkpose \d+\.\d+\S*\n", capsys.readouterr().out)


@pytest.fixture()
def root_level() -> Iterator[None]:
    root = logging.getLogger()
    before = root.level
    yield
    root.setLevel(before)


@pytest.mark.usefixtures("root_level")
@pytest.mark.parametrize(
    ("argv", "env", "level"),
    [
        (["--log-level", "ERROR", "infer"], None, logging.ERROR),
        (["infer", "--log-level", "warning"], None, logging.WARNING),
        (["infer"], "WARNING", logging.WARNING),
        (["--log-level", "DEBUG", "infer"], "ERROR", logging.DEBUG),
    ],
)
def test_log_level_before_or_after_the_command_and_from_the_environment(
    argv: list[str], env: str | None, level: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The level applies to the service's own loggers (the root logger they propagate to)."""
    if env is not None:
        monkeypatch.setenv("DARKPOSE_LOG_LEVEL", env)
    assert main([*argv, "/nonexistent/dir"]) == 2  # a fast command: missing input
    assert logging.getLogger("darkpose.service.commands.infer").getEffectiveLevel() == level


def test_unknown_log_level_is_exit_2(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DARKPOSE_LOG_LEVEL", "loud")
    assert main(["infer", "/nonexistent/dir"]) == 2
    assert "DARKPOSE_LOG_LEVEL: expected one of" in caplog.text


def test_serve_help_shows_real_defaults_and_model_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "default: settings." not in out  # no "default: settings.host" placeholders
    for needle in (
        "127.0.0.1",
        "8000",
        "DARKPOSE_MODEL_DIR",
        "DARKPOSE_POSE_MODELS",
        "pp_tinypose_256x192.onnx",  # the default pose model
        "DARKPOSE_DETECTOR_MODEL",
    ):
        assert needle in out, needle
    # a None that means "the model card's" is said so, not shown as None
    assert re.search(r"DARKPOSE_DECODE +default from the model card", out)
    assert "default None" not in out
    from darkpose.service.commands.serve import FROM_CARD
    from darkpose.service.settings import setting_fields

    assert {n for n in FROM_CARD if setting_fields()[n].default is None} == FROM_CARD


@pytest.mark.parametrize(
    "pose_models",
    [
        str(MODELS / "pose_simplepose_256x192.onnx"),
        "pose_simplepose_256x192.onnx," + str(MODELS / "pose_simplepose_256x192.onnx"),
    ],
    ids=["absolute path", "comma list"],
)
def test_plain_path_settings(
    pose_models: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DARKPOSE_POSE_MODELS", pose_models)
    monkeypatch.setenv("DARKPOSE_MODEL_DIR", str(MODELS))
    out = tmp_path / "r.json"
    argv = ["infer", str(IMAGES / "000000211325.jpg"), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert len(json.loads(out.read_text())) >= 1


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"DARKPOSE_POSE_MODELS": "[broken"}, "DARKPOSE_POSE_MODELS"),
        ({"DARKPOSE_PORT": "abc"}, "DARKPOSE_PORT"),
        ({"DARKPOSE_DET_SCORE_THRESHOLD": "2"}, "DARKPOSE_DET_SCORE_THRESHOLD"),
    ],
)
def test_serve_settings_errors_are_one_line_and_exit_2(env: dict[str, str], needle: str) -> None:
    """A real ``darkpose serve`` process: a bad setting ends it with one line, status 2."""
    port = {} if "DARKPOSE_PORT" in env else {"DARKPOSE_PORT": str(free_port())}
    proc = subprocess.run(
        [sys.executable, "-m", "darkpose.service.cli", "serve"],
        cwd=REPO,
        env={**os.environ, **port, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr
    assert len([ln for ln in lines if " ERROR " in ln]) == 1, proc.stderr
    assert needle in proc.stderr


def test_missing_model_dir_says_how_to_set_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DARKPOSE_MODEL_DIR", "/nonexistent-models")
    assert main(["infer", str(IMAGES / "000000211325.jpg"), "--no-progress"]) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "set DARKPOSE_MODEL_DIR=" in errors[0].getMessage()


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [("empty.jpg", b"", "empty file"), ("notes.png", b"plain text\n" * 10, "not a recognised")],
)
def test_cli_messages_say_file_not_body(
    name: str, content: bytes, needle: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / name).write_bytes(content)
    assert main(["infer", str(tmp_path / name), "--no-progress", "--out", str(tmp_path / "r")]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and needle in errors[0] and name in errors[0]
    assert "body" not in errors[0]
    assert not re.search(r"\('\.|\(\d+, \d+", errors[0])  # no Python tuples


def test_infer_tiny_valid_image_is_no_persons_not_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cv2.imwrite(str(tmp_path / "dot.png"), np.zeros((1, 1, 3), np.uint8))
    assert main(["infer", str(tmp_path / "dot.png"), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_top_level_help_is_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    """``darkpose --help`` says what the tool does and how to start, not the module layout."""
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for layout_word in ("service/", "commands/", "dispatches", ".py", "module"):
        assert layout_word not in text, layout_word
    assert "pose estimation" in text.lower() and "DARKPOSE_" in text
    assert "darkpose serve" in text and "darkpose infer" in text  # examples
    for name in ("serve", "infer", "eval", "eval-det", "quantize", "card"):
        assert re.search(rf"^\s+{name}\s+\S", text, re.M), name  # each command has a line
