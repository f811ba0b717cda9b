"""Profiles (DARKPOSE_PROFILE): a table of named setting bundles; explicit settings win."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import ValidationError

from darkpose.service.core.cards import ZOO_DIR
from darkpose.service.core.profiles import (
    PROFILES_FILE,
    profile_governed,
    profile_names,
    profile_settings,
    profiles_table,
)
from darkpose.service.settings import Settings, default_of, setting_fields, settings_error_line


@pytest.fixture(autouse=True)
def _no_darkpose_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("DARKPOSE_"):
            monkeypatch.delenv(key)


def as_json(value: Any) -> Any:
    """``value`` as the JSON table writes it (a tuple setting as a list)."""
    return json.loads(json.dumps(value))


def test_table_is_the_one_source() -> None:
    table = json.loads(PROFILES_FILE.read_text())
    assert set(table["profiles"]) == {"fast", "balanced", "accurate"}
    assert table["default"] == "balanced"
    # every profile value names a real setting; the built-in default of a governed setting
    # is the default profile's value (no second copy in the settings)
    default = profile_settings(table["default"])
    for name in profile_governed():
        assert name in setting_fields(), name
        assert as_json(default_of(name)) == default[name], name
    assert Settings().profile == "balanced"


@pytest.mark.parametrize("name", profile_names())
def test_each_profile_fills_its_settings(name: str) -> None:
    s = Settings(profile=name)
    for key, value in profile_settings(name).items():
        assert as_json(s.value(key)) == value
        assert s.setting_source(key) == f"from profile {name}"
    # its model files are packaged
    for f in s.pose_model_files:
        assert (ZOO_DIR / f).is_file(), f
    report = s.profile_report()
    assert report["name"] == name
    assert set(report["settings"]) == set(profile_governed())


def test_fast_is_the_small_model_and_accurate_flips() -> None:
    assert Settings(profile="fast").pose_models == ["pp_tinypose_128x96.onnx"]
    assert Settings(profile="accurate").pipeline.flip is True


def test_explicit_keyword_and_environment_override(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(profile="accurate", flip=False)
    assert s.pipeline.flip is False
    assert s.setting_source("flip") == "set explicitly"
    assert s.setting_source("detector") == "from profile accurate"
    monkeypatch.setenv("DARKPOSE_PROFILE", "fast")
    monkeypatch.setenv("DARKPOSE_DETECTOR", "fused(picodet,yolox)")
    monkeypatch.setenv("DARKPOSE_POSE_MODELS", "pp_tinypose_256x192.onnx")
    s = Settings()
    assert s.profile == "fast"
    assert s.detector == "fused(picodet,yolox)"
    assert s.pose_models == ["pp_tinypose_256x192.onnx"]
    assert s.setting_source("detector") == "from DARKPOSE_DETECTOR"
    assert s.setting_source("flip") == "from profile fast"
    assert s.setting_source("max_batch") == "default"
    line = s.profile_line()
    assert line.startswith("profile fast: ")
    assert "detector=fused(picodet,yolox) (from DARKPOSE_DETECTOR)" in line
    # a keyword beats the environment's profile too
    assert Settings(profile="balanced").detector == "fused(picodet,yolox)"


@pytest.mark.parametrize("bad", ["turbo", "", "Balanced"])
def test_unknown_profile_is_one_clear_line(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKPOSE_PROFILE", bad)
    with pytest.raises(ValidationError) as info:
        Settings()
    line = settings_error_line(info.value)
    assert "DARKPOSE_PROFILE" in line
    assert "expected one of fast, balanced, accurate" in line
    assert repr(bad) in line


def test_serve_help_shows_profile_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from darkpose.service.commands.serve import epilog

    monkeypatch.setenv("DARKPOSE_PROFILE", "fast")
    monkeypatch.setenv("DARKPOSE_FLIP", "true")
    text = epilog()
    assert "DARKPOSE_PROFILE" in text
    assert "DARKPOSE_POSE_MODELS               pp_tinypose_128x96.onnx from profile fast" in text
    assert "from profile fast  (set here: true)" in text


def test_models_endpoint_and_startup_log_show_the_profile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The real app on the packaged models (fast profile: the cheapest to load)."""
    from fastapi.testclient import TestClient

    from darkpose.service.api import create_app
    from tests.api.conftest import wait_ready

    settings = Settings(
        profile="fast", flip=True, providers="cpu", intra_op_threads=1, inter_op_threads=1
    )
    with (
        caplog.at_level(logging.INFO, logger="darkpose.service.api.state"),
        TestClient(create_app(settings), raise_server_exceptions=False) as client,
    ):
        wait_ready(client)
        m = client.get("/v1/models").json()
    assert m["profile"]["name"] == "fast"
    got = m["profile"]["settings"]
    assert got["flip"] == {"value": True, "source": "set explicitly"}
    assert got["pose_models"] == {
        "value": ["pp_tinypose_128x96.onnx"],
        "source": "from profile fast",
    }
    assert m["pose_models"][0]["name"] == "pp_tinypose_128x96"
    assert m["detector"] == profiles_table()["profiles"]["fast"]["settings"]["detector"]
    assert "profile fast: " in caplog.text
    assert "pose_models=pp_tinypose_128x96.onnx (from profile fast)" in caplog.text


