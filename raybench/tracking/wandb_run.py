"""Weights & Biases tracking: one run per trial, logged from world rank 0 only.

(Re-exported by :mod:`raybench.tracking`; import from there.)

Why a wrapper around ``wandb``: W&B must never be the reason a trial dies (no key, no
network, a W&B outage), a retried trial must continue the *same* run (stable id, resume),
and Ray's ``setup_wandb`` does not detect rank under Train V2. Everything here degrades
to a one-line warning. Messages are log records (``raybench.tracking.wandb_run``); the
caller's console decides where they go.
"""

from __future__ import annotations

import hashlib
import json
import logging
import netrc
import os
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)


def run_id(experiment: str, trial: str, fresh_start: int = 0) -> str:
    """Stable W&B run id for (experiment, trial): a retry or restore resumes the same run.
    ``fresh_start`` counts ``--restart-errored`` restarts: a trial started over from iteration
    0 gets a new run (W&B would drop the steps the old run already logged)."""
    key = f"{experiment}/{trial}" + (f"#{fresh_start}" if fresh_start else "")
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _netrc_has_key() -> bool:
    """Whether ``wandb login`` left a key in the netrc file (``$NETRC`` or ``~/.netrc``) for
    the W&B host (``WANDB_BASE_URL``, default api.wandb.ai)."""
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        auth = netrc.netrc(os.environ.get("NETRC") or None).authenticators(host or "")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def wandb_mode() -> str:
    """``online`` with an API key (``WANDB_API_KEY`` or a ``wandb login`` netrc entry), else
    ``offline``; WANDB_MODE wins. On a cluster only the environment reaches every worker, so
    cluster.yaml passes ``WANDB_API_KEY`` on (docs/cluster.md)."""
    explicit = os.environ.get("WANDB_MODE")
    if explicit:
        return explicit
    if os.environ.get("WANDB_API_KEY") or _netrc_has_key():
        return "online"
    return "offline"


class WandbTracker:
    """A W&B run for one trial. Every method swallows W&B failures after one warning."""

    def __init__(
        self,
        *,
        trial: str,
        experiment: str,
        group: str,
        job_type: str,
        tags: list[str],
        config: Mapping[str, Any],
        run_dir: str | os.PathLike[str],
        project: str | None = None,
        entity: str | None = None,
        enabled: bool = True,
        fresh_start: int = 0,
    ):
        self.trial = trial
        self.id = run_id(experiment, trial, fresh_start)
        self.project = project or os.environ.get("WANDB_PROJECT", "raybench")
        self.entity = entity or os.environ.get("WANDB_ENTITY")
        self.group, self.job_type, self.tags = group, job_type, list(tags)
        self.config = dict(config)
        self.run_dir = Path(run_dir)
        self.enabled = enabled and os.environ.get("WANDB_MODE") != "disabled"
        self.run: Any = None
        self._warned = False

    def _fail(self, what: str, exc: BaseException) -> None:
        if not self._warned:
            log.warning(
                "W&B %s failed for trial %s (%s); training continues without W&B", what, self.trial, exc
            )
            self._warned = True
        self.run = None

    def start(self) -> None:
        if not self.enabled:
            return
        mode = wandb_mode()
        try:
            import wandb

            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=self.project,
                entity=self.entity,
                group=self.group,
                job_type=self.job_type,
                name=self.trial,
                id=self.id,
                resume="allow",
                tags=self.tags,
                config=self.config,
                dir=str(self.run_dir),
                mode=mode,
                reinit="create_new",
                settings=wandb.Settings(silent=True, init_timeout=60, console="off"),
            )
        except Exception as exc:  # noqa: BLE001 - W&B must never fail a trial
            self._fail("init", exc)
            return
        if mode == "offline":
            log.info(
                "W&B offline (no WANDB_API_KEY) for %s; upload later with: wandb sync %s/offline-run-*-%s",
                self.trial,
                self.run_dir / "wandb",
                self.id,
            )

    def update_config(self, values: Mapping[str, Any]) -> None:
        """Add to the run's config after start (e.g. the micro-batch the OOM fallback chose)."""
        if self.run is None:
            return
        try:
            self.run.config.update(dict(values), allow_val_change=True)
        except Exception as exc:  # noqa: BLE001
            self._fail("config update", exc)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(dict(metrics), step=step)
        except Exception as exc:  # noqa: BLE001
            self._fail("log", exc)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is None:
            return
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001
            self._fail("finish", exc)
        self.run = None


# ---- reading offline runs back (tests, and `raybench report` without W&B access) ----

_BLOCK = 32768
_HEADER = 7  # ":W&B" + 2-byte magic + 1-byte version


def _records(path: Path) -> list[bytes]:
    """The protobuf records of a ``.wandb`` file (LevelDB log framing)."""
    data = path.read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path}: not a W&B run file")
    pos, out, buf = _HEADER, [], b""
    while pos + 7 <= len(data):
        left = _BLOCK - (pos % _BLOCK)
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
            buf = b""
    return out


def read_offline_run(path: str | os.PathLike[str], wait_s: float = 0.0) -> dict[str, Any]:
    """Run metadata, config and history of an offline run file (``run-<id>.wandb``).

    wandb-core writes the file behind ``run.finish()``: its log writer holds the newest
    record until the next one (or the stream's close), so right after ``finish()`` the
    file can lack the last config update or history row. ``wait_s`` > 0 re-reads until
    the run's exit record is in the file (everything before it is then written), up to
    that many seconds; ``complete`` in the result says whether it was seen.
    """
    deadline = time.monotonic() + wait_s
    data = _read_offline_run(Path(path))
    while not data["complete"] and time.monotonic() < deadline:
        time.sleep(0.2)
        data = _read_offline_run(Path(path))
    return data


def _read_offline_run(path: Path) -> dict[str, Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    complete = False
    run: dict[str, Any] = {}
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    for raw in _records(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run = {
                "id": r.run_id,
                "project": r.project,
                "group": r.run_group,
                "job_type": r.job_type,
                "name": r.display_name,
                "tags": list(r.tags),
            }
            config.update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in rec.config.update})
        elif kind == "history":
            history.append(
                {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            )
        elif kind == "exit":
            complete = True
    config.pop("_wandb", None)
    return {"run": run, "config": config, "history": history, "complete": complete}


def find_offline_runs(root: str | os.PathLike[str]) -> list[Path]:
    """Every offline run file under ``root``."""
    return sorted(Path(root).rglob("offline-run-*/run-*.wandb"))


__all__ = ["WandbTracker", "find_offline_runs", "read_offline_run", "run_id", "wandb_mode"]
