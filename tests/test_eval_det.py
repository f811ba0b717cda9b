"""``darkpose eval-det``: person-box AP with pycocotools for detector configurations."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from darkpose.service.cli import main
from darkpose.service.commands.eval_det import (
    coco_box_metrics,
    image_ids_with_files,
    keypoint_person_recall,
)
from darkpose.service.evaluation import load_coco
from tests.conftest import COCO_MINI, IMAGES, KPT_ANN

INSTANCES = COCO_MINI / "annotations" / "instances_train2017.json"


@pytest.mark.parametrize("ann", [KPT_ANN, INSTANCES])
def test_gt_boxes_score_ap_one(ann: Path) -> None:
    """The metric itself: GT person boxes submitted as detections give AP 1 (a shifted copy
    does not)."""
    coco = load_coco(ann)
    ids = image_ids_with_files(coco, IMAGES)
    anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=ids, catIds=[1])) if not a["iscrowd"]]
    res = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 1.0}
           for a in anns]  # fmt: skip
    m = coco_box_metrics(coco, res, ids)
    assert m["AP"] == pytest.approx(1.0) and m["AR"] == pytest.approx(1.0)
    shifted = [{**r, "bbox": [r["bbox"][0] + r["bbox"][2] * 0.4, *r["bbox"][1:]]} for r in res]
    assert coco_box_metrics(coco, shifted, ids)["AP"] < 0.5
    assert coco_box_metrics(coco, [], ids)["AP"] == 0.0


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "eval-det", "--images", str(IMAGES), "--ann", str(KPT_ANN),
            "--detectors", "yolox, chips(yolox, scales=fit/2)", "--limit", "6",
            "--json", "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["detector"] for r in rows] == ["yolox", "chips(yolox, scales=fit/2)"]
    for r in rows:
        assert r["num_images"] == 6
        assert 0.0 < r["AP"] <= 1.0 and 0.0 <= r["AP50"] <= 1.0 and r["AP50"] >= r["AP"]
        assert r["ms_per_image"] > 0 and r["num_boxes"] > 0
        assert r["keypoint_AP"] is None


def test_cli_table_with_keypoints(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "eval-det", "--images", str(IMAGES), "--ann", str(KPT_ANN),
            "--detectors", "yolox", "--limit", "3", "--keypoints", "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["detector", "AP"] and out[0].endswith("kpt AP")
    values = out[2].split()
    assert values[0] == "yolox" and 0.0 <= float(values[-1]) <= 1.0


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--detectors", "yolox,retinanet"], "got 'retinanet'"),
        (["--detectors", "chips(yolox"], "expected"),
        (["--limit", "0"], "--limit: expected >= 1"),
        (["--det-threshold", "2"], "det_score_threshold"),
        (["--keypoints", "--ann", str(INSTANCES)], "expected a person_keypoints"),
        (["--images", "/nonexistent"], "--images: expected a directory"),
        (["--ann", "/nonexistent.json"], "--ann: expected"),
    ],
)
def test_cli_errors(extra: list[str], needle: str, caplog: pytest.LogCaptureFixture) -> None:
    args = ["eval-det", "--images", str(IMAGES), "--ann", str(KPT_ANN), "--no-progress"]
    # later duplicates of an option win in argparse
    with caplog.at_level(logging.ERROR):
        rc = main(args + ["--limit", "1"] + extra)
    assert rc == 2
    assert needle in caplog.text


@pytest.mark.parametrize(
    ("shift", "want_05", "want_07"),
    [(0.0, 1.0, 1.0), (0.2, 1.0, 0.0)],  # IoU 1, 0.67
)
def test_keypoint_person_recall(shift: float, want_05: float, want_07: float) -> None:
    """Recall of the persons with keypoints at IoU 0.5 / 0.7: GT boxes shifted sideways by a
    share of their width (IoU (1 - s) / (1 + s))."""
    coco = load_coco(KPT_ANN)
    ids = image_ids_with_files(coco, IMAGES)
    anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=ids)) if a.get("num_keypoints", 0) > 0
            and not a["iscrowd"]]  # fmt: skip
    res = [
        {"image_id": a["image_id"], "category_id": 1, "score": 0.9,
         "bbox": [a["bbox"][0] + a["bbox"][2] * shift, *a["bbox"][1:]]}
        for a in anns
    ]  # fmt: skip
    got = keypoint_person_recall(coco, res, ids)
    assert got == {"R@.5kp": pytest.approx(want_05), "R@.7kp": pytest.approx(want_07)}
    assert keypoint_person_recall(coco, [], ids) == {"R@.5kp": 0.0, "R@.7kp": 0.0}