def _bench_profiles() -> ModuleType:
    """bench/profiles.py as a module (bench/ is scripts, not a package)."""
    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("bench_profiles", REPO / "bench" / "profiles.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("expected bench/profiles.py to load, got no module spec")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def val_dev_slice() -> tuple[Any, list[int]]:
    from darkpose.service.evaluation import load_coco
    from tests.conftest import SHARED

    coco = load_coco(SHARED / "data" / "coco-val-dev" / "annotations" / "person_keypoints.json")
    return coco, sorted(coco.getImgIds())[:40]


@hypothesis_settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), jitter=st.floats(0.0, 30.0), drop=st.floats(0.0, 0.5))
def test_bootstrap_identity_sample_is_cocoeval_ap(
    val_dev_slice: tuple[Any, list[int]], seed: int, jitter: float, drop: float
) -> None:
    """The bench's bootstrap recomputes AP from per-image matches; on the identity sample it
    must be COCOeval's own AP (real pycocotools), whatever the detections look like."""
    bench = _bench_profiles()
    coco, ids = val_dev_slice
    rng = np.random.default_rng(seed)
    results = []
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=ids, iscrowd=False)):
        if ann["num_keypoints"] == 0 or rng.random() < drop:
            continue
        kp = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
        kp[:, :2] += rng.normal(0.0, jitter, (len(kp), 2))
        kp[:, 2] = 1.0
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": 1,
                "keypoints": kp.ravel().tolist(),
                "score": float(rng.random()),
            }  # fmt: skip
        )
    m = bench.Matches(coco, results, ids)
    assert m.ap_of(np.arange(len(ids))) == pytest.approx(m.ap, abs=1e-9)
    if results:
        assert 0.0 < m.ap <= 1.0


def test_bench_rejects_an_unknown_profile() -> None:
    from tests.conftest import REPO

    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "profiles.py"), "--profiles", "today,turbo"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "--profiles: expected today or one of" in out.stderr
    assert "got 'turbo'" in out.stderr


