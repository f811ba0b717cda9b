"""Load pose checkpoints of the official HRNet/DarkPose repositories and of mmpose 0.x / 1.x.

Recognised layouts (after unwrapping a ``state_dict`` / ``model`` entry and stripping a
DataParallel ``module.`` prefix):

* ``official`` — HRNet / SimpleBaseline / DarkPose: ``conv1.weight``, ``stage2.0.branches…``,
  ``final_layer.weight`` (our module names).
* ``mmpose0`` — mmpose 0.x ``TopDown``: ``backbone.<same names>`` +
  ``keypoint_head.final_layer.*`` (+ ``keypoint_head.deconv_layers.*`` for SimpleBaseline).
* ``mmpose1`` — mmpose 1.x ``TopdownPoseEstimator``: ``backbone.<same names>`` +
  ``head.final_layer.*`` (+ ``head.deconv_layers.*``).

Loading is strict: any missing or unexpected key, or a shape mismatch, raises
:class:`CheckpointError` listing them.  Only ``num_batches_tracked`` buffers may be missing
(checkpoints written by PyTorch < 0.4.1 do not have them; they do not affect inference).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from darkpose.models.errors import CheckpointError

logger = logging.getLogger(__name__)

Layout = Literal["official", "mmpose0", "mmpose1"]

#: Keys that may wrap the weights inside a checkpoint dict, in order of preference.
_NESTED_KEYS = ("state_dict", "model", "model_state_dict")
_HEAD_PREFIX: dict[str, Layout] = {"keypoint_head.": "mmpose0", "head.": "mmpose1"}
_MAX_LISTED = 12


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f" … (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"{len(keys)}: {shown}{more}"


def unwrap_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """Return the flat ``{name: tensor}`` mapping of a loaded checkpoint object.

    Accepts a bare state dict or a dict holding it under ``state_dict`` / ``model`` /
    ``model_state_dict`` (e.g. mmpose's ``{"meta": …, "state_dict": …, "optimizer": …}``);
    strips a ``module.`` prefix (DataParallel / DistributedDataParallel).
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint: expected a dict of tensors, got {type(obj).__name__}")
    sd: Mapping[str, object] = obj
    for key in _NESTED_KEYS:
        inner = sd.get(key)
        if isinstance(inner, Mapping) and inner and not isinstance(inner, torch.Tensor):
            sd = inner
            break
    tensors = {str(k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"checkpoint: expected tensors (a state_dict), got keys {sorted(map(str, sd))[:8]}"
        )
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def detect_layout(state: Mapping[str, torch.Tensor]) -> Layout:
    """``official`` / ``mmpose0`` / ``mmpose1`` from the key prefixes (see module docstring)."""
    if any(k.startswith("backbone.") for k in state):
        for prefix, layout in _HEAD_PREFIX.items():
            if any(k.startswith(prefix) for k in state):
                return layout
        raise CheckpointError(
            "checkpoint: expected an mmpose head ('keypoint_head.*' for 0.x or 'head.*' for "
            "1.x) next to 'backbone.*', got none"
        )
    return "official"


def to_official_keys(state: Mapping[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """Rename ``layout`` keys to our (official) module names; unknown keys are kept as they are
    (they then show up as unexpected keys in the strict load)."""
    if layout == "official":
        return dict(state)
    head = "keypoint_head." if layout == "mmpose0" else "head."
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.startswith("backbone."):
            out[k[len("backbone.") :]] = v
        elif k.startswith(head):
            out[k[len(head) :]] = v
        else:
            out[k] = v
    return out


def read_checkpoint(path: str | Path, *, unsafe: bool = False) -> object:
    """``torch.load`` on CPU.  ``weights_only=True`` unless ``unsafe`` (full unpickling: only
    for checkpoints you trust — some mmpose files store numpy objects in ``meta``)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint: expected an existing file, got {str(p)!r}")
    try:
        return torch.load(p, map_location="cpu", weights_only=not unsafe)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {p}: expected a weights-only torch checkpoint, got a file the safe "
            f"loader refuses ({str(exc).splitlines()[0]}); if it holds extra pickled objects "
            "and you trust it, pass --unsafe-load"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {p}: expected a torch checkpoint, got {exc}") from exc


def load_state(model: nn.Module, checkpoint: object) -> Layout:
    """Strictly load ``checkpoint`` (a loaded object or state dict) into ``model``.

    Returns the detected layout; raises :class:`CheckpointError` listing missing / unexpected
    keys and shape mismatches.
    """
    raw = unwrap_state_dict(checkpoint)
    layout = detect_layout(raw)
    state = to_official_keys(raw, layout)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = [f"checkpoint ({layout} layout) does not match {type(model).__name__}"]
        if missing:
            parts.append(f"missing keys {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_listing(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches (checkpoint vs model) {_listing(mismatched)}")
        raise CheckpointError("; ".join(parts))
    merged = {k: state.get(k, v) for k, v in expected.items()}
    model.load_state_dict(merged, strict=True)
    logger.info("loaded %d tensors (%s layout) into %s", len(state), layout, type(model).__name__)
    return layout


def load_checkpoint(model: nn.Module, path: str | Path, *, unsafe: bool = False) -> Layout:
    """:func:`read_checkpoint` + :func:`load_state`."""
    return load_state(model, read_checkpoint(path, unsafe=unsafe))
