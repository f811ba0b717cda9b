"""onnxruntime pose backend: one batched call for all crops of an image.

:class:`OnnxPoseModel` implements :class:`darkpose.service.core.types.PoseModel`.  Its ``card``
(and the
``spec`` derived from it) comes from :func:`darkpose.service.runtime.cards.resolve_card`: the file's
``metadata_props``, a ``<model>.card.json`` beside it, or a card shipped in ``service/cards``.
Without a card the input/heatmap sizes are read from the ONNX input/output shapes and the rest
falls back to the shared SimpleBaseline model's values (logged as a warning).  A fixed batch
dimension is made symbolic in memory (:func:`darkpose.service.runtime.onnx.make_batch_dynamic`) so
crops
run in one call.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from darkpose.service.core.cards import ModelCard
from darkpose.service.core.errors import InvalidParameter, ModelError
from darkpose.service.core.types import F32, ModelSpec
from darkpose.service.runtime.cards import card_beside, resolve_card
from darkpose.service.runtime.onnx import (
    CPU,
    create_session,
    graph_inputs,
    load_model,
    make_batch_dynamic,
    read_model_bytes,
    static_shape,
)
from darkpose.service.runtime.openvino import OPENVINO_CPU

logger = logging.getLogger(__name__)

#: Crops per session run on CPU (``max_batch=None``), per backend.  onnxruntime, measured on
#: the SimpleBaseline model, 2 shared cores, 1 intra-op thread: 9.1 ms/crop for runs of 1-4
#: crops, 11.1 ms/crop for runs of 6-12 (activations of large batches fall out of cache), so
#: its CPU batches are cut into runs of 4.  OpenVINO (bf16 above all) gains per crop up to
#: batch 8 on PP-TinyPose (docs/benchmarks.md, "Reduced precision").
CPU_MAX_BATCH: dict[str, int] = {"onnxruntime": 4, "openvino": 8}


def _shape_defaults(model_bytes: bytes, name: str) -> dict[str, object]:
    """Input/heatmap sizes (W, H) read from the graph's static shapes (where they are fixed)."""
    model = load_model(model_bytes)
    decoded = any(
        p.key == "darkpose.decoded_output" and p.value == "1" for p in model.metadata_props
    )
    defaults: dict[str, object] = {"name": name}
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise ModelError(
            f"pose model {name}: expected exactly 1 graph input, got {[i.name for i in inputs]}"
        )
    in_shape = static_shape(inputs[0])
    if len(in_shape) != 4:
        raise ModelError(f"pose model {name}: expected a (N, 3, H, W) input, got {in_shape}")
    if isinstance(in_shape[2], int) and isinstance(in_shape[3], int):
        defaults["input_size"] = (in_shape[3], in_shape[2])
    if model.graph.output:
        out_shape = static_shape(model.graph.output[0])
        if (
            not decoded
            and len(out_shape) == 4
            and isinstance(out_shape[2], int)
            and isinstance(out_shape[3], int)
        ):
            defaults["heatmap_size"] = (out_shape[3], out_shape[2])
    return defaults


def card_from_model(model_bytes: bytes, path: str | Path) -> tuple[ModelCard, str]:
    """The :class:`ModelCard` of the pose model at ``path`` (bytes already read) and where it
    came from: its card (:func:`darkpose.service.runtime.cards.resolve_card`), else one built from
    the
    graph's shapes and the shared SimpleBaseline model's defaults (``"graph"``, logged)."""
    p = Path(path)
    found = resolve_card(p, model_bytes, kind="pose")
    defaults = _shape_defaults(model_bytes, p.stem)
    if found is None:
        logger.warning(
            "pose model %s: no model card (metadata, %s or a shipped card); using the graph's "
            "shapes and SimpleBaseline defaults",
            p.name,
            card_beside(p).name,
        )
        card = ModelCard.from_spec(
            ModelSpec.from_metadata({}, **defaults),
            provenance={"notes": "no card: graph shapes + defaults"},
        )
        return card, "graph"
    card = found.card
    checks = [("input_size", card.input.size)]
    if (
        card.pose is not None
        and card.pose.heatmap_size is not None
        and not card.to_spec().decoded_output
    ):
        checks.append(("heatmap_size", card.pose.heatmap_size))
    for key, value in checks:
        graph_value = defaults.get(key)
        if graph_value is not None and tuple(value) != graph_value:
            raise ModelError(
                f"pose model {p.name}: card ({found.where}) {key}: expected the graph's "
                f"{graph_value}, got {tuple(value)}"
            )
    return card, found.source


