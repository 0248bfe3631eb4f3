"""Multi-node drills on one machine, each in its own process with its own Ray (never the test
session's): ``python tests/helpers/multinode.py node-loss|autoscale --study S --storage DIR --out J``.

- ``node-loss``: a head (CPU) and two worker nodes of ``ray.cluster_utils.Cluster``, each
  worker node carrying one ``fake_gpu`` (the stand-in for a GPU). ``run_grid.py`` joins it
  through ``RAY_ADDRESS``; once one trial has finished and the other has a persisted
  checkpoint, the node running that trial's train worker is removed hard (like a reclaimed
  spot instance), and the drill records where the trial's worker runs next, and on which node
  each Ray actor process ran before the loss (the trial drivers, Train's controllers and its
  autoscaling coordinator must be on the head: raybench.sweep.placement).
- ``autoscale``: a CPU head whose monitor runs the autoscaler with the ``fake_multinode``
  provider: one worker type (``fake_gpu: 1``, min 0), so the cluster starts with no node that
  can run a trial; ``run_grid.py`` joins it, trials pend, the autoscaler adds nodes, the grid
  completes, and the idle nodes are removed again.

Every node binds to 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray pick the
loopback address), and only the processes this drill started are stopped at the end (no
``ray stop``, which would end every Ray on the machine). The drill writes a JSON report of
what it saw and measured for the test to check. (A little over 400 lines: both drills run as
this one script and share its /proc and process helpers.)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESOURCE = "fake_gpu"  # the GPU stand-in a study asks for with scaling.resources_per_worker


def drill_env() -> str:
    """Environment of the drill and of everything it starts (nodes, monitor, run_grid.py).

    Returns the drill's own Ray temp dir: sessions and the ``ray_current_cluster`` address
    file go there, so no other Ray on this machine (``ray.init("auto")``) finds this cluster.
    """
    import tempfile

    temp = tempfile.mkdtemp(prefix="rb-mn-", dir="/tmp")  # short: Unix socket paths are limited
    os.environ["RAY_TMPDIR"] = temp
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback addresses only
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NETRC", os.devnull)
    os.environ.pop("RAY_ADDRESS", None)
    return temp


# ---- processes: which node runs a train worker (from /proc, no psutil needed) ----


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def ray_processes() -> dict[int, str]:
    """Ray worker processes: pid -> what runs there, from the process title
    (``ray::TrainController.run`` -> ``TrainController``; no dashboard or state API needed)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            title = _cmdline(int(entry.name)).split() if entry.name.isdigit() else []
        except (OSError, ValueError, IndexError):
            continue
        if title and title[0].startswith("ray::") and title[0] != "ray::IDLE":
            found[int(entry.name)] = title[0][len("ray::") :].split(".")[0]
    return found


def train_worker_pids() -> list[int]:
    """Processes of Ray Train workers (their title is ``ray::RayTrainWorker...``)."""
    return [pid for pid, what in ray_processes().items() if what == "RayTrainWorker"]


