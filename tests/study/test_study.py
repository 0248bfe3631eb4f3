"""The study file: validation messages with YAML paths, expansion, names, round-trips."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from raybench.cli import main as cli_main
from raybench.study import StudyError, TrialSpec, load_study, parse_study, trial_name
from raybench.study.schedule import milestones, paper_iterations, step_fractions

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "experiments" / "paper.yaml"
SMOKE = REPO / "experiments" / "smoke.yaml"

EXPECTED_PAPER_NAMES = {
    f"{d}-{b}-{p}-{r}-s42"
    for d in ("severstal", "rubber_rings", "rareplanes", "gdxray")
    for b, p, r in (
        ("resnet50_gn", "supervised", "full"),
        ("convnext_t", "supervised", "frozen"),
        ("convnext_t", "supervised", "full"),
        ("convnext_t", "dinov3", "frozen"),
        ("convnext_t", "dinov3", "full"),
    )
}


def minimal() -> dict:
    """A small valid study as plain data; tests break one thing at a time."""
    return {
        "name": "t",
        "seeds": [42],
        "scaling": {"workers": 1, "use_gpu": False, "cpus_per_worker": 1},
        "backbones": [
            {
                "id": "cnx-sup",
                "arch": "convnext_t",
                "timm_name": "convnext_tiny.fb_in1k",
                "pretraining": "supervised",
                "pretrained": False,
            },
        ],
        "rows": [{"backbone": "cnx-sup", "regime": "frozen"}, {"backbone": "cnx-sup", "regime": "full"}],
        "recipes": {
            "r": {
                "batch_size": 4,
                "optimizer": {"name": "adamw", "lr": 1e-4},
                "schedule": {"name": "multistep", "iterations": 100, "length": "3x"},
                "input": {
                    "train_short_edge": [64],
                    "train_max_size": 128,
                    "test_short_edge": 64,
                    "test_max_size": 128,
                },
            }
        },
        "datasets": [
            {
                "id": "gdx",
                "format": "gdxray",
                "task": "detection",
                "decoder": "faster_rcnn",
                "root": "/nonexistent/gdx",
                "recipe": "r",
            },
        ],
    }


def problems(data: dict, **kw) -> list[str]:
    with pytest.raises(StudyError) as info:
        parse_study(data, "s.yaml", dry_run=kw.pop("dry_run", True), **kw)
    return [f"{p.path}: {p.message}" for p in info.value.problems]


def test_paper_study_has_the_20_trials_of_table2():
    study = load_study(PAPER, dry_run=True)
    names = [t.name for t in study.trials]
    assert len(names) == 20 and set(names) == EXPECTED_PAPER_NAMES
    gd = study.trial("gdxray-convnext_t-dinov3-frozen-s42")
    assert gd.recipe.optimizer.name == "adamw" and gd.recipe.optimizer.layer_decay == 0.95
    assert gd.recipe.drop_path == 0.4
    assert gd.recipe.schedule.length == "6x" and gd.recipe.schedule.iterations == 540_000
    assert gd.recipe.model_options("faster_rcnn").anchor_sizes == (16, 32, 64, 128, 256)
    r50 = study.trial("rareplanes-resnet50_gn-supervised-full-s42")
    assert r50.recipe.optimizer.name == "sgd" and r50.recipe.optimizer.lr == 0.02
    assert r50.recipe.schedule.length == "3x" and r50.recipe.model_options("mask_rcnn").anchor_sizes[0] == 32
    sev = study.trial("severstal-convnext_t-dinov3-full-s42")
    assert sev.recipe.clip_grad.value == 0.01 and sev.recipe.optimizer.backbone_lr_mult == 0.1
    assert sev.recipe.model_options("mask2former").num_points == 12544
    rr = study.trial("rubber_rings-convnext_t-dinov3-full-s42")
    assert rr.recipe.input.test_short_edge == 800 and sev.recipe.input.test_short_edge == 384
    assert rr.dataset.headline_metric == "val/mIoU_nobg"
    assert {t.backbone.timm_name for t in study.trials} == {
        "resnet50_gn.a1h_in1k",
        "convnext_tiny.fb_in1k",
        "convnext_tiny.dinov3_lvd1689m",
    }


def test_smoke_study_has_the_same_20_trials():
    study = load_study(SMOKE, dry_run=True)
    assert {t.name for t in study.trials} == EXPECTED_PAPER_NAMES
    assert all(not t.backbone.pretrained for t in study.trials)
    # toy scale: tens of iterations (enough for the full fine-tuning cells to learn), not 90k
    assert all(t.recipe.schedule.iterations <= 200 for t in study.trials)


def test_cli_dry_run_lists_20_trials(capsys):
    assert cli_main(["grid", str(PAPER), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "20 trials" in out
    assert sum(name in out for name in EXPECTED_PAPER_NAMES) == 20


def test_real_run_requires_dataset_roots():
    msgs = problems(minimal(), dry_run=False)
    assert any(m.startswith("datasets[0].root: dataset root not found: /nonexistent/gdx") for m in msgs)
    parse_study(minimal(), dry_run=True)  # fine without data


def test_unknown_keys_with_did_you_mean():
    data = minimal()
    data["backbones"][0]["pretraned"] = True
    data["recipes"]["r"]["optimizer"]["weight_decy"] = 0.1
    data["sedes"] = [1]
    msgs = problems(data)
    assert "backbones[0].pretraned: unknown key (did you mean 'pretrained'?)" in msgs
    assert "recipes.r.optimizer.weight_decy: unknown key (did you mean 'weight_decay'?)" in msgs
    assert "sedes: unknown key (did you mean 'seeds'?)" in msgs


def test_unknown_references():
    data = minimal()
    data["rows"][0]["backbone"] = "cnx-sub"
    data["rows"][1]["regime"] = "frozn"
    data["datasets"][0]["format"] = "gdxrya"
    data["datasets"][0]["task"] = "detecton"
    data["datasets"][0]["recipe"] = "rr"
    msgs = problems(data)
    assert any(
        m.startswith("rows[0].backbone: unknown backbone 'cnx-sub' (did you mean 'cnx-sup'?)") for m in msgs
    )
    assert "rows[1].regime: expected one of 'frozen', 'full', got 'frozn' (did you mean 'frozen'?)" in msgs
    assert any(
        m.startswith("datasets[0].task: expected one of 'semantic', 'detection', 'instance'") for m in msgs
    )
    assert any(m.startswith("datasets[0].recipe: unknown recipe 'rr' (did you mean 'r'?)") for m in msgs)


def test_unknown_dataset_format_and_decoder_mismatch():
    data = minimal()
    data["datasets"][0]["format"] = "gdxrya"
    data["datasets"][0]["decoder"] = "mask2former"
    msgs = problems(data)
    assert any(
        m.startswith("datasets[0].decoder: decoder 'mask2former' does not serve task 'detection'")
        for m in msgs
    )
    from raybench.study.loader import known_formats

    if known_formats() is not None:
        assert any(
            m.startswith("datasets[0].format: unknown dataset format 'gdxrya' (did you mean 'gdxray'?)")
            for m in msgs
        )


def test_types_and_ranges():
    data = minimal()
    data["recipes"]["r"]["optimizer"]["lr"] = "fast"
    data["recipes"]["r"]["batch_size"] = 0
    data["recipes"]["r"]["schedule"]["warmup_factor"] = 2.0
    data["recipes"]["r"]["input"]["flip"] = "yes"
    data["recipes"]["r"]["sync_period"] = 0
    data["recipes"]["r"]["channels_last"] = "maybe"
    data["scaling"]["workers"] = "two"
    data["seeds"] = [42, "x"]
    msgs = problems(data)
    assert "recipes.r.optimizer.lr: expected a number, got 'fast'" in msgs
    assert "recipes.r.batch_size: must be > 0, got 0" in msgs
    assert "recipes.r.schedule.warmup_factor: must be <= 1, got 2.0" in msgs
    assert "recipes.r.input.flip: expected true/false, got 'yes'" in msgs
    assert "recipes.r.sync_period: must be > 0, got 0" in msgs
    assert "recipes.r.channels_last: expected true/false, got 'maybe'" in msgs
    assert "scaling.workers: expected an integer, got 'two'" in msgs
    assert "seeds[1]: expected an integer, got 'x'" in msgs


def test_missing_required_keys_and_bad_schedule_length():
    data = minimal()
    del data["recipes"]["r"]["optimizer"]["lr"]
    del data["datasets"][0]["root"]
    data["recipes"]["r"]["schedule"]["length"] = "three"
    msgs = problems(data)
    assert "recipes.r.optimizer.lr: required key is missing" in msgs
    assert "datasets[0].root: required key is missing" in msgs
    assert any("schedule.length must look like '1x', '3x' or '6x', got 'three'" in m for m in msgs)


def test_duplicates():
    data = minimal()
    data["backbones"].append(copy.deepcopy(data["backbones"][0]))
    data["datasets"].append(copy.deepcopy(data["datasets"][0]))
    data["rows"].append({"backbone": "cnx-sup", "regime": "full"})
    data["seeds"] = [42, 42]
    msgs = problems(data)
    assert "backbones[1]: duplicate backbone id 'cnx-sup'" in msgs
    assert "datasets[1]: duplicate dataset id 'gdx'" in msgs
    assert "rows[2]: duplicate row 'cnx-sup/full'" in msgs
    assert "seeds[1]: duplicate seed '42'" in msgs


def test_global_batch_must_divide_across_workers():
    data = minimal()
    data["scaling"]["workers"] = 3
    msgs = problems(data)
    assert any("batch_size: global batch 4 is not divisible by scaling.workers=3" in m for m in msgs)


def test_bad_overrides_and_model_options_are_reported():
    data = minimal()
    data["datasets"][0]["overrides"] = {"schedule": {"iteratons": 5}, "model": {"anchor_size": [8]}}
    data["recipes"]["r"]["by_backbone"] = {"convnext_tt": {"drop_path": 0.2}}
    msgs = problems(data)
    assert "datasets[0].overrides.schedule.iteratons: unknown key (did you mean 'iterations'?)" in msgs
    assert any(m.endswith("model.anchor_size: unknown key (did you mean 'anchor_sizes'?)") for m in msgs)
    assert any(
        m.startswith("recipes.r.by_backbone.convnext_tt: unknown backbone arch (did you mean 'convnext_t'?)")
        for m in msgs
    )


def test_many_errors_reported_together_with_file_and_line(tmp_path):
    data = minimal()
    data["backbones"][0]["pretraned"] = True
    data["rows"][0]["regime"] = "partial"
    data["recipes"]["r"]["optimizer"]["lr"] = -1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(StudyError) as info:
        load_study(path, dry_run=True)
    text = str(info.value)
    assert "3 problem(s)" in text
    lines = path.read_text().splitlines()
    for p in info.value.problems:
        assert p.line is not None
        key = p.path.rsplit(".", 1)[-1]
        assert key.split("[")[0] in lines[p.line - 1] or "-" in lines[p.line - 1]
    assert f"{path}:" in text and "backbones[0].pretraned" in text


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nseeds: [42\nrows: []\n")
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert "invalid YAML" in str(info.value) and info.value.problems[0].line is not None


def test_trial_names_are_stable():
    assert trial_name("gdxray", "convnext_t", "dinov3", "frozen", 42) == "gdxray-convnext_t-dinov3-frozen-s42"
    a = [t.name for t in load_study(PAPER, dry_run=True).trials]
    b = [t.name for t in load_study(PAPER, dry_run=True).trials]
    assert a == b and a[0] == "severstal-resnet50_gn-supervised-full-s42"
    data = minimal()
    data["seeds"] = [1, 2]
    names = [t.name for t in parse_study(data, dry_run=True).trials]
    assert names == [
        "gdx-convnext_t-supervised-frozen-s1",
        "gdx-convnext_t-supervised-frozen-s2",
        "gdx-convnext_t-supervised-full-s1",
        "gdx-convnext_t-supervised-full-s2",
    ]


def test_trialspec_round_trip():
    for t in load_study(PAPER, dry_run=True).trials:
        again = TrialSpec.from_json(t.to_json())
        assert again == t and again.name == t.name
        assert json.loads(again.to_json()) == json.loads(t.to_json())


def test_env_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("RB_DATA", str(tmp_path / "store"))
    data = minimal()
    data["datasets"][0]["root"] = "${RB_DATA}/gdx"
    data["backbones"][0]["weights"] = "w/model.pth"
    data["backbones"][0]["pretrained"] = True
    study = parse_study(data, base_dir=tmp_path, dry_run=True)
    assert study.trials[0].dataset.root == str(tmp_path / "store" / "gdx")
    assert study.trials[0].backbone.weights == str((tmp_path / "w" / "model.pth").resolve())
    msgs = problems(data, base_dir=tmp_path, dry_run=False)
    assert any(m.startswith("backbones[0].weights: weights file not found") for m in msgs)


def test_select_patterns():
    study = load_study(PAPER, dry_run=True)
    assert len(study.select("gdxray-*")) == 5
    assert len(study.select("*-frozen-*,rareplanes-*")) == 8 + 3
    with pytest.raises(StudyError, match="no trial matches"):
        study.select("nothing-*")
    with pytest.raises(StudyError, match="did you mean 'gdxray-convnext_t-dinov3-frozen-s42'"):
        study.trial("gdxray-convnext_t-dinov3-frozn-s42")


def test_detectron2_schedule_steps():
    assert paper_iterations("3x") == 270_000 and paper_iterations("6x") == 540_000
    assert step_fractions("3x") == (210_000 / 270_000, 250_000 / 270_000)
    assert step_fractions("1x") == (2 / 3, 8 / 9)
    assert milestones(270_000, "3x") == (210_000, 250_000)
    assert milestones(540_000, "6x") == (480_000, 520_000)
    assert milestones(90_000, "1x") == (60_000, 80_000)
    assert milestones(27, "3x") == (21, 25)
    assert milestones(100, None, (10, 50)) == (10, 50)


def test_per_worker_batch_and_accumulation():
    from raybench.study.spec import ScalingSpec

    assert ScalingSpec(workers=1).per_worker_batch(16) == (16, 1)
    assert ScalingSpec(workers=2).per_worker_batch(16) == (8, 1)
    assert ScalingSpec(workers=2, max_batch_per_worker=4).per_worker_batch(16) == (4, 2)
    assert ScalingSpec(workers=1, max_batch_per_worker=6).per_worker_batch(16) == (4, 4)


def _with_data_registry():
    from raybench.study.loader import known_formats

    if known_formats() is None:
        pytest.skip("raybench.data is not importable")


def test_dataset_options_are_checked_against_the_loader():
    _with_data_registry()
    data = minimal()
    data["datasets"][0]["options"] = {"val_seris": [3], "skip_unreadable": "yes", "exclude_series": [55, "x"]}
    msgs = problems(data)
    assert any(
        m.startswith(
            "datasets[0].options.val_seris: unknown option for format 'gdxray' "
            "(did you mean 'val_series'?); known: ["
        )
        for m in msgs
    )
    assert "datasets[0].options.skip_unreadable: expected true/false, got 'yes'" in msgs
    assert "datasets[0].options.exclude_series[1]: expected an integer, got 'x'" in msgs
    data["datasets"][0]["options"] = {"val_series": 3}
    assert "datasets[0].options.val_series: expected a list, got 3" in problems(data)
    data["datasets"][0]["options"] = {"val_series": [3, 32], "exclude_series": [55]}
    assert parse_study(data, dry_run=True).trials[0].dataset.options == data["datasets"][0]["options"]


def test_task_must_match_the_dataset_format():
    _with_data_registry()
    data = minimal()
    data["datasets"][0].update(format="severstal", task="detection")
    msgs = problems(data)
    assert (
        "datasets[0].task: format 'severstal' gives 'semantic' data, not 'detection'; "
        "set task: semantic (and a decoder of ('mask2former', 'upernet', 'fpn'))" in msgs
    )


def test_coco_task_comes_from_the_study_or_must_agree_with_it():
    _with_data_registry()
    data = minimal()
    data["datasets"][0].update(format="coco", task="instance", decoder="mask_rcnn")
    study = parse_study(data, dry_run=True)  # the study's task is passed to the loader
    assert study.datasets[0].options == {"task": "instance"}
    assert all(t.dataset.options == {"task": "instance"} for t in study.trials)
    data["datasets"][0]["options"] = {"task": "instance", "val_fraction": 0.1}
    assert parse_study(data, dry_run=True).datasets[0].options == {"task": "instance", "val_fraction": 0.1}
    data["datasets"][0]["options"] = {"task": "detection"}
    assert (
        "datasets[0].options.task: option task 'detection' disagrees with the study's task 'instance'; "
        "leave the option out (the study's task is passed to the loader) or make them equal"
    ) in problems(data)
    data["datasets"][0].update(task="semantic", decoder="fpn", options={})
    assert (
        "datasets[0].task: format 'coco' serves task 'detection' or 'instance', not 'semantic'"
        in problems(data)
    )


def test_headline_metric_must_be_one_the_evaluator_reports():
    data = minimal()
    data["datasets"][0]["metric"] = "val/bbox_AP50"
    data["datasets"].append(
        dict(
            data["datasets"][0],
            id="sev",
            format="severstal",
            task="semantic",
            decoder="fpn",
            metric="val/mIoUU",
        )
    )
    data["datasets"].append(dict(data["datasets"][0], id="gdx2", metric="val/mask_AP"))
    msgs = problems(data)
    from raybench.study.checks import metric_names

    if metric_names("semantic") is None:
        pytest.skip("raybench.evaluation is not importable")
    assert any(
        m.startswith(
            "datasets[0].metric: unknown metric 'val/bbox_AP50' for task 'detection' "
            "(did you mean 'val/box_AP50'?); known: val/box_AP, val/box_AP50,"
        )
        for m in msgs
    )
    assert any(
        m.startswith(
            "datasets[1].metric: unknown metric 'val/mIoUU' for task 'semantic' "
            "(did you mean 'val/mIoU'?); known: val/mIoU,"
        )
        for m in msgs
    )
    assert any(
        m.startswith("datasets[2].metric: unknown metric 'val/mask_AP' for task 'detection'") for m in msgs
    )
    assert "val/IoU-<class>" in next(m for m in msgs if m.startswith("datasets[1].metric"))


def test_every_metric_name_and_per_class_pattern_is_accepted():
    from raybench.study.checks import metric_matches, metric_names
    from raybench.study.spec import DEFAULT_METRIC

    if metric_names("semantic") is None:
        pytest.skip("raybench.evaluation is not importable")
    semantic = metric_names("semantic")
    for name in ("val/mIoU", "val/mIoU_nobg", "val/FB_IoU", "val/fwIoU", "val/pACC", "val/mACC"):
        assert metric_matches(name, semantic), name
    assert metric_matches("val/IoU-scratches", semantic) and metric_matches("val/ACC-background", semantic)
    assert not metric_matches("val/IoU-", semantic) and not metric_matches("mIoU", semantic)
    instance = metric_names("instance")
    for name in ("val/box_AP", "val/box_AP50", "val/mask_AP", "val/mask_AP75", "val/mask_AP-small_civil"):
        assert metric_matches(name, instance), name
    assert not metric_matches("val/mask_AP", metric_names("detection"))
    for task, metric in DEFAULT_METRIC.items():
        assert metric_matches(metric, metric_names(task)), (task, metric)
    data = minimal()
    data["datasets"][0]["metric"] = "val/box_AP-defect"
    assert parse_study(data, dry_run=True).datasets[0].headline_metric == "val/box_AP-defect"


def test_new_error_classes_reported_together_with_lines(tmp_path, capsys):
    _with_data_registry()
    data = minimal()
    data["datasets"][0].update(options={"val_seris": [3]}, metric="val/box_APP")
    data["datasets"].append(dict(data["datasets"][0], id="sev", format="severstal", options={}, metric=None))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert cli_main(["grid", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "3 problem(s)" in err
    lines = path.read_text().splitlines()
    for key in ("val_seris", "metric", "task"):
        line = next(ln for ln in err.splitlines() if f".{key}:" in ln)
        number = int(line.split(f"{path}:", 1)[1].split(":", 1)[0])
        assert key in lines[number - 1], (line, lines[number - 1])


def test_cli_prints_the_studys_driver_cpus(capsys):
    assert cli_main(["grid", str(SMOKE), "--dry-run"]) == 0
    assert "each needs 0 driver CPUs + 1 x (1 CPU)" in capsys.readouterr().out
    assert cli_main(["grid", str(PAPER), "--dry-run"]) == 0
    assert "each needs 0.25 driver CPUs + 1 x (1 GPU, 8 CPU)" in capsys.readouterr().out


def test_paper_values_written_out_are_the_defaults_they_replace():
    """paper.yaml spells out the Mask2Former head and the RarePlanes classes; both must equal
    the defaults the trials had while they were implicit (the trials run the same)."""
    from raybench.study.model_options import Mask2FormerOptions

    study = load_study(PAPER, dry_run=True)
    for t in study.trials:
        if t.decoder == "mask2former":
            assert t.recipe.model_options("mask2former") == Mask2FormerOptions(), t.name
            assert set(t.recipe.model) == {f.name for f in dataclasses.fields(Mask2FormerOptions)}
    rp = study.trial("rareplanes-convnext_t-dinov3-full-s42").dataset.options
    # unmapped: the paper run drops the military roles of the real tiles on purpose (docs/protocol.md,
    # "RarePlanes classes"); the loader's default stays "error" for every other study.
    assert rp["class_attribute"] == "role" and rp["unmapped"] == "skip"
    from raybench.data import dataset_options

    defaults = dataset_options("rareplanes")
    assert defaults["unmapped"] == "error"
    for key in ("class_attribute", "class_map", "class_names"):
        assert rp[key] == defaults[key] or list(rp[key]) == list(defaults[key]), key


def test_unknown_timm_architecture_is_reported_with_its_index():
    data = minimal()
    data["backbones"].insert(0, {"id": "broken"})  # fails to parse: later indices must not shift
    data["backbones"].append(dict(data["backbones"][1], id="typo", timm_name="convnxt_tiny.fb_in1k"))
    msgs = problems(data)
    assert any(
        m.startswith("backbones[2].timm_name: unknown timm architecture 'convnxt_tiny' (did you mean ")
        and "see timm.list_models()" in m
        for m in msgs
    ), msgs
    assert not any(m.startswith("backbones[1].timm_name") for m in msgs)  # the valid one
    # Other checks name YAML indices too, not positions among the parsed entries.
    assert (
        "backbones[2]: duplicate backbone arch+pretraining (trial names would collide): "
        "'convnext_t-supervised'" in msgs
    ), msgs


@pytest.fixture
def tiny_decoder(monkeypatch):
    """A semantic decoder registered in one place (a decorated builder) for one test only."""
    import torch

    from raybench.models import registry
    from raybench.models.semantic import SmpSemanticHead
    from raybench.study.model_options import SmpOptions

    class StrideFourConv(torch.nn.Module):
        """The smallest smp-style decoder: a 1x1 conv on the stride-4 level."""

        def __init__(self, in_channels: int, out_channels: int) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(in_channels, out_channels, 1)

        def forward(self, features):  # [None, None, stride 4, 8, 16, 32], as smp's decoders get
            return self.conv(features[2])

    registry.list_decoders()  # the built-in decoders first
    monkeypatch.setattr(registry, "_DECODERS", dict(registry._DECODERS))  # restored after the test

    @registry.register_decoder("tiny_conv", task="semantic", options=SmpOptions)
    def tiny_conv(channels, num_classes, options, ignore_index):
        decoder = StrideFourConv(channels[0], options.decoder_channels)
        return SmpSemanticHead(decoder, options.decoder_channels, num_classes, options.dropout, ignore_index)

    return "tiny_conv"


def test_a_decoder_registered_once_serves_the_study_the_task_and_the_builder(tiny_decoder):
    """The decoder registry is the only table: the study accepts the new decoder for its task
    and reads its options class, the semantic task serves it, the builder builds it."""
    import torch

    from raybench.models.semantic import SemanticSegmenter
    from raybench.study.model_options import SmpOptions
    from raybench.tasks import DatasetMeta, build_task, list_tasks, task_class
    from raybench.tasks.semantic import SemanticTask

    _with_data_registry()
    data = minimal()
    data["datasets"][0].update(format="severstal", task="semantic", decoder=tiny_decoder, id="sev")
    data["recipes"]["r"]["model"] = {"decoder_channels": 8}
    study = parse_study(data, dry_run=True)
    assert [t.decoder for t in study.trials] == [tiny_decoder] * 2
    assert study.trials[0].recipe.model_options(tiny_decoder) == SmpOptions(decoder_channels=8)
    # The decoder's options class comes from its registration too.
    data["recipes"]["r"]["model"] = {"num_queries": 8}
    assert any(m.endswith("model.num_queries: unknown key") for m in problems(data))
    # The lists of decoders in the messages are the registry's.
    data["datasets"][0]["decoder"] = "faster_rcnn"
    assert (
        "datasets[0].decoder: decoder 'faster_rcnn' does not serve task 'semantic'; "
        f"use one of ('mask2former', 'upernet', 'fpn', '{tiny_decoder}')" in problems(data)
    )

    assert task_class(tiny_decoder) is SemanticTask and tiny_decoder in list_tasks()
    model = build_task(study.trials[0]).build_model(DatasetMeta("semantic", 3, ("a", "b", "c")))
    assert isinstance(model, SemanticSegmenter) and model.head.classifier.in_channels == 8
    with torch.no_grad():
        scores = model.eval()(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    assert scores.shape == (1, 4, 64, 64)  # 3 classes + background, at the input size
