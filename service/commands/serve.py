"""``darkpose serve``: run the HTTP service on uvicorn (one worker per process).

Scale out with replicas (containers / processes behind a load balancer), not uvicorn workers:
each process holds its own models and its own micro-batcher.  Settings come from the
environment (``DARKPOSE_*``); the flags below override the most common ones.

Fail fast: before anything says "serving on", the model files are checked (each exists and its
card resolves) and the port is bound, so a start that cannot serve (models missing, port in use,
a port below 1024 without the capability) ends with one error line that names the fix and exit
status :data:`EXIT_LOAD_FAILED`.  The models then load in the background (``/healthz`` answers
at once, ``/readyz`` is 503 until they are warm); a load that fails (a broken model file,
``providers=cuda`` without a working CUDA provider) stops the server the same way, so restart
policies and orchestrators see it.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from darkpose.service.settings import Settings

logger = logging.getLogger(__name__)

#: Exit status of ``darkpose serve`` when the models fail to load (2, like every other
#: ``DarkPoseError`` of the CLI: bad settings, parameters or model files).
EXIT_LOAD_FAILED = 2


def _default(name: str) -> object:
    """The built-in default of a :class:`~darkpose.service.settings.Settings` field (no
    environment)."""
    from darkpose.service.settings import default_of

    return default_of(name)


#: Settings whose ``None`` default means "the model card's value" (each model's card decides).
FROM_CARD = frozenset(
    {
        "decode",
        "blur_kernel",
        "pose_backend",
        "pose_precision",
        "detector_backend",
        "detector_precision",
    }
)


def _shown(value: object, name: str | None = None) -> str:
    """``value`` as ``serve --help`` shows it; a ``None`` of a :data:`FROM_CARD` setting
    ``name`` reads "from the model card" (not "None")."""
    if value is None and name in FROM_CARD:
        return "from the model card"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


#: Settings listed by ``darkpose serve --help`` (environment variable DARKPOSE_<NAME>).
HELP_SETTINGS = (
    "profile",
    "model_dir",
    "pose_models",
    "detector",
    "detector_model",
    "providers",
    "decode",
    "flip",
    "batching",
    "max_batch",
    "max_wait_ms",
    "max_inflight_requests",
    "max_image_bytes",
    "request_timeout_s",
    "host",
    "port",
    "log_level",
)


def epilog() -> str:
    """The settings table of ``serve --help``: each setting's environment variable, built-in
    default and, when the environment sets it, the value in effect."""
    from darkpose.service.core.profiles import (
        profile_governed,
        profile_names,
        profile_settings,
        profiles_table,
    )

    governed = profile_governed()
    chosen = os.environ.get("DARKPOSE_PROFILE", "")
    if chosen not in profile_names():
        chosen = str(profiles_table()["default"])
    from_profile = profile_settings(chosen)
    lines = ["settings (environment variables; the flags above override some of them):"]
    for name in HELP_SETTINGS + tuple(n for n in governed if n not in HELP_SETTINGS):
        env = "DARKPOSE_" + name.upper()
        if name in from_profile:
            line = f"  {env:<34} {_shown(from_profile[name], name) or 'none'} from profile {chosen}"
        else:
            line = f"  {env:<34} default {_shown(_default(name), name) or 'none'}"
        if env in os.environ:
            line += f"  (set here: {os.environ[env]})"
        lines.append(line)
    lines.append(
        f"  profiles ({', '.join(profile_names())}) are bundles of the settings above "
        "(darkpose/zoo/profiles.json); a setting given explicitly overrides its profile value"
    )
    lines.append(
        "  list settings take a path, a comma list (a.onnx,b.onnx) or JSON; every setting: "
        "the configuration page of the documentation"
    )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    host, port, batching = _default("host"), _default("port"), _shown(_default("batching"))
    parser.add_argument(
        "--host", default=None, help=f"bind address (default: {host}, DARKPOSE_HOST)"
    )
    parser.add_argument(
        "--port", type=int, default=None, help=f"port (default: {port}, DARKPOSE_PORT)"
    )
    parser.add_argument(
        "--batching",
        choices=("on", "off"),
        default=None,
        help="dynamic micro-batching across requests "
        f"(default: {'on' if batching == 'true' else 'off'}, DARKPOSE_BATCHING)",
    )
    parser.add_argument(
        "--providers",
        choices=("auto", "cpu", "cuda"),
        default=None,
        help=f"onnxruntime providers (default: {_default('providers')}, DARKPOSE_PROVIDERS)",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=None,
        help="seconds to let in-flight requests finish on SIGTERM (default: "
        f"DARKPOSE_REQUEST_TIMEOUT_S + 5 = {float(_default('request_timeout_s')) + 5:g})",  # type: ignore[arg-type]
    )
    parser.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        default=0,
        metavar="BYTES",
        help="pin glibc's mmap threshold (e.g. 131072): less RSS growth under load, more CPU "
        "per request; 0 = glibc default (default)",
    )


#: glibc ``mallopt`` parameter number of ``M_MMAP_THRESHOLD`` (malloc.h).
_M_MMAP_THRESHOLD = -3


def pin_mmap_threshold(threshold: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold so large buffers (images, crops, heatmaps) are always mmapped
    and given back to the OS when freed (opt-in: ``darkpose serve --malloc-mmap-threshold``).

    glibc otherwise raises the threshold dynamically after the first large free, after which
    those buffers come from per-thread heaps and fragment them.  Measured with bench/load.py
    (16 clients, 60 s): pinned at 128 KiB the RSS growth fell from +112 to +23 MB (batching on)
    but the server spent ~30 % more CPU per image (page faults on every fresh mapping), so it
    is off by default.  No-op (False) off glibc or when ``MALLOC_MMAP_THRESHOLD_`` is set.
    """
    import ctypes
    import ctypes.util

    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


