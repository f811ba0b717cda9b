"""``darkpose card MODEL [--kind pose|detector] [--schema]``: the model card a model file gets.

Prints the resolved card as JSON on stdout and where it came from on stderr (ONNX metadata, a
``<model>.card.json`` beside the file, or a card shipped in ``service/cards``), the same
resolution the service runs (:func:`darkpose.service.runtime.cards.resolve_card`).  ``MODEL`` is a
path
or a file name in ``DARKPOSE_MODEL_DIR``.  Exit status 2 with the reason when the file has no
card or its card is invalid.  ``--schema`` prints the card JSON schema instead.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None, help="ONNX file (path or name)")
    parser.add_argument(
        "--kind", choices=("pose", "detector"), default=None, help="expected kind of model"
    )
    parser.add_argument("--schema", action="store_true", help="print the card JSON schema")


def run(args: argparse.Namespace) -> int:
    from darkpose.service.core.cards import ModelCard
    from darkpose.service.core.errors import InvalidParameter, ModelError
    from darkpose.service.runtime.cards import card_beside, resolve_card, shipped_card_path
    from darkpose.service.settings import Settings

    if args.schema:
        schema = ModelCard.model_json_schema(by_alias=True)
        sys.stdout.write(json.dumps(schema, indent=2) + "\n")
        return 0
    if args.model is None:
        raise InvalidParameter("MODEL: expected an ONNX file (or --schema), got none")
    path = Settings().resolve_model(args.model)  # type: ignore[call-arg]
    if not path.is_file():
        raise InvalidParameter(f"MODEL: expected an existing ONNX file, got {path}")
    found = resolve_card(path, kind=args.kind)
    if found is None:
        raise ModelError(
            f"{path.name}: expected a model card (ONNX metadata, {card_beside(path)} or "
            f"{shipped_card_path(path)}), got none"
        )
    sys.stderr.write(f"{path.name}: card from {found.source} ({found.where})\n")
    sys.stdout.write(found.card.to_json())
    return 0
