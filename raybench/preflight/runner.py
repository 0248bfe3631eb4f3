"""Running the checks: in this process, or as one Ray task on a node of the worker type (with
the environment the workers get) when a joined cluster's driver cannot see the data."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from raybench.preflight.checks import (
    check_backbone_weights,
    check_dataset_data,
    check_storage_access,
    check_wandb,
)
from raybench.preflight.report import PreflightError, PreflightReport
from raybench.study import Study, TrialSpec

log = logging.getLogger(__name__)

#: Images decoded per split (the first ones of the index); the index itself covers every
#: annotation of the split.
SAMPLE_IMAGES = 8
#: How long the remote pre-flight may wait for a node and run (an autoscaler may add one first).
REMOTE_TIMEOUT_S = 900.0


def _selected(study: Study, trials: Sequence[TrialSpec]) -> tuple[list[int], list[int]]:
    """Indices of the study's datasets and backbones that the selected trials use."""
    datasets = {t.dataset.id for t in trials}
    backbones = {t.backbone.id for t in trials}
    return (
        [i for i, d in enumerate(study.datasets) if d.id in datasets],
        [i for i, b in enumerate(study.backbones) if b.id in backbones],
    )


def run_checks(
    study: Study,
    trials: Sequence[TrialSpec],
    storage: str | None,
    *,
    sample: int = SAMPLE_IMAGES,
    env_token_only: bool = False,
    where: str | None = None,
) -> PreflightReport:
    """Every check, in this process; never raises for what it finds."""
    t0 = time.perf_counter()
    report = PreflightReport(study=f"{study.name!r} ({study.source})", where=where or _this_machine())
    datasets, backbones = _selected(study, trials)
    for i in datasets:
        d = study.datasets[i]
        check_dataset_data(d, f"datasets[{i}] {d.id}", report, sample)
    for i in backbones:
        b = study.backbones[i]
        check_backbone_weights(b, f"backbones[{i}] {b.id}", report, env_token_only)
    if storage is not None:
        check_storage_access(storage, report)
    check_wandb(report)
    report.seconds = time.perf_counter() - t0
    return report


def _this_machine() -> str:
    return f"this machine ({socket.gethostname()})"


def not_visible_here(study: Study, trials: Sequence[TrialSpec]) -> list[str]:
    """Dataset roots and weights files the selected trials read that this machine does not see
    (synthetic datasets are written at run start; URIs are not local)."""
    datasets, backbones = _selected(study, trials)
    missing = [
        study.datasets[i].root
        for i in datasets
        if study.datasets[i].synthetic is None
        and "://" not in study.datasets[i].root
        and not Path(study.datasets[i].root).exists()
    ]
    for i in backbones:
        w = study.backbones[i].weights
        if w and "://" not in w and not Path(w).exists():
            missing.append(w)
    return missing


def _remote_checks(
    study: Study, trials: list[TrialSpec], storage: str | None, sample: int, secrets: dict[str, str]
) -> PreflightReport:
    """The Ray task: every check on a worker node, with the workers' environment (the secrets
    come as an argument, as the Train workers get them, and are removed again after)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    where = f"Ray node {ray.util.get_node_ip_address()} ({socket.gethostname()}, node id {node[:12]})"
    before = {k: os.environ.get(k) for k in secrets}
    os.environ.update(secrets)
    try:
        return run_checks(study, trials, storage, sample=sample, env_token_only=False, where=where)
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _gpu_node() -> str | None:
    """An alive node with GPUs (to run on a node of the worker type without taking a GPU)."""
    import ray

    for node in ray.nodes():
        if node.get("Alive") and float(node.get("Resources", {}).get("GPU", 0)) > 0:
            return str(node["NodeID"])
    return None


def run_remote(
    study: Study, trials: Sequence[TrialSpec], storage: str | None, *, sample: int = SAMPLE_IMAGES
) -> PreflightReport:
    """The checks as one Ray task (1 CPU, no GPU) on a node of the worker type: one holding the
    study's ``scaling.resources_per_worker`` resources (a sliver of each), else an alive GPU
    node for a GPU study, else any node; with the environment the Train workers get."""
    import ray

    from raybench.sweep.trainable import forwarded_env, split_secrets

    env, secrets = split_secrets(forwarded_env())
    s = trials[0].scaling
    options: dict[str, Any] = {"num_cpus": 1, "max_retries": 0, "runtime_env": {"env_vars": env}}
    if s.resources_per_worker:
        options["resources"] = {k: min(0.001, float(v)) for k, v in s.resources_per_worker.items()}
    elif s.use_gpu:
        node = _gpu_node()
        if node is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
    task = ray.remote(_remote_checks).options(**options)
    ref = task.remote(study, list(trials), storage, sample, secrets)
    try:
        return ray.get(ref, timeout=REMOTE_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise PreflightError(
            f"pre-flight could not run on a worker node within {REMOTE_TIMEOUT_S:g} s (no node with "
            f"{options.get('resources') or '1 free CPU'} came up); check the cluster, or skip the checks "
            "with --skip-preflight"
        ) from None


def preflight(
    study: Study,
    trials: Sequence[TrialSpec],
    storage: str | None,
    *,
    mode: Literal["local", "joined", "caller"] = "local",
    sample: int = SAMPLE_IMAGES,
    remote: bool | None = None,
) -> PreflightReport:
    """Run the checks where the trials will read from and log the report (INFO: the console of
    ``raybench preflight`` / ``raybench run`` shows it); raise :class:`PreflightError` (the
    report) if any fails.

    ``remote``: None decides: as a Ray task when the sweep joined a cluster (``mode``) and a
    dataset root or weights file is not visible on this machine; else here."""
    if remote is None:
        remote = mode == "joined" and bool(not_visible_here(study, trials))
    if remote:
        log.info("pre-flight: data or weights not visible here; checking on a worker node")
        report = run_remote(study, trials, storage, sample=sample)
    else:
        report = run_checks(study, trials, storage, sample=sample, env_token_only=mode == "joined")
    if not report.ok:
        raise PreflightError(report.format())
    log.info("%s", report.format())
    return report