def _http_protocol(settings: Settings) -> Any:
    """uvicorn's httptools protocol with the connection limits of docs/security.md (cap,
    head/write timeouts, tiny-chunk uploads); plain ``"auto"`` when httptools is missing."""
    try:
        from darkpose.service.api.protocol import (
            ConnectionLimits,
            guarded_protocol,
            prepare_process,
        )
    except ImportError as exc:  # httptools is a dependency; a broken install still serves
        logger.warning("connection limits off: %s (pip install httptools)", exc)
        return "auto"
    cap = prepare_process(settings.max_connections)
    return guarded_protocol(ConnectionLimits.from_settings(settings, max_connections=cap))


#: Ports below this one need root or CAP_NET_BIND_SERVICE (Linux's default
#: ``net.ipv4.ip_unprivileged_port_start``).
PRIVILEGED_PORTS_BELOW = 1024


def _free_port_near(host: str, port: int, family: socket.AddressFamily) -> int | None:
    """A port after ``port`` (within 20) that ``host`` can bind now, for the error message."""
    for candidate in range(max(port + 1, PRIVILEGED_PORTS_BELOW), port + 21):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, candidate))
            except OSError:
                continue
            return candidate
    return None


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (``SO_REUSEADDR``, as uvicorn binds), for
    uvicorn to listen on.  :class:`StartupError` with the fix when it cannot be bound."""
    from darkpose.service.core.errors import StartupError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    default_port = int(_default("port"))  # type: ignore[call-overload]
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if isinstance(exc, socket.gaierror):
            raise StartupError(
                f"cannot serve on {where}: host {host!r} does not resolve to an address; use "
                "--host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every interface)"
            ) from None
        if exc.errno in (errno.EACCES, errno.EPERM) and port < PRIVILEGED_PORTS_BELOW:
            raise StartupError(
                f"cannot serve on {where}: port {port} needs root or CAP_NET_BIND_SERVICE; use "
                f"--port {default_port} (or publish it as {port} from a container or proxy)"
            ) from None
        if exc.errno == errno.EADDRINUSE:
            free = _free_port_near(host, port, family)
            fix = f"use --port {free}" if free is not None else "use another --port"
            raise StartupError(
                f"cannot serve on {where}: port {port} is in use by another process (another "
                f"darkpose serve?); stop it or {fix}"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise StartupError(
                f"cannot serve on {where}: {host} is not an address of this machine; use "
                "--host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every interface)"
            ) from None
        raise StartupError(
            f"cannot serve on {where}: expected a bindable address, got {exc.strerror or exc}"
        ) from None
    sock.set_inheritable(True)
    return sock


def check_models(settings: Settings) -> None:
    """The model files exist and their cards resolve (no model is loaded); ``StartupError``
    with the fix otherwise."""
    from darkpose.service.core.errors import ModelError, StartupError
    from darkpose.service.runtime.factory import check_model_files

    try:
        check_model_files(settings)
    except ModelError as exc:
        raise StartupError(f"cannot serve: {exc.message}") from None


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from darkpose.service.api import create_app
    from darkpose.service.api.access_control import warn_if_open
    from darkpose.service.core.options import given
    from darkpose.service.settings import Settings

    batching = None if args.batching is None else args.batching == "on"
    overrides = given(host=args.host, port=args.port, batching=batching, providers=args.providers)
    settings = Settings(**overrides)
    if args.malloc_mmap_threshold > 0 and pin_mmap_threshold(args.malloc_mmap_threshold):
        logger.info("glibc mmap threshold pinned at %d bytes", args.malloc_mmap_threshold)
    check_models(settings)
    sock = bind_socket(settings.host, settings.port)
    app = create_app(settings)
    warn_if_open(settings, settings.host)
    graceful = args.graceful_timeout
    if graceful is None:
        graceful = settings.request_timeout_s + 5.0
    logger.info(
        "serving on http://%s:%d (pid %d, batching=%s, models in %s)",
        settings.host,
        settings.port,
        os.getpid(),
        settings.batching,
        settings.model_dir,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=_http_protocol(settings),
        workers=1,
        log_level=str(getattr(args, "log_level", None) or settings.log_level).lower(),
        timeout_graceful_shutdown=int(max(1.0, graceful)),
        access_log=False,
        proxy_headers=False,  # X-Forwarded-For: only from DARKPOSE_TRUSTED_PROXIES (access_control)
    )
    server = uvicorn.Server(config)
    state = app.state.service
    failed: list[str] = []

    def on_load_error(message: str) -> None:  # loader thread: stop the server, exit below
        failed.append(message)
        server.should_exit = True

    state.on_load_error = on_load_error
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if failed:
        logger.error("models: failed to load, exiting: %s", failed[0])
        return EXIT_LOAD_FAILED
    return 0
