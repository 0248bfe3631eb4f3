"""Credentials reach the workers and nowhere else; weights are downloaded once per node.

- A fake ``HF_TOKEN`` (and ``WANDB_API_KEY``) set in the sweep driver's environment reaches the
  Ray Train workers (their status.json lists the forwarded names) and is found in no file the
  run writes: the experiment folder (trial records, Parquet, checkpoints, Tune state, W&B
  offline runs), the console and Ray's session logs.
- Two processes on one node asking for the same hub weights download them once (a fake
  downloader counts): the first holds the node-wide lock, the second waits and reads the cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from raybench.study import load_study
from raybench.sweep import SweepOptions, run_study
from tests.helpers.sweep import tiny_study

REPO = Path(__file__).resolve().parents[2]


def _files_holding(root: Path, secret: bytes) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and secret in p.read_bytes())


def test_hf_token_reaches_the_workers_and_no_file(tmp_path, ray_session, monkeypatch, capfd):
    token = f"hf_FAKE{uuid.uuid4().hex}"
    wandb_key = f"local-FAKE{uuid.uuid4().hex}"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("WANDB_API_KEY", wandb_key)  # forwarded too; WANDB_MODE=offline keeps it local
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("RAYBENCH_WANDB_DIR", raising=False)
    study = load_study(
        tiny_study(tmp_path, iterations=2, checkpoint_period=2, eval_period=2, regimes=("frozen",))
    )
    store = tmp_path / "store"
    summary = run_study(study, SweepOptions(storage=str(store), driver_cpus=0))
    assert [s["error"] for s in summary.values()] == [None]
    (name,) = summary
    status = json.loads((store / "tiny" / "trials" / name / "status.json").read_text())
    assert status["state"] == "finished"
    assert {"HF_TOKEN", "WANDB_API_KEY", "WANDB_MODE"} <= set(status["env"])  # in the workers' environment
    offline_runs = list((store / "tiny").rglob("offline-run-*/*.wandb"))
    assert offline_runs, "the W&B offline run is part of what is searched"
    assert list((store / "tiny").rglob("*.parquet")), "the results store is part of what is searched"
    for secret in (token, wandb_key):
        assert _files_holding(store, secret.encode()) == []
        assert _files_holding(tmp_path, secret.encode()) == []  # the study, the synthetic data too
    out, err = capfd.readouterr()
    assert token not in out + err and wandb_key not in out + err
    # Ray's own logs of this node: the runtime_env (logged by the runtime_env agent) and the
    # Train run state hold no secret; they reach the workers as a Ray object.
    session = Path(ray_session._private.worker._global_node.get_session_dir_path())
    for secret in (token, wandb_key):
        assert _files_holding(session / "logs", secret.encode()) == []


# --- weights once per node --------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import safetensors.torch, torch
    import timm.models._hub as hub

    counter, cache, ready = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

    def fake_download(repo_id, filename, revision=None, cache_dir=None, **kw):
        # what hf_hub_download does, minus the network: a cached file is returned as is
        target = cache / repo_id.replace("/", "--") / filename
        if target.is_file():
            return str(target)
        with counter.open("a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(1.5)  # a download takes a while: the other process would start its own
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        safetensors.torch.save_file({"w": torch.arange(4.0)}, str(tmp))
        os.replace(tmp, target)
        return str(target)

    hub.hf_hub_download = fake_download
    import logging; logging.basicConfig(stream=sys.stdout, level=logging.INFO)  # raybench's messages
    import raybench.backbones.hub as backbones
    from raybench.study.spec import BackboneSpec
    spec = BackboneSpec(id="atto", arch="convnext_atto", timm_name="convnext_atto.d2_in1k",
                        pretraining="supervised", pretrained=True)
    (ready / str(os.getpid())).write_text("")
    while len(list(ready.iterdir())) < 2:  # start together
        time.sleep(0.01)
    state, where = backbones._hub_state_dict(spec, "convnext_atto.d2_in1k")
    print(where, state["w"].tolist())
    """
)


def _two_processes(tmp: Path) -> tuple[list[str], list[str]]:
    counter, cache, ready = tmp / "downloads.txt", tmp / "cache", tmp / "ready"
    ready.mkdir(parents=True)
    env = os.environ | {"HF_HOME": str(tmp / "hf-home"), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", CHILD, str(counter), str(cache), str(ready)]
    procs = [
        subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in "ab"
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    downloads = counter.read_text().split() if counter.exists() else []
    return downloads, [o for o, _ in outs]


def test_two_processes_on_one_node_download_once(tmp_path):
    downloads, outs = _two_processes(tmp_path / "locked")
    assert len(downloads) == 1
    loaded = "pretrained weights hf-hub:timm/convnext_atto.d2_in1k [0.0, 1.0, 2.0, 3.0]"
    assert [o.splitlines()[-1] for o in outs] == [loaded, loaded]
    assert any("waiting for another process on this node to download" in o for o in outs)
    lock = (
        tmp_path
        / "locked"
        / "hf-home"
        / "hub"
        / ".locks"
        / "raybench--hf-hub--timm--convnext_atto.d2_in1k.lock"
    )
    assert lock.exists()  # in the Hugging Face cache every process of the node shares


def test_without_the_lock_both_threads_would_download(tmp_path, monkeypatch):
    """The control: the same fake downloader, with and without the lock (threads: cheap)."""
    import timm.models._hub as hub

    import raybench.backbones.hub as backbones
    from raybench.study.spec import BackboneSpec

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(backbones, "download_lock_path", lambda s: tmp_path / "hub" / ".locks" / "x.lock")
    spec = BackboneSpec(
        id="atto",
        arch="convnext_atto",
        timm_name="convnext_atto.d2_in1k",
        pretraining="supervised",
        pretrained=True,
    )

    def run(lock: bool) -> int:
        downloads: list[int] = []
        target = tmp_path / f"w-{lock}.safetensors"

        def fake_download(repo_id: str, filename: str, **kw: Any) -> str:
            import safetensors.torch
            import torch

            if target.is_file():
                return str(target)
            downloads.append(threading.get_ident())
            time.sleep(0.5)
            safetensors.torch.save_file({"w": torch.zeros(1)}, str(target))
            return str(target)

        monkeypatch.setattr(hub, "hf_hub_download", fake_download)
        if not lock:
            monkeypatch.setattr(backbones, "download_lock", lambda source: nullcontext())
        threads = [
            threading.Thread(target=backbones._hub_state_dict, args=(spec, spec.timm_name)) for _ in "ab"
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return len(downloads)

    assert run(lock=True) == 1
    assert run(lock=False) == 2
