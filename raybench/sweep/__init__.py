"""The sweep: a study's trials as Ray Tune trials of Ray Train ``TorchTrainer`` s.

Ray is imported only inside this package (and lazily): the engine runs without it.
"""

from raybench.sweep.layout import ExperimentLayout
from raybench.sweep.runner import SweepOptions, run_study

__all__ = ["ExperimentLayout", "SweepOptions", "run_study"]
