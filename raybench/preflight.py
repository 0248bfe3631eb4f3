"""Pre-flight: what a study's trials will read and write, checked where they will run, before
the Tuner starts (``raybench preflight STUDY``; ``raybench run`` / ``run_grid.py`` run it
first, ``--skip-preflight`` skips it).

Why: on a cluster the first sign of a gated model without ``HF_TOKEN``, a dataset that exists
only on the driver, a corrupt image or a bucket the workers cannot write is otherwise a trial
that dies after GPUs were requested. Every check runs, every problem is reported at once:

- each dataset: root present, both splits indexed (annotations parsed, every target checked),
  split counts next to Table 1's (paper datasets), a sample of images decoded and their
  targets' labels inside the class map;
- each backbone: a ``weights:`` file fits the model (``raybench.backbones.check_weights``); a
  hub id (``pretrained: true``) answers with the credentials the workers will have: a gated or
  missing repo names the model page and ``HF_TOKEN``;
- storage: a probe object written, read back and deleted (``raybench.probe``);
- W&B: a key, if any, is accepted (else the offline notice).

Where: on this machine, unless the sweep joined a Ray cluster and a dataset root or weights
file is not visible here; then the checks run as one Ray task (1 CPU, no GPU) on a node of the
worker type, with the environment the workers get (``raybench.sweep.trainable.forwarded_env``).
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from raybench.errors import UserInputError
from raybench.study import Study, TrialSpec
from raybench.study.spec import BackboneSpec, DatasetSpec

#: Images decoded per split (the first ones of the index); the index itself covers every
#: annotation of the split.
SAMPLE_IMAGES = 8
#: How long the remote pre-flight may wait for a node and run (an autoscaler may add one first).
REMOTE_TIMEOUT_S = 900.0
#: Hub answers (one HEAD request per weights file).
HUB_TIMEOUT_S = 15.0
#: Weights files timm fetches for a hub id: the safetensors file, else the PyTorch one.
HUB_FILES = ("model.safetensors", "pytorch_model.bin")

Status = Literal["ok", "note", "FAIL"]


class PreflightError(UserInputError):
    """Pre-flight found problems: the message is the whole report."""


@dataclass
class Finding:
    status: Status
    what: str  # "datasets[0] gdxray", "backbones[1] convnext_t-dinov3", "storage", "W&B"
    message: str


@dataclass
class PreflightReport:
    """The findings of one pre-flight run and where it ran."""

    study: str
    where: str
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "FAIL"]

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, status: Status, what: str, message: str) -> None:
        self.findings.append(Finding(status, what, message))

    def format(self) -> str:
        lines = [f"pre-flight of study {self.study} on {self.where} ({self.seconds:.1f} s):"]
        for f in self.findings:
            lines.append(f"  {f.status:<4}  {f.what}: {f.message}")
        n = len(self.problems)
        if n:
            lines.append(
                f"{n} problem(s); no trial was started. Fix them (docs/preflight.md), or skip these "
                "checks with --skip-preflight."
            )
        else:
            lines.append("pre-flight passed.")
        return "\n".join(lines)


# --- datasets -------------------------------------------------------------------------------
def check_dataset_data(dataset: DatasetSpec, what: str, report: PreflightReport, sample: int) -> None:
    """Root, both splits' index, counts vs Table 1, ``sample`` images decoded, labels in the map."""
    if "://" in dataset.root:
        report.add(
            "note", what, f"root {dataset.root} is a URI: not checked (the loaders read local folders)"
        )
        return
    root = Path(dataset.root)
    if not root.exists():
        if dataset.synthetic is not None:
            report.add("note", what, f"synthetic data, written to {root} when the run starts")
        else:
            report.add("FAIL", what, f"dataset root not found: {root} (on {report.where})")
        return
    if not root.is_dir():
        report.add("FAIL", what, f"dataset root is not a folder: {root}")
        return
    from raybench.data.check import check_dataset

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = check_dataset(dataset.format, root, dict(dataset.options), max_images=sample)
    except IndexError as exc:  # data.check indexes class names by label
        report.add("FAIL", what, f"{root}: a target holds a label outside the class map ({exc})")
        return
    except Exception as exc:  # noqa: BLE001 - whatever a loader raises is the user's to see
        report.add("FAIL", what, f"{root}: {type(exc).__name__}: {exc}")
        return
    for fatal in result.fatal:
        report.add("FAIL", what, fatal)
    for split, rep in result.splits.items():
        if rep.unreadable:
            files = "; ".join(rep.unreadable_files[:3])
            text = f"{split}: {rep.unreadable} of {rep.checked} sampled image(s) cannot be decoded: {files}"
            if dataset.options.get("skip_unreadable") is True:
                report.add("note", what, text + " (skipped: options.skip_unreadable is true)")
            else:
                report.add(
                    "FAIL",
                    what,
                    text + "; a trial would skip them and train on fewer images than planned: fix or "
                    "remove them, or set options.skip_unreadable: true to accept that",
                )
    if result.fatal:
        return
    found = result.found_sizes()
    counts = f"train {found['train']}, val {found['val']}"
    if result.paper_sizes:
        paper = f"Table 1: train {result.paper_sizes['train']}, val {result.paper_sizes['val']}"
        counts += f" (= {paper})" if not result.paper_mismatch() else f" (differs from {paper})"
    decoded = sum(r.readable for r in result.splits.values())
    report.add("ok", what, f"{root}: {counts}; {decoded} sampled images decoded, labels in the class map")


