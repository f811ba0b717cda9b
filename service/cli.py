"""``darkpose`` command line: dispatches to ``service/commands/<name>.py``.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and imports its
heavy dependencies inside ``run`` so that ``darkpose --help`` stays fast.  A
``DarkPoseError`` or a settings error (a bad ``DARKPOSE_*`` value or flag) escaping ``run`` is
logged as one line and ends the command with exit status 2.

``--log-level`` may come before or after the command; without it ``DARKPOSE_LOG_LEVEL`` sets the
level of every logger of the process (the service's own and uvicorn's), default INFO.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from darkpose.service import package_version

#: Named, not ``__name__``: ``python -m darkpose.service.cli`` would log as ``__main__``.
logger = logging.getLogger("darkpose.service.cli")

#: command name → (module under darkpose.service.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "run the HTTP service: POST an image to /pose, get the persons as JSON"),
    "infer": ("infer", "find the persons and their keypoints in an image or a folder (COCO JSON)"),
    "eval": ("eval", "measure keypoint accuracy (COCO AP) on an annotated image set"),
    "eval-det": ("eval_det", "measure person-detector accuracy (COCO box AP) on an annotated set"),
    "quantize": ("quantize", "make a faster int8 copy of a pose model and measure its accuracy"),
    "card": ("card", "show the model card of a model file: what it is and where it came from"),
    "docs": ("docs", "regenerate the configuration and HTTP reference pages of docs/"),
}
#: What ``darkpose --help`` says above the command list (for a user, not about the code).
DESCRIPTION = """\
Human pose estimation: finds the people in a photo and the body keypoints of each
(17 COCO points with the packaged models: nose, eyes, ears, shoulders, elbows,
wrists, hips, knees, ankles).  The models ship with the package; settings are
DARKPOSE_* environment variables (darkpose serve --help lists the main ones)."""
EXAMPLES = """examples:
  darkpose infer photo.jpg --out poses.json   persons in one photo, as COCO results JSON
  darkpose serve                              HTTP service on http://127.0.0.1:8000
  curl --data-binary @photo.jpg http://127.0.0.1:8000/pose
  darkpose COMMAND --help                     the options of one command"""
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _add_log_level(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        type=str.upper,
        metavar="LEVEL",
        help=f"logging level: {', '.join(LOG_LEVELS)} "
        "(default: DARKPOSE_LOG_LEVEL, else INFO); before or after the command",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="darkpose",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"darkpose {package_version()}")
    _add_log_level(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(f"darkpose.service.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"darkpose.service.commands.{module_name}":
                raise
            continue  # command not available in this build
        p = sub.add_parser(
            name,
            help=help_text,
            description=getattr(module, "DESCRIPTION", help_text),
            epilog=getattr(module, "epilog", lambda: None)(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # SUPPRESS: a level given before the command is kept when none follows it
        _add_log_level(p, argparse.SUPPRESS)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def resolve_log_level(flag: str | None) -> str:
    """The flag, else ``DARKPOSE_LOG_LEVEL``, else INFO (upper case); ``ValueError`` with an
    "expected X, got Y" message for an unknown name."""
    from_env = os.environ.get("DARKPOSE_LOG_LEVEL", "").strip()
    level = (flag or from_env or "INFO").upper()
    if level not in LOG_LEVELS:
        source = "--log-level" if flag else "DARKPOSE_LOG_LEVEL"
        raise ValueError(f"{source}: expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return level


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format=LOG_FORMAT)
    try:
        args.log_level = resolve_log_level(args.log_level)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    logging.getLogger().setLevel(args.log_level)
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from darkpose.service.core.errors import DarkPoseError
    from darkpose.service.runtime.detector_config import HtcSettings
    from darkpose.service.settings import settings_error_line, unknown_env_warnings

    for warning in unknown_env_warnings(os.environ, HtcSettings):
        logger.warning("%s", warning)

    try:
        return int(args._module.run(args))
    except DarkPoseError as exc:  # bad input, parameters or model files: no traceback
        logger.error("%s", exc.message)
        return 2
    except (ValidationError, SettingsError) as exc:  # Settings from flags and DARKPOSE_*
        logger.error("%s", settings_error_line(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
