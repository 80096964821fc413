"""Whether a trial or run fits the cluster at all, checked before it is submitted.

Ray queues work that no node can hold without an error: a worker asking 8 GPUs on machines of 4, or a trial of 8
one-GPU workers on a cluster of 4 GPUs, waits forever. Each worker must fit on one node (its CPUs and GPUs), and
all of a trial's workers on the cluster at once (Ray Train spreads them over nodes when one is too small). An
autoscaler can add nodes that are not there yet: then the check is the user's to skip (`--autoscaling`).
"""

from __future__ import annotations

import math

from imm.config import ConfigError

CHECKED = ("CPU", "GPU")


def _describe(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}{'s' if resources.get(k, 0) != 1 else ''}" for k in CHECKED)


def workers_that_fit(per_worker: dict[str, float], nodes: list[dict[str, float]]) -> int:
    """How many workers of `per_worker` the nodes (their total resources) hold at once."""
    asked = {k: v for k, v in per_worker.items() if k in CHECKED and v > 0}
    if not asked:
        return math.inf
    return sum(min(math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in asked.items()) for node in nodes)


def check(per_worker: dict[str, float], workers: int, nodes: list[dict[str, float]], *, field: str) -> None:
    """A one-line ConfigError naming the trial's needs and the largest node, unless `workers` of `per_worker` fit."""
    fit = workers_that_fit(per_worker, nodes)
    if fit >= workers:
        return
    largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
    total = {k: per_worker.get(k, 0) * workers for k in CHECKED}
    raise ConfigError(
        f"{field}: a trial needs {workers} worker(s) of {_describe(per_worker)} ({_describe(total)} in all) and the "
        f"cluster's {len(nodes)} node(s) hold {fit} such worker(s) at once (the largest node: {_describe(largest)}); "
        "lower the workers or their CPUs/GPUs, add machines, or pass --autoscaling if an autoscaler adds nodes")


def cluster_nodes(dashboard: str) -> list[dict[str, float]]:
    """The total resources of each live node of the cluster whose dashboard is at `dashboard` (Ray's state API,
    over HTTP with the client's token)."""
    from ray.util.state import list_nodes

    return [dict(n.resources_total) for n in list_nodes(address=dashboard, detail=True) if n.state == "ALIVE"]
