"""The checks of one dataset, backbone, storage location and W&B: each adds its findings to
the report and never raises for what it finds."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from raybench.errors import UserInputError
from raybench.preflight.hub import HUB_TIMEOUT_S, check_hub_access
from raybench.preflight.report import PreflightReport
from raybench.study.spec import BackboneSpec, DatasetSpec


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
    from raybench.data.check import check_dataset_files

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = check_dataset_files(dataset.format, root, dict(dataset.options), max_images=sample)
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


def check_storage_access(location: str, report: PreflightReport) -> None:
    """A probe object under ``location`` is written, read back and deleted (``raybench.probe``)."""
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
