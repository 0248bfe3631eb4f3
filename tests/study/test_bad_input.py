"""Bad input never passes silently and never costs GPU time (study, storage, CLI, checkpoints).

Every case asserts what the message names (file:line, key, variable, path, flag) and that
nothing was trained or written (no checkpoint, no experiment folder, no dataset at ``/``).
No test here starts Ray: where a sweep is asked, ``connect`` (the only place Ray starts) is
replaced by a trap.
"""

from __future__ import annotations

import copy
import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from raybench.cli import main
from raybench.errors import NoSpaceError, StorageError
from raybench.study import StudyError, load_study, parse_study

REPO = Path(__file__).resolve().parents[2]
# The synthetic GDXray has only some of the paper's validation series (the loader warns).
pytestmark = pytest.mark.filterwarnings("ignore:gdxray")
TRIAL = "gdx-convnext_t-supervised-full-s42"


def study_data(root: str = "gdx") -> dict[str, Any]:
    """A one-dataset study on synthetic GDXray (written on first use) with a random-init backbone."""
    return {
        "name": "bad",
        "seeds": [42],
        "scaling": {"workers": 1, "use_gpu": False, "cpus_per_worker": 1},
        "backbones": [
            {
                "id": "cnx",
                "arch": "convnext_t",
                "timm_name": "convnext_tiny.fb_in1k",
                "pretraining": "supervised",
                "pretrained": False,
            }
        ],
        "rows": [{"backbone": "cnx", "regime": "full"}],
        "recipes": {
            "r": {
                "batch_size": 2,
                "optimizer": {"name": "sgd", "lr": 0.01},
                "schedule": {"name": "constant", "iterations": 2},
                "input": {
                    "train_short_edge": [64],
                    "train_max_size": 128,
                    "test_short_edge": 64,
                    "test_max_size": 128,
                },
                "loader_workers": 0,
                "amp": False,
                "model": {"fpn_channels": 16},
            }
        },
        "datasets": [
            {
                "id": "gdx",
                "format": "gdxray",
                "task": "detection",
                "decoder": "faster_rcnn",
                "root": root,
                "recipe": "r",
                "synthetic": {"images": 8, "size": 64},
            }
        ],
    }


