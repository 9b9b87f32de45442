"""A two-node local Ray cluster (`ray.cluster_utils.Cluster`, one CPU per node) for the cluster tests."""
from __future__ import annotations

import contextlib
import os

from pipeline.runner import REPO_ROOT


@contextlib.contextmanager
def two_node_cluster():
    """Yields the Cluster once both nodes are alive; the caller connects with `ray.init(address=...)`
    (or passes the address to a job) and must disconnect before leaving."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    try:
        ray.init(address=c.address, logging_level="WARNING")
        c.wait_for_nodes()
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        ray.shutdown()
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
