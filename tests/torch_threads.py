"""One torch thread: the CI machine is small and shared; with several threads per process
tiny convolutions spin-wait (measured 17 s vs 0.08 s for an HRNet-W8 forward under load)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
