"""Run a study's trials as a Ray Tune experiment of Ray Train jobs (the only place Ray is used).

Tune enumerates the trial specs (a grid over their names); each Tune trial is a function
trainable that launches one ``TorchTrainer``. Resume: ``Tuner.restore`` continues unfinished
and errored trials, each from its own Train run's last checkpoint; with ``restart_errored``
the errored ones lose their Train run (checkpoints) first, so they start at iteration 0.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from raybench.results.store import read_status_of
from raybench.storage import is_uri, ray_storage
from raybench.study import Study, TrialSpec
from raybench.sweep import console
from raybench.sweep.layout import ExperimentLayout, check_storage
from raybench.sweep.placement import driver_resources, head_slots
from raybench.sweep.restart import errored_trials, reset_trials
from raybench.sweep.trainable import TRIAL_KEY, dumps_specs, forwarded_env, run_trial

#: How the sweep got its Ray: started here (``local``), joined a running cluster
#: (``joined``: an address, RAY_ADDRESS or ``auto``), or found it initialised by the caller.
RayMode = Literal["local", "joined", "caller"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepOptions:
    """How to run the sweep (not part of the study: the same study runs anywhere)."""

    storage: str = "runs"
    experiment: str | None = None
    resume: bool = False
    restart_errored: bool = False
    only: str | None = None
    address: str | None = None
    num_cpus: int | None = None
    trial_retries: int = 1
    worker_retries: int = 2
    driver_cpus: float | None = None  # None: the study's scaling.driver_cpus
    no_report: bool = False  # the CLI's --no-report: the sweep ignores it, the resume command keeps it
    skip_preflight: bool = False  # the CLI's --skip-preflight (raybench.preflight)
    preflight_remote: bool | None = None  # None: on a worker node when joined and data is not visible here
    verbosity: int = console.DEFAULT  # 0: -q, 1: default, 2: --verbose (raybench.sweep.console)


def connect(options: SweepOptions) -> RayMode:
    """Join a running cluster (RAY_ADDRESS / --address / a local one) or start local Ray.

    Returns how Ray was reached; it decides how concurrency is chosen (:func:`max_concurrency`).
    Worker output reaches this console only with ``--verbose`` (:mod:`raybench.sweep.console`).
    """
    import ray

    if ray.is_initialized():
        return "joined" if options.address else "caller"
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Train's controller polls workers at this period; 2 s dominates toy trials.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    quiet = console.ray_init_kwargs(options.verbosity)
    address = options.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **quiet)
        return "joined"
    if options.num_cpus is None:  # an explicit --num-cpus means "a local Ray of that size"
        try:
            ray.init(address="auto", **quiet)  # a cluster started with `ray start` / `ray up` on this node
            return "joined"
        except (ConnectionError, RuntimeError, ValueError):
            pass
    # Local Ray: the dashboard stays off (nothing listens beyond localhost by default).
    ray.init(num_cpus=options.num_cpus, include_dashboard=False, configure_logging=False, **quiet)
    return "local"


def max_concurrency(
    trials: list[TrialSpec],
    driver_cpus: float,
    study_cap: int | None,
    mode: RayMode = "local",
    resources: Mapping[str, float] | None = None,
    head_cpus: float | None = None,
) -> tuple[int | None, str]:
    """``(max concurrent trials or None for no cap, why)``.

    Each trial costs ``driver_cpus`` + its workers' resources. Train V2 schedules its workers
    outside the Tune trial's resources, so Tune alone would start one driver per free CPU and
    starve the workers (their group start times out); the cap prevents that.

    - The study's ``scaling.max_concurrent_trials`` always wins.
    - A joined cluster (``--address``, ``RAY_ADDRESS``, ``auto``) whose trials need GPUs (or a
      ``scaling.resources_per_worker`` resource) but which has none yet is an autoscaling
      cluster starting from zero: no cap (trials wait pending and the autoscaler adds nodes).
    - Otherwise (a local Ray, or a joined cluster as it is now): what fits in the current
      resources. An autoscaling cluster grows only for pending trials, so a study that wants
      more at once than the nodes already up sets ``max_concurrent_trials``.
    - ``head_cpus`` (the drivers are pinned to the head node, :mod:`raybench.sweep.placement`):
      never more trials than drivers fit there.
    """
    if study_cap and mode == "joined":
        return study_cap, f"joined cluster: the study's scaling.max_concurrent_trials = {study_cap}"
    s = trials[0].scaling
    if resources is None:
        import ray

        resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    needs_gpu = s.use_gpu and s.gpus_per_worker > 0
    # scaling.resources_per_worker (e.g. a custom resource only GPU nodes carry) count like GPUs
    extra = {k: s.workers * float(v) for k, v in s.resources_per_worker.items()}
    absent = (["GPU"] if needs_gpu and gpus == 0 else []) + [k for k in extra if not resources.get(k)]
    slots = head_slots(head_cpus, driver_cpus)
    on_head = f"trial drivers run on the head node: {slots} fit in its {_count(head_cpus or 0, 'CPU')}"
    if mode == "joined" and absent:
        if slots is not None and slots < len(trials):
            return slots, f"joined cluster with no {' / '.join(absent)} yet: {on_head}"
        return None, (
            f"joined cluster with no {' / '.join(absent)} yet: no cap (trials wait until their resources "
            "exist; an autoscaler adds nodes for them); set scaling.max_concurrent_trials in the study to cap"
        )
    per_cpu = driver_cpus + s.workers * s.cpus_per_worker
    fits = math.floor(cpus / per_cpu + 1e-9) if cpus and per_cpu > 0 else len(trials)
    what = _count(per_cpu, "CPU")
    if needs_gpu:
        per_gpu = s.workers * s.gpus_per_worker
        fits = min(fits, math.floor(gpus / per_gpu + 1e-9))
        what += f" + {_count(per_gpu, 'GPU')}"
    for k, need in extra.items():
        fits = min(fits, math.floor(float(resources.get(k, 0.0)) / need + 1e-9))
        what += f" + {need:g} {k}"
    who = {
        "local": "local Ray started by raybench",
        "caller": "the Ray this process started",
        "joined": "joined cluster, as it is now",
    }[mode]
    reason = f"{who} ({_count(cpus, 'CPU')}, {_count(gpus, 'GPU')}), each trial takes {what}"
    if mode == "joined":
        reason += (
            " (an autoscaler grows it only for pending trials: set scaling.max_concurrent_trials to run more)"
        )
    if fits < 1:
        reason += "; not even one trial fits: they will wait for resources that never come"
        fits = 1
    if slots is not None and slots < fits:
        fits, reason = slots, f"{reason}; {on_head}"
    if study_cap and study_cap < fits:
        return study_cap, f"{reason}; capped by the study's scaling.max_concurrent_trials = {study_cap}"
    return fits, reason


def _count(n: float, unit: str) -> str:
    return f"{n:g} {unit}" + ("" if n == 1 else "s")


def prepare_synthetic(trials: list[TrialSpec]) -> None:
    """Write the synthetic datasets the study asks for (smoke runs) before any trial starts;
    a synthetic copy written earlier with other parameters is replaced."""
    from raybench.data.synth import ensure_synthetic

    done: set[str] = set()
    for t in trials:
        d = t.dataset
        if d.synthetic is None or d.root in done or is_uri(d.root):
            continue
        done.add(d.root)
        if ensure_synthetic(d.root, d.format, d.synthetic):
            log.info("wrote synthetic %s (%d images) to %s", d.format, d.synthetic.images, d.root)


def run_study(study: Study, options: SweepOptions) -> dict[str, Any]:
    """Run (or resume) the study's sweep; returns per-trial final state and metrics.

    Before Ray starts: the trial selection and the storage (written, read back, deleted: a
    read-only folder or an unreachable bucket fails here with its path, not inside Tune).
    Its messages go to stdout at ``options.verbosity`` (:mod:`raybench.sweep.console`).
    """
    with console.console_output(options.verbosity):
        return _run_study(study, options)


def _run_study(study: Study, options: SweepOptions) -> dict[str, Any]:
    trials = study.select(options.only)
    driver_cpus = study.scaling.driver_cpus if options.driver_cpus is None else options.driver_cpus
    layout = ExperimentLayout.create(options.storage, options.experiment or study.name)
    # Pre-flight (raybench.preflight) before Ray when this machine sees every dataset root and
    # weights file: storage, data, weights, hub and W&B in one report. Otherwise storage first
    # (as without pre-flight), the rest once Ray is up: on a worker node of a joined cluster.
    preflight_now = not options.skip_preflight and options.preflight_remote is not True
    if preflight_now:
        from raybench.preflight import not_visible_here

        preflight_now = not not_visible_here(study, list(study.trials) if options.resume else trials)
    if preflight_now:
        from raybench.preflight import preflight

        joined = bool(options.address or os.environ.get("RAY_ADDRESS"))
        preflight(
            study,
            list(study.trials) if options.resume else trials,
            layout.root,
            mode="joined" if joined else "local",
        )
    else:
        check_storage(layout.root)

    from ray import tune

    from raybench.sweep.events import TrialEvents

    storage_path, storage_fs = ray_storage(layout.storage)
    root_path, _ = ray_storage(layout.root)
    restoring = options.resume and tune.Tuner.can_restore(root_path, storage_filesystem=storage_fs)
    if restoring and options.only:
        log.warning(
            "warning: --only %r is ignored with --resume: the experiment restores the trials it "
            "started with (use --experiment NAME for a separate subset)",
            options.only,
        )
    if options.restart_errored and not restoring:
        log.warning("warning: --restart-errored does nothing without an experiment to --resume")
    prepare_synthetic(list(study.trials) if restoring else trials)
    mode = connect(options)
    if not options.skip_preflight and not preflight_now:  # before the Tuner: no GPU requested yet
        from raybench.preflight import preflight

        preflight(
            study,
            list(study.trials) if restoring else trials,
            layout.root,
            mode=mode,
            remote=options.preflight_remote,
        )
    settings = {
        "layout": {"storage": layout.storage, "name": layout.name},
        "worker_retries": options.worker_retries,
        "env": forwarded_env(),
        "session": uuid.uuid4().hex,  # this run_study call (a Tune retry shares it, a resume does not)
    }
    driver, head_cpus = driver_resources(driver_cpus)  # on the head node when it can host them
    trainable = tune.with_resources(
        # Every spec of the study: a restored experiment may hold trials outside --only.
        tune.with_parameters(run_trial, specs=dumps_specs(list(study.trials)), settings=settings),
        driver,
    )
    resume_cmd = resume_command(study, options, layout)
    log.info("experiment %s: %d trials", layout.root, len(trials))
    log.info("resume after any failure with: %s", resume_cmd, extra={"always": True})
    logs = console.ray_logs_dir()
    if logs and options.verbosity < console.VERBOSE:
        where = " (this node's; every node keeps its own)" if mode == "joined" else ""
        log.info(
            "trial output and Ray's own messages: log files in %s%s (--verbose shows them here)", logs, where
        )

    if restoring:
        log.info(
            "concurrency and trial retries: as when the experiment started "
            "(Tune restores its TuneConfig and RunConfig)"
        )
        if options.restart_errored:
            errored = errored_trials(root_path, storage_fs)
            reset, kept = reset_trials(layout, errored)
            if reset:
                log.info("--restart-errored: starting fresh (iteration 0): %s", ", ".join(reset))
            else:
                log.info("--restart-errored: no errored trial to restart")
            if kept:
                log.info("--restart-errored: already finished, kept: %s", ", ".join(kept))
        tuner = tune.Tuner.restore(
            root_path,
            trainable=trainable,
            storage_filesystem=storage_fs,
            resume_unfinished=True,
            resume_errored=not options.restart_errored,
            restart_errored=options.restart_errored,
        )
    else:
        if options.resume:
            log.info("nothing to resume at %s; starting it", layout.root)
        concurrency, why = max_concurrency(
            trials, driver_cpus, study.scaling.max_concurrent_trials, mode, head_cpus=head_cpus
        )
        log.info("concurrency: %s -- %s", concurrency or "no cap", why)
        tuner = tune.Tuner(
            trainable,
            param_space={TRIAL_KEY: tune.grid_search([t.name for t in trials])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=concurrency,
                reuse_actors=True,
                trial_name_creator=lambda t: t.config[TRIAL_KEY],
                trial_dirname_creator=lambda t: t.config[TRIAL_KEY],
            ),
            run_config=tune.RunConfig(
                name=layout.name,
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                failure_config=tune.FailureConfig(max_failures=options.trial_retries),
                # Tune's own output only with --verbose; TrialEvents prints the status table
                # and the trial events. (A restored experiment keeps the verbose and the
                # callbacks it started with; TrialEvents then reports for this run.)
                verbose=console.tune_verbose(options.verbosity),
                callbacks=[TrialEvents()],
            ),
        )
    every = list(study.trials)
    with (
        console.tune_output(options.verbosity),
        console.ray_driver_messages(options.verbosity),
        console.activate(
            metric={t.name: t.dataset.headline_metric for t in every},
            iterations={t.name: t.recipe.schedule.iterations for t in every},
            status_of=lambda name: read_status_of(layout.trial_dir(name)),
            verbosity=options.verbosity,
        ),
    ):
        grid = tuner.fit()
    summary: dict[str, Any] = {}
    for result in grid:
        name = (result.config or {}).get(TRIAL_KEY, "?")
        summary[name] = {
            "error": repr(result.error) if result.error else None,
            "metrics": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))},
        }
    failed = [n for n, s in summary.items() if s["error"]]
    always = {"always": True}
    log.info(
        "done: %d finished, %d failed; results in %s",
        len(summary) - len(failed),
        len(failed),
        layout.root,
        extra=always,
    )
    if failed:
        log.warning("failed: %s", ", ".join(sorted(failed)))
    log.info("resume with: %s", resume_cmd, extra=always)
    return summary


def resume_command(study: Study, options: SweepOptions, layout: ExperimentLayout) -> str:
    """The command that resumes this run: every option given that shapes the run, ``--resume``.

    ``--only`` is left out (a restored experiment keeps the trials it started with) and
    ``--restart-errored`` too (a one-off decision for the next resume).
    """
    defaults = SweepOptions()
    parts = ["python", "experiments/run_grid.py", "--study", study.source, "--storage", layout.storage]
    if options.experiment:
        parts += ["--experiment", options.experiment]
    for field in ("address", "num_cpus", "driver_cpus", "worker_retries", "trial_retries"):
        value = getattr(options, field)
        if value is not None and value != getattr(defaults, field):
            text = f"{value:g}" if isinstance(value, float) else str(value)
            parts += [f"--{field.replace('_', '-')}", text]
    if options.no_report:
        parts.append("--no-report")
    return shlex.join([*parts, "--resume"])


__all__ = [
    "SweepOptions",
    "connect",
    "errored_trials",
    "is_uri",
    "max_concurrency",
    "reset_trials",
    "resume_command",
    "run_study",
]
