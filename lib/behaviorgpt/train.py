"""Train BehaviorGPT with data parallelism, one process per rank.

Run with torchrun (`torchrun --nproc_per_node=2 -m behaviorgpt.train --profile local`) or as
a single process (`python -m behaviorgpt.train`), which trains without a process group.

Each rank reads its own shards (shard i goes to rank i % world_size), so ranks can have
different numbers of batches. A rank that runs out of batches keeps joining each step's
collectives with zeros until all are done (see `multitask.Trainer`, which also explains why
gradients are all-reduced by hand instead of by DDP). So no rank hangs, and every training
sequence is used once per epoch, none dropped or repeated. A step's gradient is the gradient
of the multi-task loss over all targets of the ranks that still had a batch.

Rank 0 alone logs and writes files. Every `train.checkpoint_every` steps and at each epoch
end it writes a training-state checkpoint (loop in `train_loop.py`, files in
`train_state.py`). `--resume`, or a group that torchrun restarted, continues from the newest
one with the same result as an uninterrupted run. After the last epoch rank 0 saves the
weights of the epoch with the best validation HR@10 while the other ranks wait at a barrier.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from behaviorgpt.aggregation import Strategy, make_strategy
from behaviorgpt.config import PipelineConfig, load_config
from behaviorgpt.data import EventSequences
from behaviorgpt.evaluate import RankingTotals, model_top_items
from behaviorgpt.layout import Layout
from behaviorgpt.loader import ExampleLoader, ExampleStream, rank_example_files
from behaviorgpt.losses import TASKS, MultiTaskLoss
from behaviorgpt.model import BehaviorGPT, BehaviorGPTConfig
from behaviorgpt.multitask import Trainer
from behaviorgpt.tokens import NUM_EVENT_TYPE_IDS, NUM_TIME_GAP_IDS

log = logging.getLogger(__name__)

VALIDATION_K = 10
"""Cutoff of the validation hit rate logged each epoch."""

DIAGNOSTICS_FILE = "diagnostics.jsonl"
"""JSON lines file of the model folder with the gradient diagnostics of training."""


@dataclass(frozen=True)
class DistributedContext:
    """Rank, world size and device of this process."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="behaviorgpt.train", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="local", help="config profile under --conf")
    parser.add_argument("--conf", default=None, help="config folder (default: the repo's conf/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, for example train.epochs=3")
    parser.add_argument("--model-version", default=None,
                        help="name of the model folder to write (default: UTC timestamp)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest training-state checkpoint of "
                             "--model-version (a group restarted by torchrun always does)")
    return parser.parse_args(argv)


def init_distributed(timeout: timedelta) -> DistributedContext:
    """Join the process group that torchrun describes in RANK/LOCAL_RANK/WORLD_SIZE.

    Without those variables (a plain `python` run) this is a single rank and no group is made.
    """
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))

    # NOTE: no test runs the CUDA path (one GPU per local rank, NCCL). The tests cover
    # gloo on CPU only.
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")

    if world_size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        # A group that torchrun restarted meets in the same store as the failed attempt. The
        # dead ranks' gloo addresses are still listed there (seen with torch 2.15, static and
        # c10d rendezvous), so a new rank may read a stale address and fail to connect. Keys
        # under a per-attempt prefix cannot be stale.
        store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world_size,
                                           timeout=timeout))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend, store=dist.PrefixStore(f"attempt-{attempt}", store),
                                rank=rank, world_size=world_size, timeout=timeout)
    return DistributedContext(rank, local_rank, world_size, device)


def setup_logging(context: DistributedContext) -> None:
    """Configure logging once: INFO on rank 0, warnings and errors only on the other ranks."""
    logging.basicConfig(
        level=logging.INFO if context.is_main else logging.WARNING,
        format=f"%(asctime)s rank{context.rank} %(levelname)s %(name)s: %(message)s")


