"""Per-task training losses and their fixed-weight combination.

Tasks, each predicting the event after every training position:

- `next_item`: negative log of the mixed (vocabulary + copy) probability of the next item;
- `next_category`: cross-entropy of the next event's category.

Targets that are reserved ids (padding, or an item or category outside the vocabulary) are
left out of both losses.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from behaviorgpt.data import Batch
from behaviorgpt.model import BehaviorGPT
from behaviorgpt.tokens import NUM_RESERVED_IDS

TASKS = ("next_item", "next_category")


def validate_task_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Return the weights as floats; raise ValueError for an unknown, missing or negative task."""
    unknown = sorted(set(weights) - set(TASKS))
    if unknown:
        raise ValueError(f"train.task_weights names unknown tasks {unknown}; the tasks are "
                         f"{', '.join(TASKS)}")
    missing = [task for task in TASKS if task not in weights]
    if missing:
        raise ValueError(f"train.task_weights lacks {missing}; give every task a weight "
                         f"(0 turns a task off)")
    checked = {}
    for task in TASKS:
        value = weights[task]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"train.task_weights.{task} = {value!r} is invalid: expected a "
                             f"number >= 0")
        checked[task] = float(value)
    return checked


class MultiTaskLoss(nn.Module):
    """Wraps the model so that one forward call returns every task's mean loss.

    DDP wraps this module, not the bare model, because DDP synchronises gradients only for
    computation that runs inside the wrapped module's forward.
    """

    def __init__(self, model: BehaviorGPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Return `{task: mean loss}` (scalars) for a training batch with `[batch, seq]` targets."""
        hidden = self.model(batch)
        losses = {}

        item_mask = batch.target_item >= NUM_RESERVED_IDS
        log_likelihood = self.model.next_item_log_likelihood(
            hidden, batch, batch.target_item, item_mask)
        losses["next_item"] = _mean(-log_likelihood)

        category_mask = batch.target_category >= NUM_RESERVED_IDS
        logits = self.model.real_category_logits(hidden[category_mask])
        targets = batch.target_category[category_mask] - NUM_RESERVED_IDS
        losses["next_category"] = _mean(F.cross_entropy(logits, targets, reduction="none"))
        return losses


def combine_task_losses(losses: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """Return the weighted sum of the task losses; raise ValueError on a task name mismatch."""
    if set(losses) != set(weights):
        raise ValueError(f"task losses {sorted(losses)} and task weights {sorted(weights)} "
                         f"name different tasks; the tasks are {', '.join(TASKS)}")
    return sum(weights[task] * losses[task] for task in TASKS)


def _mean(values: Tensor) -> Tensor:
    # A batch without any valid target still returns a connected zero, so every parameter
    # gets a (zero) gradient and DDP all-reduces the same parameters on every rank.
    return values.sum() / max(values.numel(), 1)