def actor_nodes(raylets: dict[int, str]) -> dict[str, list[str]]:
    """What runs on which node: ``{"TrainController": ["head"], ...}``."""
    found: dict[str, set[str]] = {}
    for pid, what in ray_processes().items():
        if node := node_of(pid, raylets):
            found.setdefault(what, set()).add(node)
    return {what: sorted(nodes) for what, nodes in sorted(found.items())}


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (children, grandchildren, ...)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = _ppid(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [root]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def raylet_pid(node: Any) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def node_of(pid: int, raylets: dict[int, str]) -> str | None:
    """The node (by raylet pid -> name) whose raylet started process ``pid``."""
    try:
        while pid > 1:
            if pid in raylets:
                return raylets[pid]
            pid = _ppid(pid)
    except (OSError, ValueError, IndexError):
        return None
    return None


def trial_states(root: Path) -> dict[str, str]:
    out = {}
    for status in sorted(root.glob("trials/*/status.json")):
        try:
            out[status.parent.name] = json.loads(status.read_text()).get("state", "?")
        except (OSError, ValueError):
            continue
    return out


def checkpoint_iters(root: Path, trial: str) -> list[int]:
    iters = []
    for meta in (root / "train" / trial).glob("checkpoint_*/raybench.json"):
        try:
            iters.append(int(json.loads(meta.read_text())["iter"]))
        except (OSError, ValueError, KeyError):
            continue
    return sorted(iters)


def start_grid(study: str, storage: str, address: str, log: Path, *extra: str) -> subprocess.Popen:
    """``run_grid.py`` joining the cluster at ``address`` the way a user does (RAY_ADDRESS)."""
    cmd = [sys.executable, str(REPO / "experiments" / "run_grid.py"), "--study", study]
    cmd += ["--storage", storage, "--no-report", *extra]
    env = dict(os.environ, RAY_ADDRESS=address)
    return subprocess.Popen(cmd, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT, cwd=REPO)


def wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, every: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"run_grid.py exited with {proc.returncode} while waiting for {what}")
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def stop(proc: subprocess.Popen, timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


# ---- drills ----


def node_loss(study: str, storage: str, experiment: str, report: dict[str, Any]) -> None:
    from ray.cluster_utils import Cluster

    t0 = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    procs: list[subprocess.Popen] = []
    try:
        workers = {}
        for i in (1, 2):
            # 3 CPUs: a train worker (1) and room for both trial drivers, which must still run on
            # the head (raybench pins them there: a node that goes away must not take them along)
            node = cluster.add_node(num_cpus=3, resources={RESOURCE: 1}, include_dashboard=False)
            workers[f"worker{i}"] = node
        cluster.wait_for_nodes()
        raylets = {raylet_pid(n): name for name, n in workers.items()}
        raylets[raylet_pid(cluster.head_node)] = "head"
        report["cluster_start_s"] = round(time.monotonic() - t0, 1)
        root = Path(storage) / experiment
        log = Path(report["log"])
        grid = start_grid(study, storage, cluster.address, log)
        procs.append(grid)

        def victim_ready():
            states = trial_states(root)
            done = [t for t, s in states.items() if s == "finished"]
            running = [t for t, s in states.items() if s != "finished"]
            if len(done) == 1 and running:
                victim = running[0]
                if checkpoint_iters(root, victim) and len(train_worker_pids()) == 1:
                    return done[0], victim
            return None

        finished_first, victim = wait(
            victim_ready, 360, "one finished trial and a checkpoint of the other", grid
        )
        pids = train_worker_pids()
        hosts = {node_of(p, raylets) for p in pids}
        assert len(pids) == 1 and len(hosts) == 1, f"expected one train worker, got {pids} on {hosts}"
        (victim_node,) = hosts
        report["actors_before_loss"] = actor_nodes(raylets)
        report.update(
            finished_status_before_loss=json.loads(
                (root / "trials" / finished_first / "status.json").read_text()
            ),
            node_loss_time=time.time(),
            finished_first=finished_first,
            victim=victim,
            victim_node=victim_node,
            checkpoints_before_loss=checkpoint_iters(root, victim),
            node_loss_at_s=round(time.monotonic() - t0, 1),
        )
        del raylets[raylet_pid(workers[victim_node])]
        cluster.remove_node(workers[victim_node], allow_graceful=False)  # a reclaimed spot node

        def resumed_on():
            found = {node_of(p, raylets) for p in train_worker_pids()} - {None}
            return sorted(found)

        report["resumed_on"] = wait(resumed_on, 180, "the trial's worker to restart", grid, every=0.05)
        report["grid_rc"] = grid.wait(timeout=300)
        report["total_s"] = round(time.monotonic() - t0, 1)
    finally:
        for proc in procs:
            stop(proc)
        cluster.shutdown()


def autoscaling_config(path: Path, head_cpus: int, port: int) -> dict[str, Any]:
    """A fake_multinode cluster config: CPU head, one worker type with the GPU stand-in, min 0."""
    config = {
        "cluster_name": "raybench-fake",
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,  # 6 s: idle nodes go away quickly in the drill
        "provider": {
            "type": "fake_multinode",
            "gcs_address": f"127.0.0.1:{port}",
            "disable_launch_config_check": True,
            "disable_node_updaters": True,  # nothing to set up: without it every launch "fails"
            # every fake node is at 127.0.0.1: the monitor must tell them apart by node id
            "use_node_id_as_ip": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
            "fake_gpu_node": {
                # a train worker + a trial driver; a small object store (memory is shared)
                "resources": {"CPU": 2, RESOURCE: 1, "object_store_memory": 150 * 1024**2},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }
    path.write_text(json.dumps(config))
    return config


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_nodes() -> list[dict[str, Any]]:
    """Alive non-head nodes of the cluster this drill is connected to."""
    import ray

    return [
        {"id": n["NodeID"], "resources": n["Resources"]}
        for n in ray.nodes()
        if n["Alive"] and "node:__internal_head__" not in n["Resources"]
    ]


def autoscale(study: str, storage: str, experiment: str, report: dict[str, Any]) -> None:
    from ray.cluster_utils import Cluster

    os.environ["RAY_FAKE_CLUSTER"] = "1"  # the fake_multinode provider refuses to run without it
    os.environ["AUTOSCALER_UPDATE_INTERVAL_S"] = "1"
    t0 = time.monotonic()
    port = _free_port()
    config = Path(report["log"]).with_name("autoscaler.json")
    autoscaling_config(config, head_cpus=2, port=port)
    head_args = {
        "num_cpus": 2,
        "gcs_server_port": port,
        "include_dashboard": False,
        "autoscaling_config": str(config),
    }
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    procs: list[subprocess.Popen] = []
    try:
        address = cluster.address
        import ray

        ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
        report["workers_at_start"] = len(worker_nodes())
        report["cluster_start_s"] = round(time.monotonic() - t0, 1)
        log = Path(report["log"])
        grid = start_grid(study, storage, address, log)
        procs.append(grid)
        seen: dict[str, dict[str, float]] = {}
        added_at = None
        while grid.poll() is None:
            for n in worker_nodes():
                if n["id"] not in seen and added_at is None:
                    added_at = round(time.monotonic() - t0, 1)
                seen.setdefault(n["id"], n["resources"])
            launched = [n for n in ray.nodes() if "node:__internal_head__" not in n["Resources"]]
            if len(launched) > 4:  # max_workers is 2: the autoscaler is replacing failed launches
                raise RuntimeError(f"the autoscaler launched {len(launched)} nodes (max_workers 2)")
            if time.monotonic() - t0 > 600:
                raise TimeoutError("the grid did not finish within 600 s")
            time.sleep(1.0)
        report["grid_rc"] = grid.returncode
        report["grid_s"] = round(time.monotonic() - t0, 1)
        report["first_node_added_s"] = added_at
        report["nodes_added"] = len(seen)
        report["added_node_resources"] = [
            sorted([k, v] for k, v in r.items() if k in ("CPU", RESOURCE)) for r in seen.values()
        ]
        # Idle nodes go back after idle_timeout_minutes (6 s here).
        try:
            wait(lambda: not worker_nodes(), 90, "idle nodes to be removed", every=2.0)
            report["idle_removed_s"] = round(time.monotonic() - t0, 1)
        except TimeoutError as exc:
            report["idle_removed_s"] = None
            report["idle_error"] = str(exc)
        report["workers_at_end"] = len(worker_nodes())
        report["total_s"] = round(time.monotonic() - t0, 1)
    finally:
        for proc in procs:
            stop(proc)
        import ray

        ray.shutdown()
        # Nodes the fake provider started are the monitor's children: end the ones still up.
        from ray._private import ray_constants

        monitor = cluster.head_node.all_processes[ray_constants.PROCESS_TYPE_MONITOR][0].process.pid
        leftovers = descendants(monitor)
        cluster.shutdown()
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("drill", choices=["node-loss", "autoscale"])
    p.add_argument("--study", required=True)
    p.add_argument("--storage", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--out", required=True, help="JSON report")
    args = p.parse_args(argv)
    temp = drill_env()
    report: dict[str, Any] = {"log": str(Path(args.out).with_suffix(".log"))}
    try:
        {"node-loss": node_loss, "autoscale": autoscale}[args.drill](
            args.study, args.storage, args.experiment, report
        )
    except Exception as exc:  # the report says what went wrong; the test shows it
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        import shutil

        shutil.rmtree(temp, ignore_errors=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 1 if "error" in report else 0


if __name__ == "__main__":
    sys.exit(main())
