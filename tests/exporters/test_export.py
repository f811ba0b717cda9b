"""darkpose-export end to end: random-init checkpoints → ONNX → parity, metadata, serving."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from darkpose.exporters import export_decoder, export_onnx, make_spec
from darkpose.exporters.cli import main
from darkpose.exporters.export import DECODE_TOL_PX, FP16_TOL, FP32_TOL
from darkpose.models import build_model, load_checkpoint
from darkpose.service.core.pipeline import Pipeline
from darkpose.service.core.types import ModelSpec
from darkpose.service.runtime.pose import OnnxPoseModel
from tests.conftest import GOLDEN, IMAGES, KPT_ANN, REPO
from tests.models.layouts import randomise, write_checkpoint

ARCH, SIZE = "hrnet_w8", "128x96"  # narrow HRNet: same graph structure as W32, fast to export


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ckpt")
    return write_checkpoint(randomise(build_model(ARCH), seed=3), d / "w8_mmpose1.pth", "mmpose1")


@pytest.fixture(scope="module")
def torch_model(ckpt: Path) -> torch.nn.Module:
    m = build_model(ARCH)
    load_checkpoint(m, ckpt)
    return m


def _export(ckpt: Path, out: Path, *extra: str) -> Path:
    argv = ["--arch", ARCH, "--checkpoint", str(ckpt), "--input-size", SIZE, "--out", str(out)]
    assert main([*argv, *extra]) == 0
    assert out.is_file()
    return out


def _shallow_hrnet(seed: int) -> torch.nn.Module:
    """HRNet-W8 with 1 module per stage and 1 block per branch: every layer type, small graph."""
    return randomise(build_model(ARCH, num_modules=(1, 1, 1), num_blocks=1), seed=seed)


@pytest.fixture(scope="module")
def decoded_onnx(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CLI on a full-depth HRNet-W8 checkpoint in the mmpose 1.x layout, --with-decode."""
    return _export(ckpt, tmp_path_factory.mktemp("dec") / "w8_dark.onnx", "--with-decode")


@pytest.fixture(scope="module")
def shallow() -> torch.nn.Module:
    return _shallow_hrnet(seed=3)


