"""Pretrained weights from the timm / Hugging Face hub, fetched once per node: N DDP workers on
one node share one download through a lock in the Hugging Face cache."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from timm.models import get_pretrained_cfg, load_state_dict_from_hf

from raybench.backbones.weights import BackboneWeightsError, as_state_dict
from raybench.study.spec import BackboneSpec

log = logging.getLogger(__name__)

#: How long a process waits for another one on its node to finish downloading the same weights.
DOWNLOAD_LOCK_TIMEOUT_S = 3600.0


def download_lock_path(source: str) -> Path:
    """The lock file of one weights source (``hf-hub:timm/...`` or a URL) in the Hugging Face
    cache (``HF_HOME`` / ``HF_HUB_CACHE``), which every process of a node shares."""
    from huggingface_hub import constants

    name = re.sub(r"[^A-Za-z0-9_.-]+", "--", source).strip("-")[:150]
    return Path(constants.HF_HUB_CACHE) / ".locks" / f"raybench--{name}.lock"


@contextmanager
def download_lock(source: str, timeout_s: float = DOWNLOAD_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the node-wide lock of ``source`` while fetching it: N DDP workers on one node do not
    download (or race on) the same checkpoint; the first fetches it into the cache, the others
    wait here and then read it from the cache. Without a writable cache folder: no lock (each
    process fetches, as before). The lock is an OS file lock: a process that dies releases it."""
    from filelock import FileLock, Timeout

    path = download_lock_path(source)
    lock: FileLock | None = FileLock(str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process on this node to download %s", source)
        try:
            lock.acquire(timeout=timeout_s)
        except Timeout:
            raise BackboneWeightsError(
                f"waited {timeout_s:g} s for another process on this node to download {source} "
                f"(lock {path}); if no download is running, delete that file"
            ) from None
    except OSError:  # a read-only cache: nothing to share, nothing to lock
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _hub_state_dict(spec: BackboneSpec, timm_id: str) -> tuple[dict[str, torch.Tensor], str]:
    """The hub's state dict of ``timm_id`` (as timm would fetch it) and where it came from."""
    cfg = get_pretrained_cfg(timm_id)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    url = getattr(cfg, "url", None) if cfg is not None else None
    source = f"hf-hub:{hub_id}" if hub_id else (url or f"hf-hub:timm/{timm_id}")
    try:
        with download_lock(source):  # one download per node, however many workers ask
            if hub_id:
                filename = getattr(cfg, "hf_hub_filename", None)
                state: Any = (
                    load_state_dict_from_hf(hub_id, filename) if filename else load_state_dict_from_hf(hub_id)
                )
            elif url:
                state = torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
            else:
                raise RuntimeError(f"timm has no pretrained weights for {timm_id!r}")
    except Exception as exc:  # noqa: BLE001 -- network / cache / format errors: all mean "no weights"
        raise BackboneWeightsError(
            f"could not load pretrained weights for backbone {spec.id!r} "
            f"(timm model {timm_id!r}, hub id {source!r}): {type(exc).__name__}: {exc}\n"
            f"Either give the machine access to the Hugging Face hub, or download the weights "
            f"elsewhere and set `weights: /path/to/model.safetensors` on this backbone in the "
            f"study file (or `pretrained: false` for random init, e.g. smoke tests)."
        ) from exc
    where = f"pretrained weights {source}"
    return as_state_dict(state, f"backbone {spec.id!r}: {where}"), where
