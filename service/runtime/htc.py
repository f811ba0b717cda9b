"""Hybrid Task Cascade (HTC) person detector through mmdet 3.x (optional extra ``mmdet``).

The DARK report detects persons with HTC from mmdetection.  :class:`HtcDetector` builds the model
from an mmdet config (a path, or the name of a config shipped inside the mmdet package under
``.mim/configs``, e.g. ``htc_r50_fpn_1x_coco``) and an optional checkpoint, runs the config's test
pipeline (resize to the test scale, normalise, pad) on CPU or CUDA and returns the person boxes
(label 0 of COCO-class models) through the :class:`~darkpose.service.core.types.Detector` protocol.

torch / mmengine / mmcv / mmdet are imported lazily in the constructor: the serving install
stays free of torch unless an HTC detector is configured.  mmcv must be built with its C++ ops
(``MMCV_WITH_OPS=1``): HTC's RoI heads use ``mmcv.ops.RoIAlign`` and ``nms``; see
``.ci/install_mmdet.sh``.  torchvision is not needed on the inference path.

By default the mask branch is dropped from the config (``boxes_only=True``): HTC's boxes do not
depend on it at test time (mask information flows only into later *mask* heads), it only costs
time.  Checkpoint keys of the dropped heads are ignored.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from darkpose.service.core.choices import PersonCount, Probability, check
from darkpose.service.core.errors import InvalidParameter, ModelError
from darkpose.service.core.types import F32, Detections
from darkpose.service.runtime.detectors import check_image, clip_boxes, non_empty

logger = logging.getLogger(__name__)

#: The default config: HTC R-50-FPN 1x (with the semantic branch), shipped with mmdet.
DEFAULT_HTC_CONFIG = "htc_r50_fpn_1x_coco"


def mmdet_available() -> bool:
    """True when torch, mmengine, mmcv (with ops) and mmdet can be imported."""
    for mod in ("torch", "mmengine", "mmcv", "mmdet"):
        if importlib.util.find_spec(mod) is None:
            return False
    return importlib.util.find_spec("mmcv._ext") is not None


def mmdet_config_dir() -> Path:
    """``<site-packages>/mmdet/.mim/configs`` (the configs shipped with the mmdet wheel)."""
    spec = importlib.util.find_spec("mmdet")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "HTC: expected the optional 'mmdet' extra (see .ci/install_mmdet.sh), "
            "got no importable mmdet"
        )
    return Path(next(iter(spec.submodule_search_locations))) / ".mim" / "configs"


def resolve_config(config: str | Path) -> Path:
    """A config path as given when it exists, else a config shipped with mmdet, looked up by
    file name with or without ``.py`` and with or without its folder (``htc/...``)."""
    p = Path(config)
    if p.is_file():
        return p
    root = mmdet_config_dir()
    name = p.name if p.suffix == ".py" else p.name + ".py"
    candidates = [root / p.parent / name] if str(p.parent) not in ("", ".") else []
    candidates += sorted(root.glob(f"*/{name}"))
    for c in candidates:
        if c.is_file():
            return c
    raise ModelError(
        f"HTC config: expected an existing file or a config name shipped with mmdet "
        f"(e.g. {DEFAULT_HTC_CONFIG}, see {root / 'htc'}), got {str(config)!r}"
    )


def _test_pipeline(cfg: Any, test_scale: tuple[int, int] | None) -> list[dict[str, Any]]:
    """The config's test pipeline for in-memory BGR arrays: loading from an ndarray, no
    annotation loading, the resize scale optionally replaced."""
    pipeline = cfg.get("test_pipeline") or cfg.test_dataloader.dataset.pipeline
    steps: list[dict[str, Any]] = []
    for step in pipeline:
        step = dict(step)
        kind = str(step.get("type", "")).split(".")[-1]
        if kind == "LoadImageFromFile":
            steps.append({"type": "mmdet.LoadImageFromNDArray"})
            continue
        if kind == "LoadAnnotations":
            continue
        if kind == "Resize" and test_scale is not None:
            step["scale"] = tuple(test_scale)
            step.pop("scale_factor", None)
        if kind == "PackDetInputs":
            step["meta_keys"] = ("img_id", "ori_shape", "img_shape", "scale_factor")
        steps.append(step)
    return steps


class HtcDetector:
    """HTC (mmdet 3.x) person detector (implements :class:`darkpose.service.core.types.Detector`).

    Args:
        config: mmdet config file or shipped config name (default ``htc_r50_fpn_1x_coco``).
        checkpoint: ``.pth`` file (an mmdet checkpoint with ``state_dict`` or a bare state
            dict); ``None`` only together with ``random_weights=True``.
        random_weights: build with mmdet's random initialisation (tests, latency benchmarks:
            boxes are meaningless).
        score_threshold: minimum person score kept.
        max_detections: cap of returned boxes.
        device: ``"cpu"`` or ``"cuda"`` / ``"cuda:N"``.
        test_scale: (long, short) resize scale of the test pipeline; default the config's
            (1333, 800).
        boxes_only: drop the mask branch (faster, identical boxes).
        person_label: the person class index of the model (0 for COCO).
        trusted_checkpoint: load pickled non-tensor content of the checkpoint
            (``torch.load(weights_only=False)``, which can execute code: only for files you trust).
            Without it, checkpoints whose metadata is not plain tensors/containers are refused.
        seed: torch seed of the random initialisation.
        num_threads: torch intra-op threads (0 = torch default).

    ``detect(image)``: BGR uint8 (H, W, 3) → :class:`Detections` (boxes (M, 4) xyxy float32 image
    px clipped to ``[0, W] x [0, H]``, scores (M,) float32 in [0, 1] sorted descending).
    """

    def __init__(
        self,
        config: str | Path = DEFAULT_HTC_CONFIG,
        checkpoint: str | Path | None = None,
        *,
        random_weights: bool = False,
        score_threshold: float = 0.3,
        max_detections: int = 100,
        device: str = "cpu",
        test_scale: tuple[int, int] | None = None,
        boxes_only: bool = True,
        person_label: int = 0,
        trusted_checkpoint: bool = False,
        seed: int = 0,
        num_threads: int = 0,
    ) -> None:
        check(Probability, score_threshold, "score_threshold")
        check(PersonCount, max_detections, "max_detections")
        if test_scale is not None and (
            len(test_scale) != 2 or min(test_scale) < 32 or max(test_scale) > 4096
        ):
            raise InvalidParameter(
                f"test_scale: expected (long, short) in [32, 4096], got {test_scale}"
            )
        if device != "cpu" and not device.startswith("cuda"):
            raise InvalidParameter(f"device: expected 'cpu' or 'cuda[:N]', got {device!r}")
        if checkpoint is None and not random_weights:
            raise ModelError(
                "HTC: expected a checkpoint (DARKPOSE_HTC_CHECKPOINT or htc(checkpoint=...)), "
                "got none; use random_weights=True (htc(random=1)) only for smoke tests"
            )
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise ModelError(f"HTC checkpoint: expected an existing file, got {str(checkpoint)!r}")
        if not mmdet_available():
            raise ModelError(
                "HTC: expected torch, mmengine, mmcv (built with ops) and mmdet "
                "(pip install '.[mmdet]' after .ci/install_mmdet.sh), got them missing"
            )
        self.config_path = resolve_config(config)
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.score_threshold = float(score_threshold)
        self.max_detections = int(max_detections)
        self.device = device
        self.person_label = int(person_label)
        self.name = "htc" if self.checkpoint is not None else "htc(random)"
        self._build(test_scale, boxes_only, trusted_checkpoint, seed, num_threads)

    def __repr__(self) -> str:
        ckpt = self.checkpoint.name if self.checkpoint else "random weights"
        return f"HtcDetector({self.config_path.name!r}, {ckpt}, device={self.device!r})"

    def _build(
        self,
        test_scale: tuple[int, int] | None,
        boxes_only: bool,
        trusted: bool,
        seed: int,
        num_threads: int,
    ) -> None:
        import mmdet  # noqa: F401  (version check; registers the modules)
        import torch
        from mmcv.transforms import Compose
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        from mmengine.runner.checkpoint import _load_checkpoint_to_model

        if num_threads > 0:
            torch.set_num_threads(num_threads)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(f"HTC device: expected an available CUDA device, got {self.device}")
        try:
            cfg = Config.fromfile(str(self.config_path))
        except Exception as exc:
            raise ModelError(f"HTC config {self.config_path}: expected a valid mmdet config, "
                             f"got {type(exc).__name__}: {exc}") from exc  # fmt: skip
        if "model" not in cfg or "roi_head" not in cfg.model:
            raise ModelError(
                f"HTC config {self.config_path.name}: expected a two-stage model with roi_head, "
                f"got {cfg.get('model', {}).get('type')!r}"
            )
        register_all_modules(init_default_scope=False)
        init_default_scope(cfg.get("default_scope", "mmdet"))
        if "init_cfg" in cfg.model.backbone:
            cfg.model.backbone.init_cfg = None  # no torchvision:// download
        if boxes_only:
            cfg.model.roi_head.mask_head = None
            cfg.model.roi_head.mask_roi_extractor = None
        torch.manual_seed(seed)
        model = MODELS.build(cfg.model)
        if self.checkpoint is None:
            from mmengine.logging import MMLogger

            mm_logger = MMLogger.get_current_instance()
            level = mm_logger.level
            mm_logger.setLevel(logging.WARNING)  # init_weights logs every parameter at INFO
            try:
                model.init_weights()
            finally:
                mm_logger.setLevel(level)
            logger.warning("HTC %s: random weights (smoke test / latency only)", cfg.model.type)
        else:
            try:
                ckpt = torch.load(self.checkpoint, map_location="cpu", weights_only=not trusted)
            except Exception as exc:
                raise ModelError(
                    f"HTC checkpoint {self.checkpoint.name}: expected a torch checkpoint "
                    "loadable with weights_only=True (or trusted_checkpoint=True for pickled "
                    f"metadata), got {type(exc).__name__}: {str(exc)[:300]}"
                ) from exc
            state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
            if not isinstance(state, dict):
                raise ModelError(
                    f"HTC checkpoint {self.checkpoint.name}: expected a state dict, "
                    f"got {type(ckpt).__name__}"
                )
            _load_checkpoint_to_model(model, state, strict=False)
        model.to(self.device).eval()
        self.model = model
        self.pipeline = Compose(_test_pipeline(cfg, test_scale))
        self._torch = torch

    def detect(
        self, image: npt.NDArray[np.uint8], score_threshold: float | None = None
    ) -> Detections:
        """Persons in ``image``; ``score_threshold`` overrides the constructor's for this call."""
        check_image(image)
        thr = self.score_threshold if score_threshold is None else float(score_threshold)
        h, w = image.shape[:2]
        data = self.pipeline({"img": np.ascontiguousarray(image), "img_id": 0})
        batch = {"inputs": [data["inputs"]], "data_samples": [data["data_samples"]]}
        with self._torch.no_grad():
            result = self.model.test_step(batch)[0]
        inst = result.pred_instances
        boxes = inst.bboxes.float().cpu().numpy().reshape(-1, 4)
        scores = inst.scores.float().cpu().numpy().reshape(-1)
        labels = inst.labels.cpu().numpy().reshape(-1)
        keep = (labels == self.person_label) & (scores >= thr)
        keep &= np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
        boxes, scores = boxes[keep].astype(np.float64), scores[keep].astype(np.float64)
        boxes = clip_boxes(boxes, (w, h))
        ok = non_empty(boxes)
        boxes, scores = boxes[ok], np.clip(scores[ok], 0.0, 1.0)
        order = np.argsort(-scores, kind="stable")[: self.max_detections]
        out_boxes: F32 = boxes[order].astype(np.float32)
        out_scores: F32 = scores[order].astype(np.float32)
        return Detections(out_boxes, out_scores)


def parse_test_scale(text: str) -> tuple[int, int]:
    """``"1333x800"`` (either order, ``x`` or ``X``) or a short side ``"800"`` (long side
    ``ceil(short * 1333 / 800)``) → (long, short)."""
    lowered = text.lower()
    try:
        if "x" in lowered:
            a, b = (int(v) for v in lowered.split("x", 1))
            return (max(a, b), min(a, b))
        short = int(text)
        return (int(math.ceil(short * 1333 / 800)), short)
    except ValueError as exc:
        raise InvalidParameter(f"HTC scale: expected '1333x800' or '800', got {text!r}") from exc
