"""Pre-flight (raybench/preflight/): every problem a trial would die of, found before any
trial starts, in one report. The hub and W&B are monkeypatched (no network)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from raybench.cli import main
from raybench.data.synth import synthesize
from raybench.preflight import PreflightReport, check_backbone_weights, check_wandb, run_remote
from raybench.study import load_study
from tests.study.test_bad_input import study_data, write_study

DINOV3 = "timm/convnext_tiny.dinov3_lvd1689m"


def _dataset(id_: str, root: Path) -> dict[str, Any]:
    return {
        "id": id_,
        "format": "gdxray",
        "task": "detection",
        "decoder": "faster_rcnn",
        "root": str(root),
        "recipe": "r",
    }


def _gdx(root: Path) -> Path:
    synthesize("gdxray", root, images=8, size=64, seed=0)
    return root


def _atto(weights: Path | None = None, **extra: Any) -> dict[str, Any]:
    entry = {"id": "atto", "arch": "convnext_atto", "timm_name": "convnext_atto", "pretraining": "supervised"}
    entry |= {"pretrained": False} if weights is None else {"weights": str(weights)}
    return entry | extra


def _study(tmp: Path, datasets: list[dict], backbone: dict) -> Path:
    data = study_data()
    data["datasets"] = datasets
    data["backbones"] = [backbone]
    data["rows"] = [{"backbone": backbone["id"], "regime": "full"}]
    return write_study(tmp, data)


def test_every_problem_is_reported_at_once_before_anything_starts(tmp_path, capsys):
    corrupt = _gdx(tmp_path / "corrupt")
    (corrupt / "Castings" / "C0001" / "ground_truth.txt").write_text("1 2 x 4 5\n")
    bad_image = _gdx(tmp_path / "badimg")
    (bad_image / "Castings" / "C0002" / "C0002_0001.png").write_bytes(b"not a png")
    weights = tmp_path / "w.pth"
    torch.save({"foo": torch.zeros(1)}, weights)
    (tmp_path / "afile").write_text("x")
    study = _study(
        tmp_path,
        [
            _dataset("missing", tmp_path / "nope"),
            _dataset("corrupt", corrupt),
            _dataset("badimg", bad_image),
        ],
        _atto(weights),
    )
    storage = tmp_path / "afile" / "runs"
    assert main(["preflight", str(study), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: pre-flight of study 'bad'")
    assert "5 problem(s); no trial was started" in err
    fails = [line for line in err.splitlines() if line.strip().startswith("FAIL")]
    assert len(fails) == 5, err
    assert f"datasets[0] missing: dataset root not found: {tmp_path / 'nope'}" in err
    assert "datasets[1] corrupt: train: " in err and "ground_truth.txt line 1: expected 5 numbers" in err
    assert "datasets[2] badimg: train: 1 of 3 sampled image(s) cannot be decoded" in err
    assert "C0002_0001.png" in err and "options.skip_unreadable: true" in err
    assert "backbones[0] atto: backbone 'atto': weights file" in err and "does not fit timm model" in err
    assert f"storage: storage {storage / 'bad'} cannot be created: {tmp_path / 'afile'} is a file" in err
    assert not (tmp_path / "runs").exists()


def test_a_good_study_passes_quickly(tmp_path, capsys):
    import timm

    weights = tmp_path / "atto.pth"
    torch.save(timm.create_model("convnext_atto").state_dict(), weights)
    study = _study(tmp_path, [_dataset("gdx", _gdx(tmp_path / "gdx"))], _atto(weights))
    start = time.monotonic()
    assert main(["preflight", str(study), "--storage", str(tmp_path / "runs")]) == 0
    assert time.monotonic() - start < 60
    out = capsys.readouterr().out
    assert "pre-flight passed." in out
    assert (
        "ok    datasets[0] gdx: " in out
        and "train 4, val 2 (differs from Table 1: train 706, val 356)" in out
    )
    assert f"ok    backbones[0] atto: weights file {weights} fits convnext_atto" in out
    assert "ok    storage: " in out and "note  W&B: offline" in out
    assert [p.name for p in (tmp_path / "runs" / "bad").iterdir()] == []  # the probe is gone


def test_run_refuses_before_ray_and_before_any_trial(tmp_path, capsys, monkeypatch):
    import raybench.sweep.runner as runner

    def no_ray(*a: Any, **k: Any) -> None:
        raise AssertionError("Ray must not start when the pre-flight fails")

    monkeypatch.setattr(runner, "connect", no_ray)
    bad_image = _gdx(tmp_path / "badimg")
    (bad_image / "Castings" / "C0001" / "C0001_0001.png").write_bytes(b"\x89PNG truncated")
    study = _study(tmp_path, [_dataset("gdx", bad_image)], _atto())
    assert main(["run", str(study), "--storage", str(tmp_path / "runs"), "--no-report"]) == 2
    captured = capsys.readouterr()
    assert "FAIL  datasets[0] gdx: train: 1 of 3 sampled image(s) cannot be decoded" in captured.err
    assert "resume after any failure" not in captured.out
    assert not (tmp_path / "runs" / "bad" / "trials").exists()
    # --skip-preflight gets past it (to Ray, here refused by the patched connect)
    with pytest.raises(AssertionError, match="Ray must not start"):
        main(["run", str(study), "--storage", str(tmp_path / "runs"), "--no-report", "--skip-preflight"])


# --- the hub, with the credentials the workers will have ------------------------------------
def _hub_backbone(tmp_path: Path):
    study = _study(
        tmp_path,
        [_dataset("gdx", tmp_path / "gdx")],
        {
            "id": "cnx-dinov3",
            "arch": "convnext_t",
            "timm_name": "convnext_tiny.dinov3_lvd1689m",
            "pretraining": "dinov3",
            "pretrained": True,
        },
    )
    return load_study(study, dry_run=True).backbones[0]


def _http_error(cls: type, status: int) -> BaseException:
    response = SimpleNamespace(status_code=status, headers={}, request=None)
    return cls(
        f"{status} Client Error for url https://huggingface.co/{DINOV3}/resolve/main/x", response=response
    )


def _hub_errors() -> dict[str, Any]:
    from huggingface_hub import errors

    return {
        "gated": (
            _http_error(errors.GatedRepoError, 403),
            [
                f"hf-hub:{DINOV3} is gated (HF_TOKEN is not set)",
                f"https://huggingface.co/{DINOV3}",
                "HF_TOKEN",
            ],
        ),
        "missing": (
            _http_error(errors.RepositoryNotFoundError, 404),
            ["was not found or is private", f"https://huggingface.co/{DINOV3}", "HF_TOKEN"],
        ),
        "unauthorized": (
            _http_error(errors.HfHubHTTPError, 401),
            ["refused the request (401; HF_TOKEN is not set)", "HF_TOKEN"],
        ),
        "offline": (
            ConnectionError("Failed to resolve 'huggingface.co'"),
            ["cannot be reached (ConnectionError", "weights: /path/to/model.safetensors"],
        ),
        "offline-cache-miss": (
            errors.LocalEntryNotFoundError("outgoing traffic has been disabled"),
            ["cannot be reached (LocalEntryNotFoundError", "HF_ENDPOINT"],
        ),
    }


@pytest.mark.parametrize("case", ["gated", "missing", "unauthorized", "offline", "offline-cache-miss"])
def test_hub_errors_name_the_model_page_and_the_token(tmp_path, monkeypatch, case):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    error, expected = _hub_errors()[case]
    calls: list[tuple[str, Any]] = []

    def metadata(url: str, token: Any = None, **kw: Any) -> Any:
        calls.append((url, token))
        raise error

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", metadata)
    report = PreflightReport("s", "here")
    check_backbone_weights(_hub_backbone(tmp_path), "backbones[0] cnx-dinov3", report, env_token_only=True)
    assert [f.status for f in report.findings] == ["FAIL"]
    for text in expected:
        assert text in report.findings[0].message, report.findings[0].message
    assert calls[0][0].endswith(f"{DINOV3}/resolve/main/model.safetensors")
    assert calls[0][1] is False  # a cluster's workers get HF_TOKEN only, not this machine's login


def test_hub_access_with_the_workers_token_passes(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import errors

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_the_test")
    seen: list[Any] = []

    def metadata(url: str, token: Any = None, **kw: Any) -> Any:
        seen.append((url.rsplit("/", 1)[-1], token))
        if url.endswith("model.safetensors"):  # only the PyTorch file exists: timm falls back to it
            raise _http_error(errors.RemoteEntryNotFoundError, 404)
        return SimpleNamespace(size=1)

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", metadata)
    report = PreflightReport("s", "here")
    check_backbone_weights(_hub_backbone(tmp_path), "b", report, env_token_only=True)
    assert [(f.status, f.message) for f in report.findings] == [
        ("ok", f"hf-hub:{DINOV3} (pytorch_model.bin) is reachable with HF_TOKEN")
    ]
    assert seen == [
        ("model.safetensors", "hf_fake_token_for_the_test"),
        ("pytorch_model.bin", "hf_fake_token_for_the_test"),
    ]


def test_offline_hub_needs_the_weights_in_the_cache(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, f, **k: None)
    report = PreflightReport("s", "here")
    check_backbone_weights(_hub_backbone(tmp_path), "b", report)
    assert report.findings[0].status == "FAIL"
    assert f"HF_HUB_OFFLINE is set and hf-hub:{DINOV3} is not in the cache" in report.findings[0].message
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, f, **k: f"/cache/{repo}/{f}")
    report = PreflightReport("s", "here")
    check_backbone_weights(_hub_backbone(tmp_path), "b", report)
    assert report.findings[0].status == "ok"


# --- W&B ------------------------------------------------------------------------------------
@pytest.mark.parametrize("accepted", [True, False])
def test_wandb_key_is_checked_when_there_is_one(monkeypatch, accepted):
    import wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    keys: list[str] = []

    class FakeApi:
        def __init__(self, api_key: str | None = None, timeout: int | None = None) -> None:
            keys.append(api_key or "")

        @property
        def viewer(self) -> Any:
            if not accepted:
                raise wandb.errors.AuthenticationError("API key not valid")
            return SimpleNamespace(username="alice")

    monkeypatch.setattr(wandb, "Api", FakeApi)
    report = PreflightReport("s", "here")
    check_wandb(report)
    assert keys == ["x" * 40]
    finding = report.findings[0]
    if accepted:
        assert (finding.status, finding.message) == ("ok", "WANDB_API_KEY accepted (user alice)")
    else:
        assert (
            finding.status == "FAIL"
            and "WANDB_API_KEY was not accepted (AuthenticationError" in finding.message
        )
    monkeypatch.delenv("WANDB_API_KEY")
    report = PreflightReport("s", "here")
    check_wandb(report)
    assert report.findings[0].status == "note" and "offline" in report.findings[0].message


# --- where it runs --------------------------------------------------------------------------
def test_checks_run_as_a_ray_task_on_a_worker_node(tmp_path, ray_session, monkeypatch):
    """On a joined cluster whose driver cannot see the data the checks run as a Ray task (the
    session's local Ray stands in for the cluster), with the environment the workers get."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # forwarded: the task must see it
    monkeypatch.setattr("raybench.preflight.SAMPLE_IMAGES", 2)
    study = load_study(
        _study(tmp_path, [_dataset("gdx", tmp_path / "only-on-workers")], _atto()), dry_run=True
    )
    report = run_remote(study, list(study.trials), str(tmp_path / "runs" / "exp"))
    assert report.where.startswith("Ray node ")
    statuses = {f.what: (f.status, f.message) for f in report.findings}
    assert statuses["datasets[0] gdx"] == (
        "FAIL",
        f"dataset root not found: {tmp_path / 'only-on-workers'} (on {report.where})",
    )
    assert statuses["storage"][0] == "ok" and statuses["backbones[0] atto"][0] == "ok"
