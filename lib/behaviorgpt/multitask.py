"""One multi-task optimizer step: task losses, aggregation, gradient exchange, diagnostics.

The step's update is the same on one process as on N ranks that split the batch (see
`aggregation.py` for why). The trainer therefore does not use DDP's reducer: DDP averages each
parameter's gradient during a single backward pass, while this step runs several backward
passes (task gradients at the representation, then heads, then backbone) with a nonlinear
aggregation between them. Wrapping the model in DDP would either all-reduce in the middle of
that sequence or, with averaging, divide the already global losses by the world size a second
time. Instead the step sums the finished gradients with one flat all-reduce (`n` floats,
DDP's volume, without its overlap of communication and backward compute). Every rank starts
from the same weights because every rank seeds the same initialisation; `broadcast_parameters`
makes sure of it.

Per step the collectives are, in this order: active flag and target counts
(`1 + tasks` floats), task losses (`tasks`), the Gramian (`tasks**2`, Gramian strategies
only), task gradients on the shared parameters (`tasks * n_shared`, diagnostic steps only),
all gradients (`n`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from behaviorgpt.aggregation import (Strategy, aggregated_backward, all_reduce_gradients,
                                     all_reduce_sum, gradient_diagnostics,
                                     task_gradients_on_parameters)
from behaviorgpt.data import Batch
from behaviorgpt.losses import MultiTaskLoss
from behaviorgpt.tokens import NUM_RESERVED_IDS

log = logging.getLogger(__name__)


@dataclass
class StepReport:
    """Global results of one optimizer step (the same on every rank), plus this rank's FLOPs."""

    losses: Tensor
    """[tasks] global mean loss per task."""
    counts: Tensor
    """[tasks] global number of targets per task."""
    weights: Tensor
    """[tasks] effective task weights."""
    flops: float
    """Model FLOPs of this rank's forward and backward pass (an estimate, see
    `estimate_step_flops`)."""


def broadcast_parameters(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (no-op without a process group)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            dist.broadcast(tensor.data, src=0)


class Trainer:
    """Takes multi-task optimizer steps that give the same update on 1 or N ranks.

    Args:
        loss: the task losses around the model.
        strategy: the aggregation strategy over `tasks`.
        tasks: the tasks trained, in the strategy's order (tasks with weight 0 left out).
        optimizer: optimizer over the model's and the strategy's parameters.
        grad_clip_norm: clip the global gradient norm of the model to this value; 0 = off.
        diagnostics_every: compute gradient diagnostics every this many steps; 0 = never.
        diagnostics_path: JSON lines file that receives the diagnostics (rank 0 passes one,
            the other ranks None).
        scheduler: learning-rate scheduler stepped after every optimizer step, or None.
        precision: "fp32", or "bf16" to run the forward passes under `torch.autocast`
            (parameters, gradients and optimizer state stay float32).
    """

    def __init__(self, loss: MultiTaskLoss, strategy: Strategy, tasks: tuple[str, ...],
                 optimizer: torch.optim.Optimizer, grad_clip_norm: float = 0.0,
                 diagnostics_every: int = 0, diagnostics_path: Path | None = None,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                 precision: str = "fp32") -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision {precision!r} is not supported; use fp32 or bf16")
        self.loss = loss
        self.model = loss.model
        self.strategy = strategy
        self.tasks = tasks
        self.optimizer = optimizer
        self.grad_clip_norm = grad_clip_norm
        self.diagnostics_every = diagnostics_every
        self.diagnostics_path = diagnostics_path
        self.scheduler = scheduler
        self.precision = precision
        self.step_count = 0
        self.model_parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.shared_parameters = self.model.shared_parameters()
        self.device = self.model_parameters[0].device

    def step(self, batch: Batch | None) -> StepReport | None:
        """Take one optimizer step with this rank's batch (None once its batches ran out).

        Returns None, without stepping, when no rank has a batch left. Every rank must call
        this the same number of times.
        """
        num_tasks = len(self.tasks)

        # Forward pass on this rank's batch; the heads read a detached copy of the backbone
        # output so that their backward passes stop at the shared representation.
        hidden = features = None
        local_counts = torch.zeros(num_tasks, dtype=torch.float64, device=self.device)
        if batch is not None:
            with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                enabled=self.precision == "bf16"):
                hidden = self.model(batch)
                features = hidden.detach().requires_grad_()
                sums = self.loss.task_sums(features, batch, self.tasks)
            local_counts = torch.stack([sums[task].count for task in self.tasks]).double()

        header = torch.cat([torch.tensor([float(batch is not None)], dtype=torch.float64,
                                         device=self.device), local_counts])
        all_reduce_sum(header)
        if header[0] == 0:
            return None
        counts = header[1:]

        # Each rank's share of a task loss: its sum over the global target count.
        shares = None
        if batch is not None:
            shares = [sums[task].total / counts[index].clamp(min=1).to(sums[task].total)
                      for index, task in enumerate(self.tasks)]

        self.optimizer.zero_grad(set_to_none=True)
        if self.diagnostics_every and self.step_count % self.diagnostics_every == 0:
            task_gradients = task_gradients_on_parameters(
                shares, hidden, features, self.shared_parameters, num_tasks=num_tasks)
        else:
            task_gradients = None

        result = aggregated_backward(self.strategy, shares, hidden, features, self.step_count)
        all_reduce_gradients(self.model_parameters)
        if self.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model_parameters, self.grad_clip_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.strategy.observe(result.losses)

        if task_gradients is not None:
            self._write_diagnostics(result.losses, result.weights, task_gradients)
        self.step_count += 1
        flops = 0.0 if batch is None else estimate_step_flops(self.model, batch)
        return StepReport(losses=result.losses, counts=counts, weights=result.weights,
                          flops=flops)

    def _write_diagnostics(self, losses: Tensor, weights: Tensor,
                           task_gradients: Tensor) -> None:
        if self.diagnostics_path is None:
            return
        record = {"step": self.step_count, "time": time.time(), "tasks": list(self.tasks),
                  "loss": losses.tolist(), "weight": weights.tolist(),
                  **gradient_diagnostics(task_gradients.double())}
        self.diagnostics_path.parent.mkdir(parents=True, exist_ok=True)
        with self.diagnostics_path.open("a", encoding="utf-8") as output:
            output.write(json.dumps(record) + "\n")
        log.info("step %d diagnostics: loss %s, weight %s, gradient norm %s", self.step_count,
                 _rounded(record["loss"]), _rounded(record["weight"]),
                 _rounded(record["gradient_norm"]))


