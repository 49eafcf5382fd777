"""Per-task training losses, their labels and their fixed-weight combination.

Next-event tasks, predicting the event after every training position:

- `next_item`: negative log of the mixed (vocabulary + copy) probability of the next item;
- `next_category`: cross-entropy of the next event's category;
- `next_event_type`: cross-entropy of the next event's type (view, cart, fav, purchase).

Next-window tasks, predicted from the hidden state at a cutoff position `c` about the
`window_events` events after it (see `window_labels`):

- `category_interest`: binary cross-entropy per category, summed over the real categories
  (a mean over thousands of mostly negative categories would make the task's gradient
  vanish next to the others);
- `purchase`: binary cross-entropy of "a purchase among the window's events";
- `return`: binary cross-entropy of "the user's next session starts within the return
  horizon".

Targets that are reserved ids (padding, or an item or category outside the vocabulary) are
left out. Each task reports a sum over its targets and the target count, so that a trainer
can divide by the count over all ranks (see `aggregation.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from behaviorgpt.data import Batch
from behaviorgpt.model import BehaviorGPT
from behaviorgpt.tokens import EVENT_TYPE_IDS, FIRST_EVENT_GAP_ID, NUM_RESERVED_IDS, PAD_ID

TASKS = ("next_item", "next_category", "next_event_type", "category_interest", "purchase",
         "return")

SECONDS_PER_DAY = 86_400


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
    if not any(checked.values()):
        raise ValueError("train.task_weights turns every task off; give at least one task a "
                         "weight > 0")
    return checked


@dataclass
class WindowLabels:
    """Next-window labels at the cutoff positions of a batch."""

    rows: Tensor
    """[cutoffs] batch row of each cutoff."""
    positions: Tensor
    """[cutoffs] position of each cutoff; its hidden state makes the prediction."""
    category_interest: Tensor
    """[cutoffs, categories] 1.0 for each category engaged in the window, else 0.0."""
    purchase: Tensor
    """[cutoffs] 1.0 when the window contains a purchase."""
    returned: Tensor
    """[cutoffs] 1.0 when the next session after the cutoff starts within the horizon."""


def approximate_gap_seconds(time_gap: Tensor) -> Tensor:
    """Seconds since the previous event, estimated from time gap bucket ids (any shape).

    Bucket `2 + b` contains gaps in `[2**b - 1, 2**(b+1) - 1)` seconds; this returns the bucket's
    geometric middle. Padding and the first event count as 0 seconds.
    """
    exponent = (time_gap - 2).clamp(min=0).double()
    middle = torch.exp2(exponent + 0.5) - 1.0
    return torch.where(time_gap > FIRST_EVENT_GAP_ID, middle, torch.zeros_like(middle))


def window_labels(batch: Batch, num_categories: int, window_events: int, return_days: float,
                  all_cutoffs: bool) -> WindowLabels:
    """Derive next-window labels from the batch's own input events.

    A cutoff position `c` needs `window_events` input events after it: its window is events
    `c + 1 .. c + window_events`. With `all_cutoffs`, every such position of every row is a
    cutoff (training); otherwise each row has one cutoff, `lengths - 1 - window_events`
    (evaluation), and rows too short for a window have none.

    NOTE: these labels stand in for the per-example `category_interest`, `purchase_label` and
    `return_label` columns that the sequence builder will write; read those here once they
    exist. The window counts events, not days, and the return horizon is measured with time
    gap buckets (a factor of about 1.4 either way), so a return label near the horizon can be
    wrong. A user whose next session lies after the end of the input counts as not returned.
    """
    batch_size, width = batch.item.shape
    device = batch.item.device
    positions = torch.arange(width, device=device)
    last_cutoff = batch.lengths - 1 - window_events
    if all_cutoffs:
        is_cutoff = positions.unsqueeze(0) <= last_cutoff.unsqueeze(1)
    else:
        is_cutoff = positions.unsqueeze(0) == last_cutoff.unsqueeze(1)
    rows, cutoffs = torch.nonzero(is_cutoff, as_tuple=True)

    # [cutoffs, window] event positions inside each cutoff's window.
    offsets = torch.arange(1, window_events + 1, device=device)
    window_positions = cutoffs.unsqueeze(1) + offsets
    window_categories = batch.category[rows.unsqueeze(1), window_positions]
    window_types = batch.event_type[rows.unsqueeze(1), window_positions]

    interest = torch.zeros(len(rows), num_categories, device=device)
    interest.scatter_(1, window_categories, 1.0)
    interest[:, :NUM_RESERVED_IDS] = 0.0
    purchase = (window_types == EVENT_TYPE_IDS["purchase"]).any(dim=1).float()

    # Return: the first session start after the cutoff, within the horizon. Elapsed time is
    # the sum of the gaps after the cutoff up to that event.
    elapsed = approximate_gap_seconds(batch.time_gap).cumsum(dim=1)
    after_cutoff = positions.unsqueeze(0) > cutoffs.unsqueeze(1)
    is_real = positions.unsqueeze(0) < batch.lengths[rows].unsqueeze(1)
    starts = (batch.session_start[rows] == 1) & after_cutoff & is_real
    seconds_after = elapsed[rows] - elapsed[rows, cutoffs].unsqueeze(1)
    within = seconds_after <= return_days * SECONDS_PER_DAY
    first_start = torch.where(starts, positions.unsqueeze(0), width).min(dim=1).values
    returned = torch.zeros(len(rows), dtype=torch.bool, device=device)
    has_start = first_start < width
    returned[has_start] = within[has_start, first_start[has_start]]

    return WindowLabels(rows=rows, positions=cutoffs, category_interest=interest,
                        purchase=purchase, returned=returned.float())


def next_event_type_targets(batch: Batch) -> Tensor:
    """Return `[batch, seq]` event type ids of the event after each position, or `PAD_ID`.

    NOTE: training batches carry no event-type targets yet, so the next event's type is read
    from the inputs, which drops each row's last target.
    """
    targets = torch.full_like(batch.event_type, PAD_ID)
    targets[:, :-1] = batch.event_type[:, 1:]
    return targets


@dataclass
class TaskSum:
    """Sum of one task's per-target losses on this rank, and the number of targets."""

    total: Tensor
    count: Tensor


