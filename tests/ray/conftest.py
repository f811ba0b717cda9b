"""Fixtures of the Ray tests: a real local 2-node cluster (see service/ray_app/local_cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from darkpose.service.ray_app.local_cluster import LocalRay


@pytest.fixture(scope="module")
def ray_two_nodes() -> Iterator[LocalRay]:
    """A 2-node × 1-CPU local cluster for the module (Serve started, HTTP on 127.0.0.1)."""
    pytest.importorskip("ray.serve", reason="needs the optional `ray` extra (ray[serve])")
    from darkpose.service.ray_app.local_cluster import local_ray_cluster

    with local_ray_cluster(num_nodes=2, cpus_per_node=1) as lr:
        yield lr