# --- backbones ------------------------------------------------------------------------------
def _hub_source(spec: BackboneSpec) -> tuple[str | None, str | None]:
    """(hub repo id, URL) timm fetches the entry's pretrained weights from."""
    from timm.models import get_pretrained_cfg

    from raybench.backbones import resolve_timm_name

    cfg = get_pretrained_cfg(resolve_timm_name(spec))
    if cfg is None:
        return None, None
    return getattr(cfg, "hf_hub_id", None), getattr(cfg, "url", None)


def _hub_problem(repo: str, exc: BaseException, token_set: bool) -> str:
    """A clear message for a failed hub request."""
    from huggingface_hub import errors

    page = f"https://huggingface.co/{repo}"
    token = "HF_TOKEN is set" if token_set else "HF_TOKEN is not set"
    how = (
        "pass a read token (https://huggingface.co/settings/tokens) to the workers as HF_TOKEN "
        "(the environment of run_grid.py / raybench run, or ray job submit --runtime-env-json "
        '\'{"env_vars": {"HF_TOKEN": "..."}}\')'
    )
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, errors.GatedRepoError):
        return (
            f"hf-hub:{repo} is gated ({token}): accept its licence on the model page {page} with "
            f"your Hugging Face account, then {how}"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return (
            f"hf-hub:{repo} was not found or is private ({token}); check the model page {page} "
            f"and the backbone's timm_name; a private repo needs HF_TOKEN: {how}"
        )
    local = isinstance(exc, errors.LocalEntryNotFoundError)  # also an EntryNotFoundError: offline
    if isinstance(exc, errors.EntryNotFoundError) and not local:
        return f"hf-hub:{repo} has no weights file ({', '.join(HUB_FILES)}); see {page}"
    if status in (401, 403):
        return (
            f"hf-hub:{repo}: the hub refused the request ({status}; {token}): the token is invalid, "
            f"expired or lacks access to {page}; {how}"
        )
    offline = isinstance(exc, (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError))
    offline = offline or isinstance(exc, (ConnectionError, TimeoutError, OSError)) and status is None
    if offline:
        return (
            f"hf-hub:{repo} cannot be reached ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "give the workers access to the hub (or HF_ENDPOINT for a mirror), or download the weights "
            "elsewhere and set `weights: /path/to/model.safetensors` on this backbone"
        )
    return f"hf-hub:{repo}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]} (model page {page})"


def check_hub_access(spec: BackboneSpec, what: str, report: PreflightReport, env_token_only: bool) -> None:
    """The entry's hub weights answer with the workers' credentials (a HEAD request, no
    download). ``env_token_only``: count only ``HF_TOKEN`` (what reaches the workers of a
    cluster), not this machine's ``huggingface-cli login`` token file."""
    import huggingface_hub as hf

    repo, url = _hub_source(spec)
    if repo is None:
        where = url or "nowhere (timm has no pretrained weights for it)"
        status: Status = "note" if url else "FAIL"
        report.add(status, what, f"pretrained weights come from {where}: not checked")
        return
    token_env = os.environ.get("HF_TOKEN") or None
    token: str | bool | None = token_env if (token_env or not env_token_only) else False
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        cached = [f for f in HUB_FILES if isinstance(hf.try_to_load_from_cache(repo, f), str)]
        if cached:
            report.add("ok", what, f"hf-hub:{repo} is in the cache ({cached[0]}; HF_HUB_OFFLINE is set)")
        else:
            report.add(
                "FAIL",
                what,
                f"HF_HUB_OFFLINE is set and hf-hub:{repo} is not in the cache {hf.constants.HF_HUB_CACHE} "
                f"(on {report.where}); unset HF_HUB_OFFLINE, or fill the cache first, or set `weights:`",
            )
        return
    last: BaseException | None = None
    for filename in HUB_FILES:
        try:
            hf.get_hf_file_metadata(hf.hf_hub_url(repo, filename), token=token, timeout=HUB_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - mapped to a message below
            last = exc
            missing = isinstance(exc, hf.errors.EntryNotFoundError)
            if missing and not isinstance(exc, hf.errors.LocalEntryNotFoundError):
                continue  # try the other file, as timm does
            break
        else:
            who = "with HF_TOKEN" if token_env else "without a token"
            report.add("ok", what, f"hf-hub:{repo} ({filename}) is reachable {who}")
            return
    assert last is not None
    report.add("FAIL", what, _hub_problem(repo, last, bool(token_env)))


def check_backbone_weights(
    spec: BackboneSpec, what: str, report: PreflightReport, env_token_only: bool = False
) -> None:
    """A ``weights:`` file fits the model; else hub weights are reachable; else random init."""
    if spec.weights:
        if "://" in spec.weights:
            report.add("note", what, f"weights {spec.weights} is a URI: not checked")
            return
        from raybench.backbones import check_weights

        try:
            check_weights(spec)
        except Exception as exc:  # noqa: BLE001 - BackboneWeightsError, or what reading raised
            report.add("FAIL", what, str(exc))
            return
        report.add("ok", what, f"weights file {spec.weights} fits {spec.timm_name}")
        return
    if not spec.pretrained:
        report.add("ok", what, "random init (pretrained: false)")
        return
    check_hub_access(spec, what, report, env_token_only)


# --- storage and W&B ------------------------------------------------------------------------
def check_storage_access(location: str, report: PreflightReport) -> None:
    from raybench.probe import check_storage

    try:
        check_storage(location)
    except UserInputError as exc:
        report.add("FAIL", "storage", str(exc))
        return
    report.add("ok", "storage", f"{location}: probe object written, read back and deleted")


def check_wandb(report: PreflightReport) -> None:
    """With a key (``WANDB_API_KEY``): W&B accepts it; without: the offline notice."""
    from raybench.tracking import wandb_mode

    mode = wandb_mode()
    key = os.environ.get("WANDB_API_KEY")
    if mode == "disabled":
        report.add("note", "W&B", "disabled (WANDB_MODE=disabled)")
        return
    if mode == "offline" or not key:
        why = "WANDB_MODE=offline" if os.environ.get("WANDB_MODE") == "offline" else "no WANDB_API_KEY"
        report.add(
            "note",
            "W&B",
            f"offline ({why}): each trial writes its run under <experiment>/wandb/<trial>; "
            "upload later with `wandb sync`",
        )
        return
    try:
        import wandb

        viewer = wandb.Api(api_key=key, timeout=int(HUB_TIMEOUT_S)).viewer
        user = getattr(viewer, "username", None) or getattr(viewer, "entity", None) or "?"
    except Exception as exc:  # noqa: BLE001 - any refusal means the trials would log nowhere
        text = str(exc).splitlines()[0][:300] if str(exc) else ""
        report.add(
            "FAIL",
            "W&B",
            f"WANDB_API_KEY was not accepted ({type(exc).__name__}: {text}); check the key "
            "(https://wandb.ai/authorize), WANDB_BASE_URL, or unset it to log offline",
        )
        return
    report.add("ok", "W&B", f"WANDB_API_KEY accepted (user {user})")


# --- running the checks ---------------------------------------------------------------------
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
    """Run the checks where the trials will read from and print the report; raise
    :class:`PreflightError` (the report) if any fails.

    ``remote``: None decides: as a Ray task when the sweep joined a cluster (``mode``) and a
    dataset root or weights file is not visible on this machine; else here."""
    if remote is None:
        remote = mode == "joined" and bool(not_visible_here(study, trials))
    if remote:
        print(
            "[raybench] pre-flight: data or weights not visible here; checking on a worker node", flush=True
        )
        report = run_remote(study, trials, storage, sample=sample)
    else:
        report = run_checks(study, trials, storage, sample=sample, env_token_only=mode == "joined")
    if not report.ok:
        raise PreflightError(report.format())
    print(report.format(), flush=True)
    return report


__all__ = [
    "Finding",
    "PreflightError",
    "PreflightReport",
    "check_backbone_weights",
    "check_dataset_data",
    "check_hub_access",
    "check_storage_access",
    "check_wandb",
    "not_visible_here",
    "preflight",
    "run_checks",
    "run_remote",
]
