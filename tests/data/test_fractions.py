"""The label-efficiency axis: nested, class-stratified training subsets, trial names, the report.

A study's ``train_fractions`` makes every trial train on a share of its training split. The
subsets must be nested (10 % inside 25 % inside 50 %), sized ``round(f x N)``, stratified by the
classes each image shows (every class of the split in every subset that has room for it), a
pure function of the seed; trial names gain ``-f<fraction>`` only below 1.0; the report draws
the headline metric against the fraction.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from raybench.engine.subsets import (
    FractionSubset,
    fraction_indices,
    fraction_subset,
    subset_order,
    subset_size,
)
from raybench.results.report import build_report, fraction_of_name
from raybench.results.store import ResultsWriter, write_status
from raybench.study import StudyError, load_study, parse_study
from raybench.study.spec import TrialSpec
from raybench.tasks.base import DatasetMeta

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "experiments" / "smoke.yaml"
FRACTIONS = (0.1, 0.25, 0.5)


def _classes(n: int = 200, seed: int = 7) -> list[list[int]]:
    """Per-image class lists: 4 common classes (1-2 per image), 15 empty images, a class (9)
    on 3 images only, a class (8) on 1 image only."""
    rng = np.random.default_rng(seed)
    out: list[list[int]] = []
    for i in range(n):
        if i % 13 == 0:
            out.append([])
        else:
            k = int(rng.integers(1, 3))
            out.append(sorted(int(c) for c in rng.choice([1, 2, 3, 4], size=k, replace=False)))
    for i in (5, 77, 150):
        out[i] = [*out[i], 9]
    out[123] = [8]
    return out


def test_subsets_are_nested_sized_stratified_and_cover_every_class():
    classes = _classes()
    n = len(classes)
    subsets = {f: fraction_indices(classes, f, seed=42) for f in (*FRACTIONS, 1.0)}
    # sizes: round(f x N)
    assert {f: len(s) for f, s in subsets.items()} == {0.1: 20, 0.25: 50, 0.5: 100, 1.0: 200}
    assert subsets[1.0] == list(range(n))
    # nested
    assert set(subsets[0.1]) < set(subsets[0.25]) < set(subsets[0.5]) < set(subsets[1.0])
    # sorted, no repeats
    for s in subsets.values():
        assert s == sorted(set(s))
    # every class of the split (incl. the one-image class 8 and the 3-image class 9) in each subset
    every = {c for cls in classes for c in cls}
    assert every == {1, 2, 3, 4, 8, 9}
    for f in FRACTIONS:
        assert {c for i in subsets[f] for c in classes[i]} == every, f
    # stratified: each class-set stratum within 2 of its share (systematic order: floor/ceil,
    # plus at most one coverage pick)
    strata = Counter(tuple(c) for c in classes)
    for f in FRACTIONS:
        got = Counter(tuple(classes[i]) for i in subsets[f])
        for key, size in strata.items():
            assert abs(got[key] - f * size) <= 2, (f, key, got[key], f * size)
    # empty images are a stratum too: 16 of 200 -> about 8 of the half
    assert abs(Counter(len(classes[i]) == 0 for i in subsets[0.5])[True] - 8) <= 1


def test_subsets_are_a_function_of_the_seed():
    classes = _classes()
    assert subset_order(classes, 42) == subset_order(classes, 42)
    assert fraction_indices(classes, 0.25, 42) == fraction_indices(list(map(tuple, classes)), 0.25, 42)
    assert fraction_indices(classes, 0.25, 42) != fraction_indices(classes, 0.25, 43)
    # the order is a permutation of the split
    assert sorted(subset_order(classes, 3)) == list(range(len(classes)))
    assert subset_size(7, 0.5) == 4 and subset_size(7, 0.01) == 1 and subset_size(10, 0.25) == 3
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        fraction_indices(classes, 0.0, 42)


class _Items:
    """A dataset as the loaders make them: attributes + image_classes + items."""

    task = "semantic"
    num_classes = 3
    class_names = ("a", "b", "c")
    ignore_index = 255

    def __init__(self, classes: list[list[int]]) -> None:
        self.classes = classes

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, i: int) -> tuple[int, dict]:
        return i, {"classes": self.classes[i]}

    def image_classes(self, i: int) -> list[int]:
        return self.classes[i]


def test_fraction_subset_looks_like_its_dataset():
    items = _Items([[1], [2], [3], [1, 2], [], [3], [1], [2]] * 5)
    assert fraction_subset(items, 1.0, 42) is items  # the whole split: the dataset itself
    sub = fraction_subset(items, 0.25, 42)
    assert isinstance(sub, FractionSubset) and len(sub) == 10
    assert DatasetMeta.of(sub) == DatasetMeta.of(items)
    assert [sub[i][0] for i in range(len(sub))] == sub.indices
    assert [sub.image_classes(i) for i in range(len(sub))] == [items.classes[j] for j in sub.indices]
    again = pickle.loads(pickle.dumps(sub))  # DataLoader worker processes
    assert again.indices == sub.indices and again.num_classes == 3
    with pytest.raises(TypeError, match="image_classes"):
        fraction_subset([1, 2, 3], 0.5, 42)


def _smoke_data() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def test_trial_names_gain_a_suffix_only_below_one():
    base = load_study(SMOKE, dry_run=True)
    data = _smoke_data() | {"train_fractions": [0.1, 0.25, 1.0]}
    study = parse_study(data, str(SMOKE), base_dir=SMOKE.parent, dry_run=True)
    names = [t.name for t in study.trials]
    assert len(names) == 3 * len(base.trials) == len(set(names))
    # every existing name is still there, unchanged, for the whole split
    full = [t for t in study.trials if t.train_fraction == 1.0]
    assert [t.name for t in full] == [t.name for t in base.trials]
    assert "gdxray-convnext_t-dinov3-frozen-s42-f0.1" in names
    assert "gdxray-convnext_t-dinov3-frozen-s42-f0.25" in names
    assert study.train_fractions == (0.1, 0.25, 1.0)
    t = study.trial("gdxray-convnext_t-dinov3-frozen-s42-f0.25")
    assert t.train_fraction == 0.25 and t.axes()["train_fraction"] == 0.25
    assert TrialSpec.from_json(t.to_json()) == t
    # a full-split trial's JSON is as before the axis existed (resume compares it)
    assert "train_fraction" not in full[0].to_dict() and TrialSpec.from_json(full[0].to_json()) == full[0]
    assert fraction_of_name(t.name) == 0.25 and fraction_of_name(full[0].name) == 1.0


def test_bad_fractions_are_reported_with_file_and_line(tmp_path):
    text = SMOKE.read_text().replace("seeds: [42]\n", "seeds: [42]\ntrain_fractions: [0.5, 0, 1.5, 0.5, x]\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    line = text.splitlines().index("train_fractions: [0.5, 0, 1.5, 0.5, x]") + 1
    with pytest.raises(StudyError) as err:
        load_study(bad, dry_run=True)
    msg = str(err.value)
    assert f"bad.yaml:{line}: train_fractions[1]: a training fraction must be in (0, 1]" in msg
    assert f"bad.yaml:{line}: train_fractions[2]: a training fraction must be in (0, 1]" in msg
    assert f"bad.yaml:{line}: train_fractions[3]: duplicate training fraction 0.5" in msg
    assert f"bad.yaml:{line}: train_fractions[4]: expected a number, got 'x'" in msg
    empty = tmp_path / "empty.yaml"
    empty.write_text(SMOKE.read_text().replace("seeds: [42]\n", "seeds: [42]\ntrain_fractions: []\n"))
    with pytest.raises(StudyError, match="train_fractions: needs at least one fraction"):
        load_study(empty, dry_run=True)


def test_engine_trains_on_the_subset(tmp_path):
    """``epoch`` = iterations x batch / training-set size: the engine streamed the subset."""
    from raybench.data import build_dataset
    from raybench.engine import train
    from tests.models.test_detection_overfit import ATTO, write_gdxray_castings

    write_gdxray_castings(tmp_path / "gdxray")
    images = build_dataset("gdxray", tmp_path / "gdxray", "train", val_series=(), exclude_series=())
    data = _smoke_data() | {"train_fractions": [0.5]}
    study = parse_study(data, str(SMOKE), base_dir=SMOKE.parent, dry_run=True)
    trial = study.trial("gdxray-convnext_t-supervised-full-s42-f0.5")
    recipe = dataclasses.replace(
        trial.recipe,
        schedule=dataclasses.replace(trial.recipe.schedule, iterations=1, warmup_iters=0),
        eval_period=1,
        checkpoint_period=1,
    )
    trial = trial.replace(recipe=recipe, backbone=ATTO)
    final = train(trial, tmp_path / "run", datasets={"train": images, "val": images}, verbose=False)
    assert len(images) == 2 and final["iter"] == 1
    assert final["epoch"] == 2.0  # batch 2 over the 1 image of the half (the whole split: 1.0)


# ---------------------------------------------------------------------------------------
# the report


def _record(root: Path, t: TrialSpec, value: float, metric: str) -> None:
    d = root / "trials" / t.name
    w = ResultsWriter(d, t.axes(), {"workers": 1, "gpus_per_worker": 1.0, "cpus_per_worker": 4.0})
    w.append(6, 1.0, {metric: value, "train/loss": 1.0}, 10.0)
    w.flush()
    write_status(d, "finished", "", extra={"metric": metric})


@pytest.fixture(scope="module")
def fraction_experiment(tmp_path_factory):
    """Severstal: 2 rows x fractions 0.25 / 0.5 / 1.0 finished (the DINOv3 row with 2 seeds);
    one 0.25 trial of a third row failed."""
    data = _smoke_data() | {"train_fractions": [0.25, 0.5, 1.0], "seeds": [42, 43]}
    study = parse_study(data, str(SMOKE), base_dir=SMOKE.parent, dry_run=True)
    root = tmp_path_factory.mktemp("frac") / "exp"
    values = {
        ("convnext_t-dinov3-full", 42): {0.25: 40.0, 0.5: 50.0, 1.0: 60.0},
        ("convnext_t-dinov3-full", 43): {0.25: 42.0, 0.5: 52.0, 1.0: 62.0},
        ("convnext_t-supervised-full", 42): {0.25: 30.0, 0.5: 45.0, 1.0: 58.0},
    }
    for (row, seed), by_f in values.items():
        for f, v in by_f.items():
            suffix = "" if f == 1.0 else f"-f{f:g}"
            _record(root, study.trial(f"severstal-{row}-s{seed}{suffix}"), v, "val/mIoU")
    failed = study.trial("severstal-resnet50_gn-supervised-full-s42-f0.25")
    d = root / "trials" / failed.name
    ResultsWriter(d, failed.axes(), {"workers": 1, "gpus_per_worker": 1.0, "cpus_per_worker": 4.0}).close()
    write_status(d, "failed", "RuntimeError: boom", extra={"metric": "val/mIoU"})
    return root, study


def test_report_draws_the_fraction_plot_and_table(fraction_experiment, tmp_path):
    root, study = fraction_experiment
    result = build_report(str(root), tmp_path / "report", study=study, wandb=False, bootstrap_resamples=0)
    frame = result.fractions
    sev = frame[frame["dataset"] == "severstal"]
    dino = sev[
        (sev["backbone"] == "convnext_t") & (sev["pretraining"] == "dinov3") & (sev["regime"] == "full")
    ]
    assert dino["train_fraction"].tolist() == [0.25, 0.5, 1.0]
    assert dino["mean"].tolist() == [41.0, 51.0, 61.0]
    assert dino["n_seeds"].tolist() == [2, 2, 2] and dino["min"].tolist() == [40.0, 50.0, 60.0]
    sup = sev[
        (sev["pretraining"] == "supervised") & (sev["backbone"] == "convnext_t") & (sev["regime"] == "full")
    ]
    assert sup["mean"].tolist() == [30.0, 45.0, 58.0]
    res = sev[sev["backbone"] == "resnet50_gn"]
    assert res["status"].tolist()[0] == "failed"
    assert (tmp_path / "report" / "fractions.csv").is_file()
    # the plot
    png = result.fraction_plots["severstal"]
    assert png == tmp_path / "report" / "fractions_severstal.png"
    with Image.open(png) as im:
        assert im.size == (800, 500)
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert (255, 127, 14) in colours and (31, 119, 180) in colours  # DINOv3 orange, ImageNet blue lines
    # Table 2: fraction 1.0 only (not averaged with the subsets)
    cell = next(
        c for c in result.cells if c.dataset == "severstal" and c.row == ("convnext_t", "dinov3", "full")
    )
    assert cell.mean == 61.0 and cell.n_seeds == 2
    assert all(t.train_fraction == 1.0 for c in result.cells for t in c.trials)
    text = result.markdown.read_text()
    assert "## Label efficiency — headline metric vs training fraction" in text
    assert (
        "| ConvNeXt-T | DINOv3 | full | 41.00 ± 1.41 (n=2) | 51.00 ± 1.41 (n=2) | 61.00 ± 1.41 (n=2) |"
        in text
    )
    assert "![Severstal label efficiency](fractions_severstal.png)" in text


def test_report_without_study_reads_fractions_from_names(fraction_experiment, tmp_path):
    root, _ = fraction_experiment
    result = build_report(str(root), tmp_path / "r", wandb=False, bootstrap_resamples=0)
    assert sorted(set(result.fractions["train_fraction"])) == [0.25, 0.5, 1.0]
    assert "severstal" in result.fraction_plots


def test_report_without_fractions_writes_no_fraction_files(tmp_path):
    study = load_study(SMOKE, dry_run=True)
    root = tmp_path / "exp"
    _record(root, study.trial("severstal-convnext_t-dinov3-full-s42"), 60.0, "val/mIoU")
    result = build_report(str(root), tmp_path / "r", study=study, wandb=False, bootstrap_resamples=0)
    assert result.fractions.empty and result.fraction_plots == {}
    assert not (tmp_path / "r" / "fractions.csv").exists()
    assert "Label efficiency" not in result.markdown.read_text()
