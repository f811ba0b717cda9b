"""Torch tests in this package run single-threaded (see tests/torch_threads.py)."""

from tests.torch_threads import one_torch_thread

__all__ = ["one_torch_thread"]
