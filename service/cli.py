"""``darkpose`` command line: dispatches to ``service/commands/<name>.py``.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and imports its
heavy dependencies inside ``run`` so that ``darkpose --help`` stays fast.  A
``DarkPoseError`` or a ``Settings`` validation error escaping ``run`` is logged as one line and
ends the command with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

logger = logging.getLogger(__name__)

#: command name → (module under service.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "run the HTTP service (uvicorn)"),
    "infer": ("infer", "pose estimation on an image or a directory → COCO results JSON"),
    "eval": ("eval", "COCO keypoint AP for decode/flip/box-source combinations"),
    "eval-det": ("eval_det", "COCO person-box AP for detector configurations"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="darkpose", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(f"service.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"service.commands.{module_name}":
                raise
            continue  # command not available in this build
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from pydantic import ValidationError

    from service.core.errors import DarkPoseError

    try:
        return int(args._module.run(args))
    except DarkPoseError as exc:  # bad input, parameters or model files: no traceback
        logger.error("%s", exc.message)
        return 2
    except ValidationError as exc:  # Settings from the flags and the DARKPOSE_* environment
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