class OnnxPoseModel:
    """A top-down pose network on onnxruntime.

    ``infer(batch)``: ``batch`` (N, 3, H, W) float32 normalised per ``spec`` (N may be 0) →
    heatmaps (N, K, h, w) float32, or keypoints (N, K, 3) when ``spec.decoded_output``.
    One ``infer`` = one batched session run per ``max_batch`` crops (0 = all crops in one run;
    ``None`` = :data:`CPU_MAX_BATCH` on CPU, unlimited on CUDA), never a loop per crop.
    ``backend`` / ``precision``: ``None`` = the card's (``onnxruntime`` / ``fp32`` by default;
    :func:`darkpose.service.runtime.onnx.create_session`).
    """

    def __init__(
        self,
        path: str | Path,
        providers: str = "auto",
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        spec: ModelSpec | None = None,
        max_batch: int | None = None,
        backend: str | None = None,
        precision: str | None = None,
    ) -> None:
        self.path = Path(path)
        raw = read_model_bytes(self.path)
        try:
            if spec is None:
                self.card, self.card_source = card_from_model(raw, self.path)
                spec = self.card.to_spec()
            else:
                self.card, self.card_source = ModelCard.from_spec(spec), "given"
            self.spec: ModelSpec = spec
            dynamic = make_batch_dynamic(raw)
        except ModelError as exc:  # name the file when the message only describes the bytes
            if self.path.stem in exc.message or str(self.path) in exc.message:
                raise
            raise ModelError(f"pose model {self.path}: {exc.message}") from exc
        if dynamic is not raw:
            logger.info("pose model %s: batch dimension made dynamic", self.path.name)
        backend = backend or self.card.backend
        precision = precision or self.card.float_precision
        self.session = create_session(
            dynamic,
            providers=providers,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            name=str(self.path),
            backend=backend,
            precision=precision,
        )
        self.backend = backend
        self.precision = precision
        self.providers: list[str] = list(self.session.get_providers())
        self.input_name: str = self.card.input.name or self.session.get_inputs()[0].name
        layout = "keypoints" if self.spec.decoded_output else "heatmaps"
        self.output_name: str = self.card.output_name(layout) or self.session.get_outputs()[0].name
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        if self.input_name not in names_in or self.output_name not in names_out:
            raise ModelError(
                f"pose model {self.path.name}: card names input {self.input_name!r} / output "
                f"{self.output_name!r}, expected names of the graph, got inputs {names_in} "
                f"and outputs {names_out}"
            )
        if max_batch is None:
            on_cpu = self.providers[0] in (CPU, OPENVINO_CPU)
            max_batch = CPU_MAX_BATCH[backend] if on_cpu else 0
        self.max_batch = int(max_batch)
        prepare = getattr(self.session, "prepare", None)  # OpenVINO: one compile per batch size
        if prepare is not None and self.max_batch > 0:
            prepare(range(1, self.max_batch + 1))
        self.name = self.spec.name
        w, h = self.spec.heatmap_size
        k = self.spec.num_keypoints
        self._empty_shape: tuple[int, ...] = (0, k, 3) if self.spec.decoded_output else (0, k, h, w)

    def __repr__(self) -> str:
        return (
            f"OnnxPoseModel({self.path.name!r}, providers={self.providers}, "
            f"precision={self.precision})"
        )

    def infer(self, batch: F32) -> F32:
        """``batch`` (N, 3, H, W) float32 → heatmaps (N, K, h, w) float32 (one session call)."""
        w_in, h_in = self.spec.input_size
        if batch.ndim != 4 or batch.shape[1:] != (3, h_in, w_in):
            raise InvalidParameter(
                f"pose batch: expected shape (N, 3, {h_in}, {w_in}), got {tuple(batch.shape)}"
            )
        n = int(batch.shape[0])
        if n == 0:
            return np.zeros(self._empty_shape, np.float32)
        x = np.ascontiguousarray(batch, dtype=np.float32)
        step = self.max_batch if self.max_batch > 0 else n
        outs = [
            self.session.run([self.output_name], {self.input_name: x[i : i + step]})[0]
            for i in range(0, n, step)
        ]
        out = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)
        return np.asarray(out, dtype=np.float32)
