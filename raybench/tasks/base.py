"""The task interface: everything the engine needs to know about one family of decoders.

The engine is task-agnostic: it builds a :class:`Task` from the trial's ``decoder`` and only
ever calls the methods below. A task turns dataset items into batches, runs the model to
losses or predictions, and builds the evaluator that turns predictions into ``val/*``
metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from raybench.study.spec import TrialSpec

#: ``(image, target) -> (image, target)``, the data pipeline's transform signature.
Transform = Callable[[torch.Tensor, dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]]
#: ``gather(obj) -> [obj of rank 0, obj of rank 1, ...]`` (injectable for tests).
Gather = Callable[[Any], list[Any]]


@dataclass(frozen=True)
class DatasetMeta:
    """What a model needs to know about its dataset (read from the training split)."""

    task: str
    num_classes: int
    class_names: tuple[str, ...]
    ignore_index: int = 255

    @classmethod
    def of(cls, dataset: Any) -> DatasetMeta:
        """From a raybench dataset (``.task``, ``.num_classes``, ``.class_names``)."""
        return cls(
            task=str(dataset.task),
            num_classes=int(dataset.num_classes),
            class_names=tuple(getattr(dataset, "class_names", ()) or ()),
            ignore_index=int(getattr(dataset, "ignore_index", 255)),
        )


class Evaluator(Protocol):
    """Collects one worker's predictions; ``evaluate`` gathers all workers and returns metrics."""

    def reset(self) -> None: ...

    def evaluate(self) -> dict[str, float]: ...


def move_to(obj: Any, device: torch.device) -> Any:
    """Tensors in (nested) lists / tuples / dicts moved to ``device``; everything else kept."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


class Task:
    """One task family (a set of decoders that share data handling, losses and metrics).

    Subclass it, implement the four abstract methods, and register it for a task kind (or
    named study decoders) with :func:`raybench.tasks.register_task`. A task instance belongs
    to one trial (``self.trial``).
    """

    #: Passed to DistributedDataParallel: True if some trainable parameters may get no
    #: gradient in an iteration (DDP then scans the graph, which costs time).
    ddp_find_unused_parameters: ClassVar[bool] = False

    def __init__(self, trial: TrialSpec) -> None:
        self.trial = trial

    # --- model ----------------------------------------------------------------------------
    def build_model(self, meta: DatasetMeta) -> nn.Module:
        """The full model (backbone in the trial's regime + decoder), on CPU."""
        raise NotImplementedError

    def backbone(self, model: nn.Module) -> nn.Module | None:
        """The pretrained part of ``model`` (gets ``backbone_lr_mult`` and layer decay)."""
        return getattr(model, "backbone", None)

    def compile_targets(self, model: nn.Module) -> list[nn.Module]:
        """What ``recipe.compile`` compiles: the backbone (dense, fixed-shape convolutions, where
        compilation pays off; detection heads have data-dependent shapes)."""
        backbone = self.backbone(model)
        return [backbone] if backbone is not None else []

    def cudnn_autotune(self) -> bool:
        """Whether cuDNN should autotune this task's convolutions on CUDA (``cudnn.benchmark``):
        yes when their input shapes repeat (the autotuner searches once per new shape)."""
        return True

    # --- data -----------------------------------------------------------------------------
    def transforms(self, split: str, generator: torch.Generator) -> Transform | None:
        """The data pipeline of ``split``; all randomness must come from ``generator``
        (the engine re-seeds it per sample, so augmentation does not depend on workers)."""
        return None

    def collate(self, items: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> Any:
        """Dataset items -> one batch (default: ``(list of images, list of targets)``)."""
        images, targets = zip(*items)
        return list(images), list(targets)

    def batch_size(self, batch: Any) -> int:
        """Number of images in ``batch`` (loss normalisation and throughput)."""
        return len(batch[0])

    def to_device(self, batch: Any, device: torch.device) -> Any:
        return move_to(batch, device)

    # --- steps ----------------------------------------------------------------------------
    def train_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Losses of one batch, each a scalar *mean over the batch*; the engine sums them.

        ``model`` may be wrapped in DistributedDataParallel: call it, do not reach inside.
        """
        raise NotImplementedError

    def predict(self, model: nn.Module, batch: Any) -> list[dict[str, Any]]:
        """Predictions of one batch (``model`` unwrapped and in eval mode, under no_grad)."""
        raise NotImplementedError

    def build_evaluator(self, meta: DatasetMeta, gather: Gather) -> Evaluator:
        """A fresh evaluator; ``gather`` collects every worker's share (all_gather_object)."""
        raise NotImplementedError

    def evaluate_step(self, model: nn.Module, batch: Any, evaluator: Any) -> None:
        """Predict one batch and feed the evaluator (default: ``process(batch, predictions)``)."""
        evaluator.process(batch, self.predict(model, batch))
