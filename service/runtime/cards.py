"""Where a model's card comes from (:mod:`darkpose.service.core.cards` defines what a card is).

For a model file ``dir/model.onnx`` the first of these wins:

1. the file's ONNX ``metadata_props``: a whole card as JSON under ``darkpose.card``, or the
   ``darkpose.*`` keys ``darkpose-export`` writes (:meth:`ModelSpec.to_metadata`);
2. a card file beside the model, ``dir/model.card.json`` (a user's own model: drop both files
   into the model directory);
3. a card packaged with darkpose, ``darkpose/zoo/<model>.card.json`` (the packaged models, and
   cards for other known files); when that card has a ``sha256``, only a file with that hash
   matches;
4. none: :func:`resolve_card` returns ``None`` (the caller decides: the pose backend falls back to
   the graph's shapes + SimpleBaseline defaults, a card-driven detector refuses to load).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from darkpose.service.core.cards import (
    CARD_METADATA_KEY,
    CARD_SUFFIX,
    ZOO_DIR,
    ModelCard,
    ModelKind,
    parse_card,
    read_card,
)
from darkpose.service.core.errors import ModelError
from darkpose.service.core.types import ModelSpec
from darkpose.service.runtime.onnx import load_model, read_model_bytes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedCard:
    """A card and where it came from (``metadata`` | ``beside`` | ``shipped``) + that path."""

    card: ModelCard
    source: str
    where: str


def card_beside(model_path: str | Path) -> Path:
    """``dir/model.onnx`` → ``dir/model.card.json``."""
    p = Path(model_path)
    return p.with_name(p.stem + CARD_SUFFIX)


def shipped_card_path(model_path: str | Path) -> Path:
    """``darkpose/zoo/<model>.card.json``: the packaged card for a file of that name."""
    return ZOO_DIR / card_beside(model_path).name


def card_from_metadata(meta: dict[str, str], name: str) -> ModelCard | None:
    """The card in ONNX ``metadata_props`` (``darkpose.card`` JSON, else ``darkpose.*`` keys of
    a pose model), ``None`` when there is none."""
    if CARD_METADATA_KEY in meta:
        return parse_card(meta[CARD_METADATA_KEY], f"{name} (metadata {CARD_METADATA_KEY})")
    if any(k.startswith("darkpose.") for k in meta):
        spec = ModelSpec.from_metadata(meta, name=name)
        return ModelCard.from_spec(spec, provenance={"source": "darkpose-export metadata"})
    return None


def resolve_card(
    model_path: str | Path,
    model_bytes: bytes | None = None,
    kind: ModelKind | None = None,
    *,
    log_level: int = logging.INFO,
) -> ResolvedCard | None:
    """The card of ``model_path`` (order in the module docstring), or ``None``.

    ``model_bytes``: the file's bytes when already read.  ``kind``: the expected kind; a card of
    another kind is a :class:`ModelError` ("expected a pose card, got a detector card").
    ``log_level``: of the line naming the card found (a check before loading says DEBUG).
    """
    path = Path(model_path)
    data = model_bytes if model_bytes is not None else read_model_bytes(path)
    meta = {p.key: p.value for p in load_model(data).metadata_props}
    found: ResolvedCard | None = None
    card = card_from_metadata(meta, path.stem)
    if card is not None:
        found = ResolvedCard(card, "metadata", str(path))
    elif card_beside(path).is_file():
        found = ResolvedCard(read_card(card_beside(path)), "beside", str(card_beside(path)))
    elif shipped_card_path(path).is_file():
        shipped = read_card(shipped_card_path(path))
        digest = hashlib.sha256(data).hexdigest()
        if shipped.sha256 is None or shipped.sha256 == digest:
            found = ResolvedCard(shipped, "shipped", str(shipped_card_path(path)))
        else:
            logger.warning(
                "model %s: the shipped card %s is for sha256 %s, got %s; not used",
                path,
                shipped_card_path(path).name,
                shipped.sha256[:12],
                digest[:12],
            )
    if found is None:
        return None
    if kind is not None and found.card.kind != kind:
        raise ModelError(
            f"model card of {path.name} ({found.where}): expected a {kind} card, "
            f"got a {found.card.kind} card"
        )
    logger.log(log_level, "model %s: card %s from %s", path.name, found.card.name, found.where)
    return found


def load_card(
    model_path: str | Path, kind: ModelKind, *, log_level: int = logging.INFO
) -> ModelCard:
    """The card of ``model_path``; :class:`ModelError` when the model has none."""
    found = resolve_card(model_path, kind=kind, log_level=log_level)
    if found is None:
        raise ModelError(
            f"model {Path(model_path).name}: expected a model card (ONNX metadata "
            f"{CARD_METADATA_KEY}, {card_beside(model_path).name} beside it, or "
            f"darkpose/zoo/{shipped_card_path(model_path).name}), "
            "got none"
        )
    return found.card
