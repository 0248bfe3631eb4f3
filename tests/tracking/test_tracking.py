"""W&B tracking: offline without a key, stable ids, never fails a trial."""

from __future__ import annotations

import logging

import pytest

from raybench.tracking import WandbTracker, find_offline_runs, read_offline_run, run_id


def make(tmp_path, trial="gdxray-convnext_t-dinov3-frozen-s42", **kw):
    return WandbTracker(
        trial=trial,
        experiment="smoke",
        group="smoke",
        job_type="gdxray",
        tags=["convnext_t", "dinov3", "frozen"],
        config={"trial": trial, "recipe": {"lr": 1e-4}},
        run_dir=tmp_path,
        **kw,
    )


def test_offline_run_has_config_history_and_grouping(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    t = make(tmp_path)
    with caplog.at_level(logging.INFO, logger="raybench.tracking"):
        t.start()
    assert "W&B offline" in caplog.text
    for i in (1, 2, 3):
        t.log({"train/loss": 1.0 / i, "lr": 0.1}, step=i)
    t.finish()
    runs = find_offline_runs(tmp_path)
    assert len(runs) == 1
    # wandb-core writes the run file behind finish(): wait for its exit record.
    data = read_offline_run(runs[0], wait_s=30)
    assert data["complete"]
    assert data["run"]["id"] == run_id("smoke", t.trial) and data["run"]["name"] == t.trial
    assert data["run"]["group"] == "smoke" and data["run"]["job_type"] == "gdxray"
    assert data["run"]["tags"] == ["convnext_t", "dinov3", "frozen"]
    assert data["config"]["recipe"] == {"lr": 1e-4}
    assert [h["train/loss"] for h in data["history"]] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [h["_step"] for h in data["history"]] == [1, 2, 3]


def test_run_id_is_stable_and_distinct():
    assert run_id("smoke", "a") == run_id("smoke", "a")
    assert run_id("smoke", "a") != run_id("smoke", "b") != run_id("other", "a")


def test_wandb_failures_never_fail_the_trial(tmp_path, monkeypatch, caplog):
    import wandb

    def boom(*a, **k):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", boom)
    t = make(tmp_path)
    with caplog.at_level(logging.WARNING, logger="raybench.tracking"):
        t.start()
        t.log({"x": 1.0}, step=1)
        t.finish()
    assert "W&B init failed" in caplog.text and "training continues" in caplog.text


def test_disabled_mode_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    t = make(tmp_path)
    t.start()
    t.log({"x": 1.0}, step=1)
    t.finish()
    assert find_offline_runs(tmp_path) == []


def test_mode_from_env_key_netrc_login_or_explicit(tmp_path, monkeypatch):
    from raybench.tracking import wandb_mode

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    netrc_file = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert wandb_mode() == "offline"  # no key anywhere (and no netrc file)
    netrc_file.write_text("machine example.org login user password secret\n")
    assert wandb_mode() == "offline"  # a netrc without the W&B host
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password 0123abcd\n")
    netrc_file.chmod(0o600)
    assert wandb_mode() == "online"  # what `wandb login` writes
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.mycorp.local")
    assert wandb_mode() == "offline"  # a private server needs its own entry
    monkeypatch.delenv("WANDB_BASE_URL")
    netrc_file.write_text("this is not { a netrc")
    assert wandb_mode() == "offline"  # unreadable netrc -> offline, never a crash
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
