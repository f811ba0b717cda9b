"""``darkpose serve`` wiring (the real server is exercised in test_server.py)."""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys

import pytest

from darkpose.service.commands import serve
from tests.conftest import REPO


def test_arguments_parse() -> None:
    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    args = p.parse_args(["--port", "9001", "--batching", "off", "--providers", "cpu"])
    assert (args.port, args.batching, args.providers, args.host) == (9001, "off", "cpu", None)
    assert args.malloc_mmap_threshold == 0
    with pytest.raises(SystemExit):
        p.parse_args(["--batching", "maybe"])


def test_cli_lists_serve() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "darkpose.service.cli", "serve", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    assert "--batching" in out.stdout and "--graceful-timeout" in out.stdout


def test_mmap_threshold_pinning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert serve.pin_mmap_threshold() is False  # the environment wins
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert serve.pin_mmap_threshold() is True