def agree_model_version(requested: str | None, context: DistributedContext) -> str:
    """Return the requested version, or a UTC timestamp chosen on rank 0 and sent to all."""
    if requested:
        return requested
    version = [datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")]
    if context.distributed:
        dist.broadcast_object_list(version, src=0)
    return version[0]


def build_model(cfg: PipelineConfig, vocab: dict, max_len: int) -> BehaviorGPT:
    config = BehaviorGPTConfig(
        num_items=int(vocab["num_items"]), num_categories=int(vocab["num_categories"]),
        num_event_types=int(vocab.get("num_event_types", NUM_EVENT_TYPE_IDS)),
        num_time_gaps=int(vocab.get("num_time_gaps", NUM_TIME_GAP_IDS)),
        max_len=max_len, d_model=cfg.model.d_model, n_layer=cfg.model.n_layer,
        n_head=cfg.model.n_head, dropout=cfg.model.dropout,
        tie_item_embeddings=cfg.model.tie_item_embeddings,
        sampled_softmax_threshold=cfg.model.sampled_softmax_threshold,
        sampled_negatives=cfg.model.sampled_negatives)
    return BehaviorGPT(config)


def make_optimizer(model: BehaviorGPT, cfg: PipelineConfig,
                   strategy: Strategy | None = None) -> torch.optim.AdamW:
    """AdamW that decays matrices and embeddings but not biases, LayerNorm gains or the
    strategy's own parameters (uncertainty weighting's log-variances)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    extra = [] if strategy is None else [p for p in strategy.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.dim() >= 2],
               "weight_decay": cfg.train.weight_decay},
              {"params": [p for p in trainable if p.dim() < 2] + extra, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.learning_rate)


def learning_rate_factor(step: int, warmup_steps: int, total_steps: int,
                         min_ratio: float) -> float:
    """Return the learning-rate multiplier of optimizer step `step` (counted from 0).

    Linear warm-up from `1 / warmup_steps` to 1 over the first `warmup_steps` steps, then a
    cosine decay from 1 that reaches `min_ratio` at `total_steps`. The factor stays at
    `min_ratio` after that, because the step count is an estimate and a run may take more.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def estimate_total_steps(cfg: PipelineConfig, layout: Layout, world_size: int) -> int:
    """Estimate the optimizer steps of the whole run from the example manifest.

    An epoch takes as many steps as the rank with the most batches, about its examples over
    the batch size (length bucketing can add a partial batch per stream), capped by
    `train.max_steps`. The estimate reads only the manifest, so every rank and a resumed run
    compute the same number.
    """
    batches = []
    for rank in range(world_size):
        examples = sum(entry.rows for entry in
                       rank_example_files(layout.sequences_dir, "train", rank, world_size))
        batches.append(math.ceil(examples / cfg.train.batch_size))
    per_epoch = max(batches, default=0)
    if cfg.train.max_steps:
        per_epoch = min(per_epoch, cfg.train.max_steps)
    return max(per_epoch, 1) * cfg.train.epochs


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: PipelineConfig,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    settings = cfg.train
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(learning_rate_factor, warmup_steps=settings.warmup_steps,
                           total_steps=total_steps,
                           min_ratio=settings.min_learning_rate_ratio))


def build_trainer(model: BehaviorGPT, cfg: PipelineConfig, weights: dict[str, float],
                  diagnostics_path: Path | None, total_steps: int) -> Trainer:
    """Build the loss, the aggregation strategy over the tasks with weight > 0, the optimizer,
    its learning-rate schedule and the trainer from the config."""
    tasks = tuple(task for task in TASKS if weights[task] > 0)
    strategy = make_strategy(cfg.train.aggregation, [weights[task] for task in tasks],
                             seed=cfg.train.seed, dwa_temperature=cfg.train.dwa_temperature,
                             cagrad_c=cfg.train.cagrad_c).to(next(model.parameters()).device)
    loss = MultiTaskLoss(model, window_events=cfg.train.window_events,
                         return_days=cfg.train.return_days)
    optimizer = make_optimizer(model, cfg, strategy)
    return Trainer(loss, strategy, tasks, optimizer,
                   grad_clip_norm=cfg.train.grad_clip_norm,
                   diagnostics_every=cfg.train.diagnostics_every,
                   diagnostics_path=diagnostics_path,
                   scheduler=make_scheduler(optimizer, cfg, total_steps),
                   precision=cfg.train.precision)


def all_reduce_floats(values: list[float], context: DistributedContext) -> list[float]:
    """Sum a list of numbers over all ranks (returned unchanged on a single rank)."""
    if not context.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def build_loader(cfg: PipelineConfig, layout: Layout, context: DistributedContext,
                 max_len: int) -> ExampleLoader:
    """Return this rank's streaming loader over the training example shards."""
    workers = cfg.train.loader_workers
    dataset = ExampleStream(layout.sequences_dir, rank=context.rank,
                            world_size=context.world_size, batch_size=cfg.train.batch_size,
                            seed=cfg.train.seed, max_len=max_len,
                            shuffle_buffer=cfg.train.shuffle_buffer,
                            bucket_batches=cfg.train.bucket_batches, num_streams=max(1, workers))
    return ExampleLoader(dataset, num_workers=workers)


def validation_totals(model: BehaviorGPT, sequences: EventSequences, batch_size: int,
                      context: DistributedContext) -> RankingTotals:
    """Score the validation event of every user of this rank; return hit and NDCG sums."""
    model.eval()
    totals = RankingTotals()
    for top_ids, targets in model_top_items(model, sequences, "validation", VALIDATION_K,
                                            batch_size, context.device):
        totals.add(top_ids, targets)
    model.train()
    return totals


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.profile, args.set, args.conf)
    torch.set_num_threads(cfg.train.num_threads)

    # A group that torchrun restarted after a failure continues from the newest checkpoint.
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    if args.resume and not args.model_version:
        raise SystemExit("behaviorgpt.train: --resume needs --model-version, the version "
                         "whose checkpoints to continue")

    context = init_distributed(timedelta(minutes=cfg.train.dist_timeout_minutes))
    setup_logging(context)
    if restarted and not args.model_version:
        log.warning("torchrun restarted the group but no --model-version was given, so its "
                    "checkpoints cannot be found: training a new model version from the start")
    # Imported here because train_loop imports this module's builders.
    from behaviorgpt.train_loop import run_training

    try:
        run_training(cfg, context, args.model_version, resume=args.resume or restarted)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
