#!/usr/bin/env python
"""Wait until a Ray cluster has N alive nodes (the Slurm launcher's start-up barrier).

``python cluster/slurm/wait_for_nodes.py --address HEAD_IP:6379 --nodes 3 --timeout 300``

Why a barrier: ``run_grid.py`` sizes its trial concurrency from the resources that exist
when it starts, so it must not start before every allocated node has joined. Exits 0 once
``--nodes`` nodes are alive, 1 with the count reached when ``--timeout`` seconds pass first.
"""

from __future__ import annotations

import argparse
import sys
import time


def alive_nodes(address: str) -> int:
    """Alive nodes of the cluster at ``address``, 0 while its head does not answer yet."""
    import ray

    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError):
        return 0
    try:
        return sum(1 for n in ray.nodes() if n.get("Alive"))
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", required=True, help="Ray head address, HOST:PORT")
    p.add_argument("--nodes", type=int, required=True, help="alive nodes to wait for")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before giving up")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between checks")
    args = p.parse_args(argv)
    deadline = time.monotonic() + args.timeout
    count = 0
    while True:
        count = alive_nodes(args.address)
        if count >= args.nodes:
            print(f"[raybench] {count} Ray node(s) alive at {args.address}", flush=True)
            return 0
        if time.monotonic() >= deadline:
            print(
                f"[raybench] only {count} of {args.nodes} Ray node(s) joined {args.address} within "
                f"{args.timeout:g} s: check the worker steps' output (srun) for `ray start` errors",
                file=sys.stderr,
                flush=True,
            )
            return 1
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
