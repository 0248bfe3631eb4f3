"""The environment the Train workers get from the sweep driver, and how it travels.

Workers run on other nodes, started by Ray: what they need from the user's shell (W&B mode and
key, the Hugging Face token and hub settings, S3 endpoint and credentials, the failure drills)
is taken from the driver's environment at launch. Plain settings travel in the workers'
``runtime_env``; secrets travel as a Ray object (in memory), because Ray writes the
``runtime_env`` to its runtime_env_agent.log and the Train run state.
"""

from __future__ import annotations

import os

from raybench.sweep.drills import FAULT_ENV, NAN_ENV

#: Hugging Face settings the workers get from the driver: the token for gated weights
#: (DINOv3), another endpoint (a mirror), offline mode, the cache folder.
HF_ENV = ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HOME")
#: Forwarded variables that are secrets: they travel as a Ray object (in memory), not in the
#: workers' runtime_env, which Ray writes to its runtime_env_agent.log and the Train run state.
SECRET_ENV = ("HF_TOKEN", "WANDB_API_KEY")

#: The variables :func:`forwarded_env` passes on (names; the values stay in memory).
FORWARDED_ENV = (
    "WANDB_MODE",
    "WANDB_API_KEY",
    "WANDB_PROJECT",
    "WANDB_ENTITY",
    *HF_ENV,
    "RAYBENCH_WANDB_DIR",
    FAULT_ENV,
    NAN_ENV,
    "RAYBENCH_BATCH_TRACE",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)


def forwarded_env() -> dict[str, str]:
    """Environment the workers need (W&B mode/key, Hugging Face token and hub settings, S3
    endpoint), taken from the sweep driver's environment at launch; values travel in memory
    (the Ray runtime_env of the Train workers), never into a file."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def split_secrets(env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``(plain, secrets)`` of a forwarded environment (:data:`SECRET_ENV`)."""
    return (
        {k: v for k, v in env.items() if k not in SECRET_ENV},
        {k: v for k, v in env.items() if k in SECRET_ENV},
    )


__all__ = ["FORWARDED_ENV", "HF_ENV", "SECRET_ENV", "forwarded_env", "split_secrets"]