@pytest.mark.parametrize("name", profile_names())
def test_each_profile_detector_builds_and_finds_persons(name: str) -> None:
    """The profile's detector config (e.g. accurate's weighted fusion) builds from the packaged
    models and finds the persons of a real coco-mini photo; its box padding reaches the pipeline
    options."""
    import cv2

    from darkpose.service.evaluation import gt_boxes, load_coco
    from darkpose.service.runtime.factory import build_detector
    from tests.conftest import IMAGES, KPT_ANN

    s = Settings(profile=name, providers="cpu")
    assert s.pipeline.box_padding == profile_settings(name)["box_padding"]
    coco = load_coco(KPT_ANN)
    image_id = max(coco.getImgIds(), key=lambda i: len(gt_boxes(coco, i)[0]))
    image = cv2.imread(str(IMAGES / coco.imgs[image_id]["file_name"]), cv2.IMREAD_COLOR)
    det = build_detector(s).detect(image, score_threshold=s.pipeline.det_score_threshold)
    gt = gt_boxes(coco, image_id)[0]
    assert len(det) >= 1
    # every returned box lies in the image and the best one overlaps an annotated person
    h, w = image.shape[:2]
    assert (det.boxes[:, [0, 2]] >= 0).all() and (det.boxes[:, [0, 2]] <= w).all()
    assert (det.boxes[:, [1, 3]] >= 0).all() and (det.boxes[:, [1, 3]] <= h).all()
    best = det.boxes[int(np.argmax(det.scores))]
    ix = np.clip(np.minimum(best[2], gt[:, 2]) - np.maximum(best[0], gt[:, 0]), 0, None)
    iy = np.clip(np.minimum(best[3], gt[:, 3]) - np.maximum(best[1], gt[:, 1]), 0, None)
    union = (
        (best[2] - best[0]) * (best[3] - best[1])
        + (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
        - ix * iy
    )
    assert float((ix * iy / union).max()) >= 0.5


def test_accurate_search_fuses_cached_boxes_as_the_fused_detector(tmp_path: Any) -> None:
    """bench/accurate_search.py fuses cached member boxes offline (``wbf:``); on real images it
    must give the boxes of the real FusedDetector config, and a run from the cache the same."""
    from tests.conftest import REPO

    def recall(*detectors: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, str(REPO / "bench" / "accurate_search.py"), "--cache",
             str(tmp_path), "--limit", "4", "--recall", ";".join(detectors)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return [line for line in out.stdout.splitlines() if line.startswith("| ")][1:]

    fused, offline = recall(
        "fused(picodet,yolox,weights=2/1,iou=0.65)", "wbf:picodet+yolox:iou=0.65:w=2/1"
    )
    assert fused.split("|")[2:] == offline.split("|")[2:]
    assert float(fused.split("|")[4]) > 0  # boxes per image
    assert len(list(tmp_path.glob("det-*.pkl"))) == 3  # the fused config and its two members
    (again,) = recall("wbf:picodet+yolox:iou=0.65:w=2/1")
    assert again == offline


def test_accurate_search_post_processing_row_options(tmp_path: Any) -> None:
    """``|oks=T|kpt=T`` rows of bench/accurate_search.py re-run the pipeline's rescoring and
    OKS-NMS on the cached keypoints: the option defaults give the default row exactly, OKS-NMS
    off returns every box sent, and another keypoint threshold changes the scores."""
    from darkpose.service.core.options import PipelineOptions
    from darkpose.service.evaluation import load_coco
    from tests.conftest import REPO, SHARED

    spec = importlib.util.spec_from_file_location(
        "bench_accurate_search", REPO / "bench" / "accurate_search.py"
    )
    if spec is None or spec.loader is None:
        raise RuntimeError("expected bench/accurate_search.py to load, got no module spec")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    row = bench.parse_row("picodet|flip=0|oks=1|kpt=0.5")
    assert (row["oks"], row["kpt"], row["flip"]) == (1.0, 0.5, False)
    defaults = bench.parse_row("picodet")
    fields = PipelineOptions.model_fields
    assert defaults["oks"] == fields["oks_nms_threshold"].default
    assert defaults["kpt"] == fields["keypoint_score_threshold"].default

    data = SHARED / "data" / "coco-val-dev"
    coco = load_coco(data / "annotations" / "person_keypoints.json")
    img_ids = sorted(coco.getImgIds())[:3]
    search = bench.Search(tmp_path, coco, data / "images", img_ids)

    def results(text: str) -> list[dict[str, Any]]:
        return list(search.results(bench.parse_row(text)))

    base = results("picodet|flip=0")
    assert base, "expected persons on the first val-dev images, got none"
    assert results("picodet|flip=0|oks=0.9|kpt=0.2") == base
    sent = sum(
        min(int((s >= defaults["thr"]).sum()), defaults["cap"]) for _, s in search.boxes("picodet")
    )
    no_nms = results("picodet|flip=0|oks=1")
    assert len(no_nms) == sent >= len(base)
    stricter = results("picodet|flip=0|kpt=0.5")
    assert sorted(r["score"] for r in stricter) != sorted(r["score"] for r in base)