class MultiTaskLoss(nn.Module):
    """Computes every task's loss from the model's hidden states."""

    def __init__(self, model: BehaviorGPT, window_events: int = 5,
                 return_days: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.window_events = window_events
        self.return_days = return_days

    def task_sums(self, hidden: Tensor, batch: Batch,
                  tasks: tuple[str, ...] = TASKS) -> dict[str, TaskSum]:
        """Return `{task: TaskSum}` for a training batch with `[batch, seq]` targets."""
        sums = {}
        if "next_item" in tasks:
            item_mask = batch.target_item >= NUM_RESERVED_IDS
            log_likelihood = self.model.next_item_log_likelihood(
                hidden, batch, batch.target_item, item_mask)
            sums["next_item"] = _sum(-log_likelihood)

        if "next_category" in tasks:
            category_mask = batch.target_category >= NUM_RESERVED_IDS
            logits = self.model.real_category_logits(hidden[category_mask])
            targets = batch.target_category[category_mask] - NUM_RESERVED_IDS
            sums["next_category"] = _sum(F.cross_entropy(logits, targets, reduction="none"))

        if "next_event_type" in tasks:
            event_targets = next_event_type_targets(batch)
            event_mask = event_targets != PAD_ID
            logits = self.model.event_type_head(hidden[event_mask])
            sums["next_event_type"] = _sum(F.cross_entropy(logits, event_targets[event_mask],
                                                           reduction="none"))

        window_tasks = {"category_interest", "purchase", "return"} & set(tasks)
        if window_tasks:
            labels = window_labels(batch, self.model.config.num_categories, self.window_events,
                                   self.return_days, all_cutoffs=True)
            states = hidden[labels.rows, labels.positions]
            if "category_interest" in tasks:
                logits = self.model.interest_head(states)[:, NUM_RESERVED_IDS:]
                per_cutoff = F.binary_cross_entropy_with_logits(
                    logits, labels.category_interest[:, NUM_RESERVED_IDS:],
                    reduction="none").sum(dim=1)
                sums["category_interest"] = _sum(per_cutoff)
            if "purchase" in tasks:
                sums["purchase"] = _sum(F.binary_cross_entropy_with_logits(
                    self.model.purchase_head(states).squeeze(-1), labels.purchase,
                    reduction="none"))
            if "return" in tasks:
                sums["return"] = _sum(F.binary_cross_entropy_with_logits(
                    self.model.return_head(states).squeeze(-1), labels.returned,
                    reduction="none"))
        return sums

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Return `{task: mean loss over this batch's targets}` (scalars)."""
        sums = self.task_sums(self.model(batch), batch)
        return {task: value.total / value.count.clamp(min=1) for task, value in sums.items()}


def combine_task_losses(losses: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """Return the weighted sum of the task losses; raise ValueError on a task name mismatch."""
    if set(losses) != set(weights):
        raise ValueError(f"task losses {sorted(losses)} and task weights {sorted(weights)} "
                         f"name different tasks; the tasks are {', '.join(TASKS)}")
    return sum(weights[task] * losses[task] for task in TASKS if task in losses)


def _sum(values: Tensor) -> TaskSum:
    # A batch without any valid target still returns a connected zero, so every head gets a
    # (zero) gradient and every rank all-reduces the same parameters.
    return TaskSum(total=values.sum(), count=torch.tensor(float(values.numel()),
                                                          device=values.device))