def write_study(folder: Path, data: dict[str, Any], name: str = "study.yaml") -> Path:
    """The study as YAML, one key per line (so each key has its own line number)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    return path


def line_of(path: Path, text: str) -> int:
    """1-based line of the first line of ``path`` containing ``text``."""
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if text in line:
            return i
    raise AssertionError(f"{text!r} not in {path}")


def grid_error(capsys: pytest.CaptureFixture[str], study: Path, *extra: str) -> str:
    assert main(["grid", str(study), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


def set_at(data: Any, keys: tuple[Any, ...], value: Any) -> Any:
    if not keys:
        return value
    node = data
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return data


# --- case 4 / 14: an unset variable is an error naming it (never "" -> a root at "/") -------
@pytest.mark.parametrize("synthetic", [True, False], ids=["synthetic", "real-data"])
def test_unset_variable_in_root_names_the_variable_and_line(tmp_path, capsys, monkeypatch, synthetic):
    monkeypatch.delenv("RB_H4_UNSET", raising=False)
    data = study_data("${RB_H4_UNSET}/raybench-h4-gdxray")
    if not synthetic:
        del data["datasets"][0]["synthetic"]
    study = write_study(tmp_path, data)
    err = grid_error(capsys, study)
    line = line_of(study, "RB_H4_UNSET")
    assert f"{study}:{line}: datasets[0].root: environment variable RB_H4_UNSET is not set" in err
    assert "${RB_H4_UNSET:-" in err  # how to give a default
    assert "not found: /raybench-h4-gdxray" not in err  # the variable is named, not the expansion
    # raybench train refuses before writing anything: no dataset at /, no output folder.
    out = tmp_path / "run"
    assert main(["train", str(study), "--trial", TRIAL, "--out", str(out)]) == 2
    assert "RB_H4_UNSET" in capsys.readouterr().err
    assert not Path("/raybench-h4-gdxray").exists() and not out.exists()


def test_variable_defaults_and_set_variables_still_expand(tmp_path, monkeypatch):
    monkeypatch.delenv("RB_H4_UNSET", raising=False)
    monkeypatch.setenv("RB_H4_SET", str(tmp_path / "store"))
    data = study_data("${RB_H4_UNSET:-" + str(tmp_path / "fallback") + "}/gdx")
    assert parse_study(data, dry_run=True).datasets[0].root == str(tmp_path / "fallback" / "gdx")
    data = study_data("${RB_H4_SET}/gdx")
    assert parse_study(data, dry_run=True).datasets[0].root == str(tmp_path / "store" / "gdx")


# --- case 6: ids and names are restricted to a safe character set ----------------------------
UNSAFE = [
    (("name",), "../../etc/smoke", "name", "name:"),
    (("backbones", 0, "pretraining"), "dino v3/x", "backbones[0].pretraining", "pretraining:"),
    (("backbones", 0, "id"), "a/b", "backbones[0].id", "id: a/b"),
    (("backbones", 0, "arch"), "convnext t", "backbones[0].arch", "arch:"),
    (("datasets", 0, "id"), "..", "datasets[0].id", "id: .."),
    (("datasets", 0, "id"), "gdx/../x", "datasets[0].id", "id: gdx/../x"),
    (("rows", 0, "backbone"), "../cnx", "rows[0].backbone", "backbone: ../cnx"),
    (("datasets", 0, "recipe"), "-r", "datasets[0].recipe", "recipe: -r"),
]


@pytest.mark.parametrize(("keys", "value", "path", "yaml_text"), UNSAFE, ids=[u[2] for u in UNSAFE])
def test_unsafe_names_are_refused_with_key_and_line(tmp_path, capsys, keys, value, path, yaml_text):
    study = write_study(tmp_path, set_at(study_data(), keys, value))
    err = grid_error(capsys, study, "--dry-run")
    line = line_of(study, yaml_text)
    assert f"{study}:{line}: {path}: {value!r} is not a safe name" in err


def test_unsafe_recipe_name_is_refused(tmp_path, capsys):
    data = study_data()
    data["recipes"] = {"r/x": data["recipes"]["r"]}
    data["datasets"][0]["recipe"] = "r/x"
    study = write_study(tmp_path, data)
    err = grid_error(capsys, study, "--dry-run")
    assert f"{study}:{line_of(study, 'r/x:')}: recipes.r/x: recipe name 'r/x' is not a safe name" in err


def test_unsafe_experiment_name_is_refused_before_any_write(tmp_path, capsys, monkeypatch):
    import raybench.sweep.runner as runner

    monkeypatch.setattr(runner, "connect", _no_ray)
    study = write_study(tmp_path, study_data())
    store = tmp_path / "store"
    argv = ["run", str(study), "--storage", str(store), "--experiment", "../x", "--no-report"]
    assert main(argv) == 2
    assert "experiment name: '../x' is not a safe name" in capsys.readouterr().err
    assert not store.exists() and not (tmp_path / "x").exists()


# --- case 9: what a trial would reject at start, `grid` rejects -------------------------------
def _start_case(tmp_path: Path, case: str) -> tuple[dict[str, Any], str, str]:
    """(study data, YAML path of the problem, text of its line) for one trial-start check."""
    data = study_data(str(tmp_path / "gdx"))
    d = data["datasets"][0]
    if case == "val_fraction":
        d.update(format="severstal", task="semantic", decoder="mask2former", id="sev")
        d["options"] = {"val_fraction": 1.5}
        data["recipes"]["r"]["model"] = {}
        return data, "datasets[0].options.val_fraction", "val_fraction:"
    if case == "overlap":
        d.update(format="severstal", task="semantic", decoder="mask2former", id="sev")
        d["options"] = {"overlap": "ignor"}
        data["recipes"]["r"]["model"] = {}
        return data, "datasets[0].options.overlap", "overlap:"
    if case == "val_series":  # the synthetic data has no series 999: an empty val split
        d["options"] = {"val_series": [999]}
        return data, "datasets[0]", "root:|val_series:"
    if case == "empty_root":
        (tmp_path / "gdx").mkdir()
        return data, "datasets[0].root", "root:"
    if case == "root_is_file":
        (tmp_path / "gdx").write_text("not a dataset")
        return data, "datasets[0].root", "root:"
    if case == "out_indices":
        data["backbones"][0]["out_indices"] = [0, 1, 7]
        return data, "backbones[0].out_indices", "out_indices:"
    if case == "seeds":
        data["seeds"] = [-1]
        return data, "seeds[0]", "- -1"
    raise AssertionError(case)


START_CASES = ["val_fraction", "overlap", "val_series", "empty_root", "root_is_file", "out_indices", "seeds"]


@pytest.mark.parametrize("case", START_CASES)
def test_trial_start_checks_fail_grid_with_key_and_line(tmp_path, capsys, case):
    data, path, text = _start_case(tmp_path, case)
    study = write_study(tmp_path / "study", data)
    err = grid_error(capsys, study)
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1, err
    # (an empty split may be reported at the root or at the option that emptied it)
    assert any(problems[0].startswith(f"  - {study}:{line_of(study, t)}: {path}") for t in text.split("|")), (
        err
    )
    assert not (tmp_path / "gdx").is_dir() or case == "empty_root"  # grid wrote no dataset


def test_a_study_with_every_trial_start_problem_lists_them_all(tmp_path, capsys):
    """One bad value per trial-start check, all in one study: `grid` reports each, with its
    key and line, in one run; nothing is written."""
    data = study_data()
    base_ds = data["datasets"][0]
    data["seeds"] = [42, -1]
    data["backbones"][0]["out_indices"] = [0, 1, 7]
    sev = {"format": "severstal", "task": "semantic", "decoder": "mask2former", "recipe": "m2f"}
    data["recipes"]["m2f"] = {**copy.deepcopy(data["recipes"]["r"]), "model": {}}
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    data["datasets"] = [
        {**base_ds, "id": "g_series", "root": "g_series", "options": {"val_series": [999]}},
        {**base_ds, "id": "g_empty", "root": "empty"},
        {**base_ds, "id": "g_file", "root": "file"},
        {
            **sev,
            "id": "s_frac",
            "root": "s_frac",
            "synthetic": {"images": 8},
            "options": {"val_fraction": 1.5},
        },
        {
            **sev,
            "id": "s_overlap",
            "root": "s_ov",
            "synthetic": {"images": 8},
            "options": {"overlap": "ignor"},
        },
    ]
    study = write_study(tmp_path, data)
    err = grid_error(capsys, study)
    expected = {
        "seeds[1]": "- -1",
        "backbones[0].out_indices": "out_indices:",
        "datasets[0]": "id: g_series",
        "datasets[1].root": "root: empty",
        "datasets[2].root": "root: file",
        "datasets[3].options.val_fraction": "val_fraction:",
        "datasets[4].options.overlap": "overlap:",
    }
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(problems) == len(expected), err
    for path, text in expected.items():
        if path == "datasets[0]":  # an empty val split: at root or at the option, per the loader
            assert any(
                p.startswith(f"  - {study}:") and ("datasets[0].root" in p or "datasets[0].options" in p)
                for p in problems
            ), err
            continue
        assert any(p.startswith(f"  - {study}:{line_of(study, text)}: {path}:") for p in problems), (
            path,
            err,
        )
    assert "out_indices" in err and "feature levels 0..3" in err
    assert sorted(os.listdir(tmp_path)) == ["empty", "file", "study.yaml"]  # no dataset written


MODEL_CASES = [
    (
        "anchor_sizes",
        {"model": {"fpn_channels": 16, "anchor_sizes": [8, 16, 32]}},
        "anchor_sizes needs 5 sizes",
    ),
    ("aspect_ratios", {"model": {"fpn_channels": 16, "aspect_ratios": [0.0, 1.0]}}, "aspect_ratios must be"),
    ("layer_decay", {"optimizer": {"name": "adamw", "lr": 1e-4, "layer_decay": 0.9}}, "no layer-id rule"),
]


@pytest.mark.parametrize(("case", "change", "message"), MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_recipe_values_the_model_or_optimizer_would_refuse(tmp_path, capsys, case, change, message):
    """Model options and layer decay that build_detector / the optimizer refuse at trial start."""
    data = study_data()
    data["recipes"]["r"].update(change)
    if case == "layer_decay":  # an architecture without a layer-id rule (EfficientNet)
        data["backbones"][0].update(arch="effnet", timm_name="efficientnet_b0")
    study = write_study(tmp_path, data)
    err = grid_error(capsys, study, "--dry-run")
    assert f"recipe 'r' for {data['backbones'][0]['arch']}" in err and message in err


def test_mask2former_widths_must_split_over_heads(tmp_path, capsys):
    data = study_data()
    data["datasets"][0].update(format="severstal", task="semantic", decoder="mask2former", id="sev")
    data["recipes"]["r"]["model"] = {"hidden_dim": 30, "nheads": 4, "conv_dim": 32}
    study = write_study(tmp_path, data)
    assert "hidden_dim 30 must be divisible by nheads 4" in grid_error(capsys, study, "--dry-run")


def test_bare_dollar_variable_is_refused(tmp_path, capsys):
    data = study_data("$RB_H4_DATA/gdx")
    data["backbones"][0].update(pretrained=True, weights="${RB_H4_NOPE}/w.safetensors")
    study = write_study(tmp_path, data)
    err = grid_error(capsys, study, "--dry-run")
    assert f"{study}:{line_of(study, 'root:')}: datasets[0].root: $RB_H4_DATA in" in err
    assert "write ${RB_H4_DATA}" in err
    assert (
        f"{study}:{line_of(study, 'weights:')}: backbones[0].weights: environment variable RB_H4_NOPE" in err
    )
    assert not (tmp_path / "$RB_H4_DATA").exists()


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True, "x"])
def test_seeds_torch_and_numpy_cannot_take_are_refused(tmp_path, capsys, seed):
    data = study_data()
    data["seeds"] = [seed]
    study = write_study(tmp_path, data)
    err = grid_error(capsys, study, "--dry-run")
    assert f"{study}:{line_of(study, 'seeds:') + 1}: seeds[0]:" in err


# --- case 13: every malformed node is a StudyError, never a raw traceback ---------------------
def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _paths(v, (*prefix, i))
    return found


def test_every_node_of_the_wrong_type_is_a_study_error(tmp_path):
    base = study_data(str(tmp_path / "gdx"))
    base["recipes"]["r"]["by_backbone"] = {"convnext_t": {"optimizer": {"name": "adamw", "lr": 1e-4}}}
    base["datasets"][0]["overrides"] = {"model": {"fpn_channels": 32}}
    base["datasets"][0]["options"] = {"val_series": [1]}
    base["backbones"][0]["out_indices"] = [0, 1, 2, 3]
    tried = 0
    for keys in _paths(base):
        if keys[-1:] == ("timm_name",):
            continue  # a did-you-mean over every timm model: slow, and covered in test_study
        for value in ([1], "x", None, {"a": 1}, 1.5):
            data = set_at(copy.deepcopy(base), keys, value)
            tried += 1
            try:
                parse_study(data, "s.yaml", dry_run=True)
            except StudyError as exc:
                assert exc.problems, (keys, value)
    assert tried > 200


@pytest.mark.parametrize(
    ("keys", "value", "where"),
    [
        (("scaling",), [1], "scaling: expected a mapping, got [1]"),
        (("recipes",), [1], "recipes: expected a mapping, got [1]"),
        (("recipes", "r", "by_backbone"), [1], "recipes.r.by_backbone: expected a mapping"),
        (("datasets", 0, "root"), ["a"], "datasets[0].root: expected a string"),
        (("datasets",), 5, "datasets[0]: expected a mapping, got 5"),
        ((), [1], "<root>: expected a mapping"),
    ],
)
def test_wrong_node_types_via_the_cli(tmp_path, capsys, keys, value, where):
    study = write_study(tmp_path, set_at(study_data(), keys, value))
    assert where in grid_error(capsys, study, "--dry-run")


@pytest.mark.parametrize("only", [",", " , ", ""])
def test_only_without_a_pattern_is_refused(tmp_path, capsys, only):
    study = write_study(tmp_path, study_data())
    err = grid_error(capsys, study, "--dry-run", "--only", only)
    assert "--only" in err and "names no trial pattern" in err


def test_broken_pipe_exits_quietly():
    """`raybench grid ... | head`: no BrokenPipeError traceback, exit 141 like `cat`. The
    reader goes away before the first write (deterministic, unlike racing `head -1`)."""
    cmd = [
        sys.executable,
        "-m",
        "raybench.cli",
        "grid",
        str(REPO / "experiments" / "paper.yaml"),
        "--dry-run",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err


def test_unexpected_errors_are_one_line_outside_tests(monkeypatch, capsys, tmp_path):
    import raybench.cli as cli

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("kaput")

    monkeypatch.setattr(cli, "load_study", boom)
    with pytest.raises(RuntimeError, match="kaput"):  # under pytest: the real traceback
        main(["grid", "x.yaml"])
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert main(["grid", "x.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected RuntimeError: kaput") and "RAYBENCH_DEBUG=1" in err
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(RuntimeError, match="kaput"):
        main(["grid", "x.yaml"])


# --- case 12: storage checked before Ray starts -----------------------------------------------
def _no_ray(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("Ray must not start when the storage is unusable")


def _run(study: Path, storage: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["run", str(study), "--storage", storage, "--no-report"]) == 2
    captured = capsys.readouterr()
    assert "resume after any failure" not in captured.out  # refused before the resume hint
    return captured.err


def test_storage_below_a_file_is_refused_before_ray(tmp_path, capsys, monkeypatch):
    import raybench.sweep.runner as runner

    monkeypatch.setattr(runner, "connect", _no_ray)
    study = write_study(tmp_path, study_data())
    (tmp_path / "afile").write_text("x")
    err = _run(study, str(tmp_path / "afile" / "runs"), capsys)
    assert (
        f"storage {tmp_path / 'afile' / 'runs' / 'bad'} cannot be created: {tmp_path / 'afile'} is a file"
        in err
    )
    assert not (tmp_path / "gdx").exists()  # not even the synthetic data was written


def test_read_only_storage_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    """A read-only file system (root ignores chmod, so the write itself is made to fail)."""
    from raybench.sweep.layout import check_storage

    real = Path.write_bytes

    def read_only(self: Path, data: bytes) -> int:
        if self.name.startswith(".raybench-probe-"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(self, data)

    ok = tmp_path / "ok" / "exp"
    check_storage(str(ok))  # a writable place passes, keeping only the folder it will use
    assert ok.is_dir() and os.listdir(ok) == []
    shutil.rmtree(tmp_path / "ok")
    monkeypatch.setattr(Path, "write_bytes", read_only)
    target = tmp_path / "store" / "exp"
    with pytest.raises(StorageError, match=f"storage {target} is not writable: Read-only file system"):
        check_storage(str(target))
    assert os.listdir(tmp_path) == []  # the folders it made for the probe are gone


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod")
def test_chmod_read_only_storage_is_refused(tmp_path):
    from raybench.sweep.layout import check_storage

    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(StorageError, match="is not writable"):
        check_storage(str(tmp_path / "ro" / "exp"))


def test_unreachable_s3_is_refused_fast_without_ray(tmp_path, capsys, monkeypatch):
    import socket

    import raybench.sweep.runner as runner

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(runner, "connect", _no_ray)
    study = write_study(tmp_path, study_data())
    start = time.monotonic()
    err = _run(study, "s3://raybench-h4-bucket/runs", capsys)
    assert time.monotonic() - start < 60
    assert "storage s3://raybench-h4-bucket/runs/bad cannot be written and read back" in err
    assert "AWS_ENDPOINT_URL" in err


def test_storage_probe_timeout(monkeypatch):
    import raybench.probe as probe

    monkeypatch.setattr(probe, "_probe_remote", lambda location: time.sleep(5))
    with pytest.raises(StorageError, match=r"s3://b/x did not answer within 0.2 s"):
        probe.check_storage("s3://b/x", timeout_s=0.2)


def test_storage_probe_passes_on_s3_and_leaves_no_object(s3_bucket):
    import pyarrow.fs as pafs

    from raybench.results.store import resolve
    from raybench.sweep.layout import check_storage

    check_storage(f"s3://{s3_bucket}/runs/exp")
    fs, path = resolve(f"s3://{s3_bucket}")
    left = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    assert [f.path for f in left if f.type == pafs.FileType.File] == []
    with pytest.raises(StorageError, match="cannot be written and read back"):
        check_storage("s3://raybench-no-such-bucket-h4/runs")


# --- case 5: report on a folder that is no experiment -----------------------------------------
@pytest.mark.parametrize("kind", ["missing", "empty", "not-an-experiment", "a-file"])
def test_report_refuses_a_non_experiment_and_creates_nothing(tmp_path, capsys, kind):
    target = tmp_path / "exp"
    if kind == "empty":
        target.mkdir()
    elif kind == "not-an-experiment":
        (target / "notes").mkdir(parents=True)
        (target / "notes" / "readme.txt").write_text("hello")
    elif kind == "a-file":
        target.write_text("x")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert main(["report", str(target), "--no-wandb"]) == 2
    err = capsys.readouterr().err
    expected = {
        "missing": f"experiment folder not found: {target}",
        "empty": f"experiment {target} holds no raybench trial records",
        "not-an-experiment": f"experiment {target} holds no raybench trial records",
        "a-file": f"experiment {target} is not a folder",
    }[kind]
    assert expected in err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # no report folder, nothing


def test_report_out_below_a_file_is_refused(tmp_path, capsys):
    from raybench.results.store import write_status

    exp = tmp_path / "exp"
    write_status(exp / "trials" / "t1", "running")
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "report"
    assert main(["report", str(exp), "--out", str(out), "--no-wandb"]) == 2
    assert (
        f"report folder (--out) {out} cannot be created: {tmp_path / 'afile'} is a file"
        in capsys.readouterr().err
    )


# --- case 15: train --out checked before data and model; the resume refusal names the flag ---
def test_train_out_below_a_file_is_refused_before_data_is_built(tmp_path, capsys):
    study = write_study(tmp_path, study_data())
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "run"
    assert main(["train", str(study), "--trial", TRIAL, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"output folder (--out) {out} cannot be created: {tmp_path / 'afile'} is a file" in err
    assert not (tmp_path / "gdx").exists()  # the synthetic dataset was not written


def test_resume_refusal_names_the_cli_flags(tmp_path, capsys):
    from raybench.engine.checkpoint import FORMAT, list_checkpoints, save_checkpoint

    data = study_data()
    data["rows"].append({"backbone": "cnx", "regime": "frozen"})
    study_path = write_study(tmp_path, data)
    other = load_study(study_path, dry_run=True).trial("gdx-convnext_t-supervised-frozen-s42")
    out = tmp_path / "run"
    save_checkpoint(out, 3, {"format": FORMAT, "trial": other.to_json(), "trial_name": other.name})
    assert main(["train", str(study_path), "--trial", TRIAL, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "refusing to resume" in err and "--out" in err and "drop --resume" in err
    assert [p.name for p in list_checkpoints(out)] == ["iter_0000003"]  # untouched
    assert not (out / "metrics.jsonl").exists() and not (tmp_path / "gdx").exists()


# --- case 10: a full disk while saving a checkpoint -------------------------------------------
def _state(n: int = 1000) -> dict[str, Any]:
    import torch

    from raybench.engine.checkpoint import FORMAT

    return {"format": FORMAT, "weights": torch.arange(n, dtype=torch.float32)}


def _usage(free: int) -> Any:
    """A ``shutil.disk_usage`` stand-in reporting ``free`` bytes."""
    return lambda path: SimpleNamespace(total=10**12, used=10**12 - free, free=free)


def test_checkpoint_refused_before_writing_when_space_is_short(tmp_path, monkeypatch):
    import raybench.engine.checkpoint as ckpt

    ckpt.save_checkpoint(tmp_path, 1, _state())
    monkeypatch.setattr(ckpt.shutil, "disk_usage", _usage(100))
    with pytest.raises(NoSpaceError) as info:
        ckpt.save_checkpoint(tmp_path, 2, _state())
    msg = str(info.value)
    assert msg.startswith(f"no space left on {tmp_path / 'checkpoints'} for checkpoint iter_0000002")
    assert "the last good checkpoint iter_0000001 is kept" in msg and info.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["iter_0000001"]


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError(
            "[enforce fail at inline_container.cc:595] . unexpected pos 4160 vs 4054: "
            "PytorchStreamWriter failed writing file data/0: file write failed"
        ),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
    ids=["torch-writer", "oserror"],
)
def test_disk_full_during_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, failure):
    import torch

    import raybench.engine.checkpoint as ckpt

    ckpt.save_checkpoint(tmp_path, 1, _state())
    free = {"bytes": 10**9}
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: _usage(free["bytes"])(path))

    def full_disk(obj: Any, f: Any) -> None:
        f.write(b"partial")
        free["bytes"] = 10  # the disk filled up while writing
        raise failure

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(NoSpaceError, match=f"no space left on {tmp_path / 'checkpoints'}") as info:
        ckpt.save_checkpoint(tmp_path, 2, _state())
    assert info.value.__cause__ is failure
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["iter_0000001"]  # no .tmp-* left
    monkeypatch.undo()
    assert torch.equal(
        ckpt.load_checkpoint(tmp_path / "checkpoints" / "iter_0000001")["weights"], _state()["weights"]
    )


def test_other_save_errors_pass_through(tmp_path, monkeypatch):
    import raybench.engine.checkpoint as ckpt

    def broken(obj: Any, f: Any) -> None:
        raise RuntimeError("something else")

    monkeypatch.setattr(ckpt.torch, "save", broken)
    with pytest.raises(RuntimeError, match="^something else$"):
        ckpt.save_checkpoint(tmp_path, 1, _state())
    assert os.listdir(tmp_path / "checkpoints") == []


def test_checkpoint_size_estimate_counts_optimizer_slots():
    import torch

    from raybench.engine.checkpoint import estimate_checkpoint_bytes

    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.BatchNorm1d(10))
    params = sum(p.numel() for p in model.parameters()) * 4
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    adamw = torch.optim.AdamW(model.parameters())
    assert estimate_checkpoint_bytes(model, adamw) == params + buffers + 2 * params
    sgd = torch.optim.SGD(model[0].parameters(), lr=0.1, momentum=0.9)
    assert estimate_checkpoint_bytes(model, sgd) == params + buffers + 110 * 4
    plain = torch.optim.SGD(model.parameters(), lr=0.1)
    assert estimate_checkpoint_bytes(model, plain) == params + buffers


def test_train_refuses_to_start_without_room_for_a_checkpoint(tmp_path, capsys, monkeypatch):
    import raybench.engine.checkpoint as ckpt

    study = write_study(tmp_path, study_data())
    out = tmp_path / "run"
    monkeypatch.setattr(ckpt.shutil, "disk_usage", _usage(1000))
    assert main(["train", str(study), "--trial", TRIAL, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: no space left on {out} for checkpoints of this run" in err
    assert os.listdir(out) == []  # no checkpoint, no metrics: nothing trained