@pytest.fixture(scope="module")
def shallow_pair(
    shallow: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The same weights exported as heatmaps and with the in-graph decode (API)."""
    d = tmp_path_factory.mktemp("pair")
    heat = export_onnx(shallow, d / "heat.onnx", make_spec(ARCH, (96, 128))).path
    dec = export_onnx(shallow, d / "dec.onnx", make_spec(ARCH, (96, 128), with_decode=True)).path
    return heat, dec


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


def test_heatmap_export_metadata_and_parity(
    shallow_pair: tuple[Path, Path], shallow: torch.nn.Module
) -> None:
    heat_onnx = shallow_pair[0]
    meta = _meta(heat_onnx)
    spec = ModelSpec.from_metadata(meta)
    assert spec.arch == "hrnet_w8" and spec.name == "hrnet_w8_128x96"
    assert spec.input_size == (96, 128) and spec.heatmap_size == (24, 32)
    assert spec.channel_order == "RGB" and spec.mean == (0.485, 0.456, 0.406)
    assert spec.flip_pairs == ModelSpec().flip_pairs and spec.num_keypoints == 17
    assert spec.codec == "dark" and not spec.decoded_output
    model = onnx.load(str(heat_onnx))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = np.random.default_rng(5).normal(size=(3, 3, 128, 96)).astype(np.float32)
    with torch.no_grad():
        ref = shallow(torch.from_numpy(x)).numpy()
    out = _run(heat_onnx, x)
    assert out.shape == (3, 17, 32, 24)
    assert np.abs(out - ref).max() <= FP32_TOL * max(1.0, float(np.abs(ref).max()))


def test_decoded_export_outputs_keypoints(decoded_onnx: Path, torch_model: torch.nn.Module) -> None:
    meta = _meta(decoded_onnx)
    spec = ModelSpec.from_metadata(meta)
    assert spec.decoded_output and spec.blur_kernel == 11
    assert spec.input_size == (96, 128) and spec.heatmap_size == (24, 32)
    assert meta["exporter.checkpoint_layout"] == "mmpose1"
    assert [o.name for o in onnx.load(str(decoded_onnx)).graph.output] == ["keypoints"]
    x = np.random.default_rng(6).normal(size=(2, 3, 128, 96)).astype(np.float32)
    kp = _run(decoded_onnx, x)
    assert kp.shape == (2, 17, 3)
    with torch.no_grad():
        hm = torch_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(kp[..., 2], hm.reshape(2, 17, -1).max(-1), atol=1e-4)
    assert np.all((kp[..., 0] >= -1) & (kp[..., 0] <= 24) & (kp[..., 1] >= -1) & (kp[..., 1] <= 32))


def _gt_boxes(file_name: str) -> np.ndarray:
    ann = json.loads(KPT_ANN.read_text())
    img_id = next(i["id"] for i in ann["images"] if i["file_name"] == file_name)
    xywh = [a["bbox"] for a in ann["annotations"] if a["image_id"] == img_id and not a["iscrowd"]]
    b = np.asarray(xywh, np.float32)
    b[:, 2:] += b[:, :2]
    return b


def test_exported_models_serve_through_the_pipeline(
    shallow_pair: tuple[Path, Path], decoded_onnx: Path
) -> None:
    """Exports drop in by path: the in-graph decode gives what the numpy DARK decode gives on
    the heatmap export (same weights), through the real pipeline on a COCO image."""
    from darkpose.service.core.pipeline import PipelineOptions
    from darkpose.service.runtime.factory import build_pipeline
    from darkpose.service.settings import Settings

    image = cv2.imread(str(IMAGES / "000000129648.jpg"))
    boxes = _gt_boxes("000000129648.jpg")
    scores = np.ones(len(boxes), np.float32)
    heat_onnx, dec_onnx = shallow_pair
    # the CLI export, through the service factory (settings → model path)
    settings = Settings(pose_models=[str(decoded_onnx)], providers="cpu", warmup=False)
    served = build_pipeline(settings)
    assert served.spec.decoded_output and served.spec.input_size == (96, 128)
    res = served(image, boxes=boxes, box_scores=scores)
    assert len(res.persons) == len(boxes)
    assert all(np.isfinite(p.keypoints).all() for p in res.persons)
    # in-graph decode vs the pipeline's numpy decode, same weights (no flip test: with it a
    # decoded-output model averages keypoints, a heatmap model heatmaps)
    plain = PipelineOptions(flip=False)
    decoded_pipe = Pipeline(None, [OnnxPoseModel(dec_onnx, providers="cpu")], plain)
    heat_pipe = Pipeline(None, [OnnxPoseModel(heat_onnx, providers="cpu")], plain)
    a = decoded_pipe(image, boxes=boxes, box_scores=scores)
    b = heat_pipe(image, boxes=boxes, box_scores=scores)
    assert len(a.persons) == len(b.persons) >= 2
    match = {tuple(np.round(p.bbox, 2)): p for p in b.persons}
    for p in a.persons:
        q = match[tuple(np.round(p.bbox, 2))]
        np.testing.assert_allclose(p.keypoints[:, 2], q.keypoints[:, 2], atol=1e-4)
        # random weights give flat heatmaps (ill-conditioned Newton step): ≤ 0.05 heatmap px,
        # i.e. a fraction of an image pixel at these box sizes
        hm_px = (p.bbox[2] - p.bbox[0]) * 1.25 / 24
        assert np.abs(p.keypoints[:, :2] - q.keypoints[:, :2]).max() <= 0.05 * hm_px * 2
        assert np.all(p.keypoints[:, :2] >= -hm_px * 40)  # inside the image region roughly


def test_fp16_export(shallow: torch.nn.Module, tmp_path: Path) -> None:
    report = export_onnx(
        shallow, tmp_path / "fp16.onnx", make_spec(ARCH, (96, 128)), fp16=True, opset=18
    )
    meta = _meta(report.path)
    assert meta["exporter.precision"] == "fp16" and meta["exporter.opset"] == "18"
    x = np.random.default_rng(7).normal(size=(2, 3, 128, 96)).astype(np.float32)
    with torch.no_grad():
        ref = shallow(torch.from_numpy(x)).numpy()
    got = _run(report.path, x)
    assert got.dtype == np.float32  # float32 I/O around an fp16 graph
    err16 = float(np.abs(got - ref).max())
    assert err16 <= FP16_TOL * max(1.0, float(np.abs(ref).max()))
    assert err16 > 1e-5  # really computed in fp16 (the fp32 export is ~1e-7 off)
    n_params = sum(p.numel() for p in shallow.parameters())
    assert report.size_bytes < 2.5 * n_params  # 2 bytes per weight + graph


def test_decoder_graph_matches_mmpose_golden(tmp_path: Path) -> None:
    g = np.load(GOLDEN)
    path = export_decoder(tmp_path / "dark.onnx", 17, (48, 64), blur_kernel=11)
    kp = _run(path, g["heatmaps"])
    assert kp.shape == (32, 17, 3)
    assert np.abs(kp[..., :2] - g["dark_k11"]).max() <= DECODE_TOL_PX
    np.testing.assert_allclose(kp[..., 2], g["scores"], atol=1e-6)
    codec = pytest.importorskip("darkpose.service.core.codec")
    coords, scores = codec.decode_heatmaps(g["heatmaps"], method="dark", blur_kernel=11)
    assert np.abs(kp[..., :2] - coords).max() <= DECODE_TOL_PX


def test_simplebaseline_export_api(tmp_path: Path) -> None:
    net = randomise(build_model("resnet50", base_width=8, deconv_channels=16), seed=4)
    spec = make_spec("resnet50", (64, 64))
    report = export_onnx(net, tmp_path / "r50.onnx", spec, parity_batch=3)
    assert report.heatmap_max_abs_diff <= report.heatmap_tolerance
    assert report.decode_max_px_diff is None
    assert ModelSpec.from_metadata(_meta(report.path)).heatmap_size == (16, 16)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "hrnet_w99x", "--random-init"], "architecture: expected one of"),
        (["--arch", ARCH, "--random-init", "--input-size", "256by192"], "expected HEIGHTxWIDTH"),
        (["--arch", ARCH, "--random-init", "--input-size", "250x192"], "multiples of 32"),
        (["--arch", ARCH, "--random-init", "--blur-kernel", "4"], "positive odd"),
        (["--arch", ARCH, "--random-init", "--opset", "9"], "--opset: expected >= 11"),
        (["--arch", ARCH, "--checkpoint", "/nonexistent.pth"], "expected an existing file"),
        (["--arch", "hrnet_w16", "--checkpoint", "CKPT"], "shape mismatches"),
        (["--arch", "resnet50", "--checkpoint", "CKPT"], "missing keys"),
    ],
    ids=["arch", "size-format", "size-multiple", "blur", "opset", "no-file", "width", "family"],
)
def test_cli_errors_exit_2(
    args: list[str], message: str, ckpt: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "never.onnx"
    argv = [str(ckpt) if a == "CKPT" else a for a in args] + ["--out", str(out)]
    with caplog.at_level(logging.ERROR, logger="darkpose.export"):
        assert main(argv) == 2
    assert message in caplog.text
    assert not out.exists()


def test_console_script_error_has_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "darkpose.exporters.cli",
            "--arch",
            "hrnet_w32",
            "--checkpoint",
            str(bad),
        ]
        + ["--out", str(tmp_path / "x.onnx")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "ERROR" in proc.stderr and "checkpoint" in proc.stderr.splitlines()[-1]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_full_hrnet_w32_export_256x192(tmp_path: Path) -> None:
    """The real W32 configuration at the published input size (random weights)."""
    net = randomise(build_model("hrnet_w32"), seed=8)
    report = export_onnx(net, tmp_path / "w32.onnx", make_spec("hrnet_w32", (192, 256)))
    assert report.heatmap_max_abs_diff <= report.heatmap_tolerance
    model = OnnxPoseModel(report.path, providers="cpu")
    assert model.spec.input_size == (192, 256) and model.spec.heatmap_size == (48, 64)
    out = model.infer(np.zeros((2, 3, 256, 192), np.float32))
    assert out.shape == (2, 17, 64, 48)


def test_in_graph_decode_is_reported_and_other_decodes_refused(decoded_onnx: Path) -> None:
    """An export with the decode in its graph serves with its card from the ONNX metadata; the
    response says which decode ran, and asking for another one is a 422."""
    from fastapi.testclient import TestClient

    from darkpose.service.api import create_app
    from darkpose.service.settings import Settings

    model = OnnxPoseModel(decoded_onnx, providers="cpu")
    assert model.card_source == "metadata" and model.card.codec is not None
    assert model.card.codec.in_graph and model.card.outputs[0].layout == "keypoints"
    settings = Settings(  # type: ignore[call-arg]
        pose_models=[str(decoded_onnx)], providers="cpu", intra_op_threads=1, batching=False
    )
    jpeg = (IMAGES / "000000129648.jpg").read_bytes()
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        ok = client.post("/pose", content=jpeg, headers={"Content-Type": "image/jpeg"})
        assert ok.status_code == 200, ok.text
        info = ok.json()["model"]
        assert (info["decode"], info["blur_kernel"], info["decode_in_graph"]) == ("dark", 11, True)
        bad = client.post(
            "/pose?decode=argmax", content=jpeg, headers={"Content-Type": "image/jpeg"}
        )
        assert bad.status_code == 422
        assert "decodes in its graph" in bad.text and "got 'argmax'" in bad.text
