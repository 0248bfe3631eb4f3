"""Where trial drivers run: on the head node, the one node of a cluster that never goes away.

Ray Train (v2) starts a trial's ``TrainController`` actor on the node of the process that
calls ``TorchTrainer.fit()`` -- the trial's driver, a Ray Tune actor -- and the first controller
of the cluster creates Train's detached ``AutoscalingCoordinator`` actor on its own node, with
hard node affinity. A driver on a spot GPU node therefore takes its controller with it when
the node is reclaimed (Tune must retry the whole trial), and if it was the first, the
coordinator too: Ray can only restart that actor on the lost node, which fails, and the
controllers holding it get "actor is temporarily unavailable" errors. Asking for a sliver of
``node:__internal_head__`` -- the resource Ray reserves for the head node (Ray Serve pins its
controller with it, Ray Train its state actor) -- keeps drivers, controllers and the
coordinator on the head; a lost worker node then takes only Train workers, which the
controller restarts elsewhere from the last checkpoint (docs/cluster.md, section 9).
"""

from __future__ import annotations

import logging
import math

#: The resource Ray gives the head node alone (1 unit; reserved, no other node can have it).
HEAD_RESOURCE = "node:__internal_head__"
#: What each driver asks of it: small enough never to limit how many drivers fit there.
HEAD_SHARE = 0.001
#: A driver that is not pinned must ask for some CPU (a placement group bundle cannot be all
#: zero); ``driver_cpus: 0`` (toy runs) then means this.
MIN_DRIVER_CPUS = 0.01

log = logging.getLogger(__name__)


def driver_resources(driver_cpus: float) -> tuple[dict[str, float], float | None]:
    """``(resources of each trial driver, the head node's CPUs)`` for the connected Ray.

    The drivers are pinned to the head when it has CPUs for one; a pinned driver with
    ``driver_cpus: 0`` asks for no CPU at all (its sliver of the head resource keeps the
    request non-empty), so two 1-CPU toy trials really run at once on 2 CPUs -- at 0.01 CPU
    each, the second trial's worker waited for the first to finish. A head started with too
    few CPUs (``ray start --head --num-cpus=0``) leaves the drivers unpinned, with a warning,
    and the head's CPUs come back as ``None``.
    """
    import ray

    unpinned = max(driver_cpus, MIN_DRIVER_CPUS)
    head = next((n["Resources"] for n in ray.nodes() if n["Alive"] and HEAD_RESOURCE in n["Resources"]), None)
    if head is None or float(head.get("CPU", 0.0)) < unpinned:
        log.warning(
            "warning: the head node has %s CPUs, a trial driver needs %g: trial drivers may run on "
            "worker nodes, and losing one (a spot node) can stall Ray Train; give the head CPUs "
            "(docs/cluster.md, section 9)",
            "no" if head is None else f"{float(head.get('CPU', 0.0)):g}",
            unpinned,
        )
        return {"CPU": unpinned}, None
    return {"CPU": float(driver_cpus), HEAD_RESOURCE: HEAD_SHARE}, float(head["CPU"])


def head_slots(head_cpus: float | None, driver_cpus: float) -> int | None:
    """How many pinned trial drivers fit on the head at once (None: not pinned)."""
    if head_cpus is None:
        return None
    if driver_cpus <= 0:  # only the head resource's slivers limit them
        return math.floor(1 / HEAD_SHARE + 1e-9)
    return max(1, math.floor(head_cpus / driver_cpus + 1e-9))