def _rounded(values: list[float]) -> list[float]:
    return [round(value, 4) for value in values]


def estimate_step_flops(model: nn.Module, batch: Batch) -> float:
    """Estimate the model FLOPs of one forward and backward pass over `batch`.

    Counts matrix multiplications only, at 6 FLOPs per weight per token (2 forward, 4
    backward), as in the PaLM paper's MFU definition: the backbone's dense weights per real
    position, causal attention scores and values (`12 * layers * seq * dim` per position, no
    causal halving), the copy head's projections and scores, and the output layers per target
    (full item vocabulary, or the sampled candidates when training samples). Embedding
    lookups, norms and the extra head-only backward passes of Gramian strategies are left out.
    """
    config = model.config
    positions = float(batch.lengths.sum())
    width = batch.item.shape[1]
    dim = config.d_model

    backbone_weights = 12 * dim * dim * config.n_layer
    attention = 12 * config.n_layer * width * dim
    copy_head = 2 * dim * dim + 2 * width * dim
    per_position = 6 * (backbone_weights + copy_head) + attention

    targets = float((batch.target_item >= NUM_RESERVED_IDS).sum()) if (
        batch.target_item is not None) else positions
    real_items = config.num_items - NUM_RESERVED_IDS
    if model.uses_sampled_softmax():
        item_columns = targets + config.sampled_negatives
    else:
        item_columns = real_items
    per_target = 6 * dim * (item_columns + 2 * config.num_categories + config.num_event_types)
    return positions * per_position + targets * per_target


def measure_matmul_peak(size: int = 1024, seconds: float = 0.5,
                        device: torch.device | str = "cpu") -> float:
    """Measure this process's float32 matmul throughput in FLOP/s (best of repeated runs).

    Uses the current torch thread count, so it is the peak that the training process itself
    can reach on this machine.
    """
    # A private generator, so that measuring leaves the global random state (dropout) as it
    # was: a resumed run measures again after restoring that state.
    generator = torch.Generator(device=device).manual_seed(0)
    left = torch.randn(size, size, device=device, generator=generator)
    right = torch.randn(size, size, device=device, generator=generator)
    torch.matmul(left, right)  # warm-up
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.matmul(left, right)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        best = max(best, 2.0 * size ** 3 / max(elapsed, 1e-9))
        if time.perf_counter() > deadline:
            return best
