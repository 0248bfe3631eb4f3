"""Pre-flight: what a study's trials will read and write, checked where they will run, before
the Tuner starts (``raybench preflight STUDY``; ``raybench run`` / ``run_grid.py`` run it
first, ``--skip-preflight`` skips it). docs/preflight.md lists every check.

Why: on a cluster the first sign of a gated model without ``HF_TOKEN``, a dataset that exists
only on the driver, a corrupt image or a bucket the workers cannot write is otherwise a trial
that dies after GPUs were requested. Every check runs, every problem is reported at once:

- each dataset: root present, both splits indexed (annotations parsed, every target checked),
  split counts next to Table 1's (paper datasets), a sample of images decoded and their
  targets' labels inside the class map (:mod:`~raybench.preflight.checks`);
- each backbone: a ``weights:`` file fits the model (``raybench.backbones.check_weights``); a
  hub id (``pretrained: true``) answers with the credentials the workers will have: a gated or
  missing repo names the model page and ``HF_TOKEN`` (:mod:`~raybench.preflight.hub`);
- storage: a probe object written, read back and deleted (``raybench.probe``);
- W&B: a key, if any, is accepted (else the offline notice).

Where: on this machine, unless the sweep joined a Ray cluster and a dataset root or weights
file is not visible here; then the checks run as one Ray task (1 CPU, no GPU) on a node of the
worker type, with the environment the workers get (``raybench.sweep.trainable.forwarded_env``;
:mod:`~raybench.preflight.runner`). The report (:mod:`~raybench.preflight.report`) is logged;
a failing one is the message of the :class:`PreflightError` raised before any trial starts.
"""

from raybench.preflight.checks import (
    check_backbone_weights,
    check_dataset_data,
    check_storage_access,
    check_wandb,
)
from raybench.preflight.hub import check_hub_access
from raybench.preflight.report import Finding, PreflightError, PreflightReport
from raybench.preflight.runner import SAMPLE_IMAGES, not_visible_here, preflight, run_checks, run_remote

__all__ = [
    "SAMPLE_IMAGES",
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
