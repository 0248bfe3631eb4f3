"""raybench: a Ray sweep engine for the DINOv3-vs-ImageNet industrial inspection study.

Flow: study file -> trial specs -> sweep (Ray Tune + Ray Train) -> engine (train loop)
over data + model -> evaluation -> results / report.
"""

__version__ = "0.1.0"
