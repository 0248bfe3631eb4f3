"""The study as data: a YAML file -> validated :class:`Study` -> frozen :class:`TrialSpec` s."""

from raybench.study.loader import Study, load_study, parse_study
from raybench.study.schema import Problem, StudyError
from raybench.study.spec import (
    BackboneSpec,
    DatasetSpec,
    RecipeSpec,
    ScalingSpec,
    TrialSpec,
    trial_name,
)

__all__ = [
    "BackboneSpec",
    "DatasetSpec",
    "Problem",
    "RecipeSpec",
    "ScalingSpec",
    "Study",
    "StudyError",
    "TrialSpec",
    "load_study",
    "parse_study",
    "trial_name",
]
