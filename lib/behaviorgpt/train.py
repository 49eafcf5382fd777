"""Train BehaviorGPT with DistributedDataParallel, one process per rank.

Run with torchrun (`torchrun --nproc_per_node=2 -m behaviorgpt.train --profile local`) or as
a single process (`python -m behaviorgpt.train`), which trains without a process group.

Each rank reads its own shards (shard i goes to rank i % world_size), so ranks can have
different numbers of batches. The training loop runs inside `Join`: a rank that runs out of
batches shadows the gradient all-reduce of the ranks still training until all are done. So
no rank hangs, and every training sequence is used once per epoch, none dropped or repeated.
With `divide_by_initial_world_size=False`, a step's gradient is the mean over the ranks that
still had a batch.

Rank 0 alone logs. After the last epoch it saves the weights of the epoch with the best
validation HR@10 while the other ranks wait at a barrier.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.algorithms import Join
from torch.nn.parallel import DistributedDataParallel

from behaviorgpt.checkpoint import save_checkpoint
from behaviorgpt.config import PipelineConfig, load_config
from behaviorgpt.data import (EventSequences, eligible_rows, read_manifest, read_rank_sequences,
                              read_vocab_manifest, training_batches)
from behaviorgpt.evaluate import RankingTotals, model_top_items
from behaviorgpt.layout import Layout
from behaviorgpt.losses import TASKS, MultiTaskLoss, combine_task_losses, validate_task_weights
from behaviorgpt.model import BehaviorGPT, BehaviorGPTConfig
from behaviorgpt.tokens import NUM_EVENT_TYPE_IDS, NUM_RESERVED_IDS, NUM_TIME_GAP_IDS

log = logging.getLogger(__name__)

VALIDATION_K = 10
"""Cutoff of the validation hit rate logged each epoch."""


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
        dist.init_process_group(backend, timeout=timeout)
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
        n_head=cfg.model.n_head, dropout=cfg.model.dropout)
    return BehaviorGPT(config)


def make_optimizer(model: BehaviorGPT, cfg: PipelineConfig) -> torch.optim.AdamW:
    """AdamW that decays matrices and embeddings but not biases and LayerNorm gains."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.dim() >= 2],
               "weight_decay": cfg.train.weight_decay},
              {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.learning_rate)


def all_reduce_sum(values: list[float], context: DistributedContext) -> list[float]:
    """Sum a list of numbers over all ranks (returned unchanged on a single rank)."""
    if not context.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def train_one_epoch(trainer: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    sequences: EventSequences, cfg: PipelineConfig, weights: dict[str, float],
                    epoch: int, context: DistributedContext) -> dict[str, float]:
    """Run one epoch over this rank's batches; return this rank's loss sums and counts."""
    trainer.train()
    sums = {"next_item": 0.0, "next_category": 0.0, "next_item_targets": 0.0,
            "next_category_targets": 0.0, "sequences": 0.0, "batches": 0.0}

    join = (Join([trainer], divide_by_initial_world_size=False) if context.distributed
            else contextlib.nullcontext())
    with join:
        for batch in training_batches(sequences, cfg.train.batch_size, cfg.train.seed, epoch,
                                      context.rank):
            # A rank that stops early is shadowed by Join like one that ran out of batches.
            if cfg.train.max_steps and sums["batches"] >= cfg.train.max_steps:
                break
            batch = batch.to(context.device)
            losses = trainer(batch)
            loss = combine_task_losses(losses, weights)

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainer.parameters(), cfg.train.grad_clip_norm)
            optimizer.step()

            # Sums weighted by target counts, so the epoch mean is per target, not per batch.
            item_targets = int((batch.target_item >= NUM_RESERVED_IDS).sum())
            category_targets = int((batch.target_category >= NUM_RESERVED_IDS).sum())
            sums["next_item"] += losses["next_item"].item() * item_targets
            sums["next_category"] += losses["next_category"].item() * category_targets
            sums["next_item_targets"] += item_targets
            sums["next_category_targets"] += category_targets
            sums["sequences"] += batch.item.shape[0]
            sums["batches"] += 1
    return sums


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


def run_training(cfg: PipelineConfig, context: DistributedContext,
                 requested_version: str | None) -> Path | None:
    """Train for `cfg.train.epochs` and save the model; return its folder on rank 0."""
    weights = validate_task_weights(cfg.train.task_weights)
    layout = Layout.from_root(cfg.paths.root)
    manifest = read_manifest(layout.sequences_dir)
    vocab = read_vocab_manifest(layout.vocab_dir)
    model_version = agree_model_version(requested_version, context)

    sequences = read_rank_sequences(layout.sequences_dir, context.rank, context.world_size)
    num_trainable = len(eligible_rows(sequences, "train"))
    if num_trainable == 0:
        log.warning("rank %d has no sequence with >= 4 events; it only joins the all-reduces",
                    context.rank)

    # Same initial weights on every rank (DDP also broadcasts rank 0's), different dropout.
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, vocab, manifest.max_len).to(context.device)
    torch.manual_seed(cfg.train.seed + context.rank)

    trainer: torch.nn.Module = MultiTaskLoss(model)
    if context.distributed:
        device_ids = [context.local_rank] if context.device.type == "cuda" else None
        trainer = DistributedDataParallel(trainer, device_ids=device_ids)
    optimizer = make_optimizer(model, cfg)

    log.info("training model %s: %d ranks, %d items, %d categories, %d parameters", model_version,
             context.world_size, model.config.num_items, model.config.num_categories,
             sum(p.numel() for p in model.parameters() if p.requires_grad))

    history = []
    best_epoch, best_hit_rate, best_state = 0, -1.0, None
    started = time.perf_counter()
    for epoch in range(cfg.train.epochs):
        epoch_started = time.perf_counter()
        sums = train_one_epoch(trainer, optimizer, sequences, cfg, weights, epoch, context)
        seconds = time.perf_counter() - epoch_started
        validation = validation_totals(model, sequences, cfg.train.batch_size, context)

        keys = list(sums)
        totals = dict(zip(keys, all_reduce_sum([sums[key] for key in keys], context)))
        hits, ndcg, users = all_reduce_sum(
            [validation.hits, validation.ndcg, float(validation.users)], context)

        record = {"epoch": epoch + 1}
        for task in TASKS:
            record[task] = totals[task] / max(totals[f"{task}_targets"], 1.0)
        record["loss"] = sum(weights[task] * record[task] for task in TASKS)
        record[f"validation_hr@{VALIDATION_K}"] = hits / max(users, 1.0)
        record[f"validation_ndcg@{VALIDATION_K}"] = ndcg / max(users, 1.0)
        record["sequences_per_s"] = totals["sequences"] / seconds
        record["targets_per_s"] = totals["next_item_targets"] / seconds
        history.append(record)

        # Keep the weights of the epoch with the best validation hit rate: with many rare
        # items the vocabulary softmax starts to memorise training targets after a few epochs.
        # Every rank has the same weights, so only rank 0, which saves them, copies them.
        if record[f"validation_hr@{VALIDATION_K}"] > best_hit_rate:
            best_epoch, best_hit_rate = epoch + 1, record[f"validation_hr@{VALIDATION_K}"]
            if context.is_main:
                best_state = {name: tensor.detach().to("cpu", copy=True)
                              for name, tensor in model.state_dict().items()}
        log.info("epoch %d/%d: loss %.4f (next_item %.4f, next_category %.4f) | validation "
                 "HR@%d %.4f on %d users | %.0f sequences/s, %.0f targets/s",
                 epoch + 1, cfg.train.epochs, record["loss"], record["next_item"],
                 record["next_category"], VALIDATION_K, record[f"validation_hr@{VALIDATION_K}"],
                 users, record["sequences_per_s"], record["targets_per_s"])

    batches_per_rank = [int(sums["batches"])]
    if context.distributed:
        batches_per_rank = [None] * context.world_size
        dist.all_gather_object(batches_per_rank, int(sums["batches"]))

    summary = {
        "world_size": context.world_size,
        "epochs": cfg.train.epochs,
        "batch_size": cfg.train.batch_size,
        "max_steps": cfg.train.max_steps,
        "learning_rate": cfg.train.learning_rate,
        "weight_decay": cfg.train.weight_decay,
        "seed": cfg.train.seed,
        "task_weights": weights,
        "train_sequences_per_epoch": int(totals["sequences"]),
        "batches_per_rank_per_epoch": batches_per_rank,
        "train_seconds": time.perf_counter() - started,
        "history": history,
        "selected_epoch": best_epoch,
    }

    model_dir = None
    if context.is_main:
        model.load_state_dict(best_state)
        log.info("keeping the weights of epoch %d (validation HR@%d %.4f)", best_epoch,
                 VALIDATION_K, best_hit_rate)
        model_dir = save_checkpoint(model, layout, model_version, layout.vocab_dir, summary)
        log.info("saved model %s to %s", model_version, model_dir)
    # Other ranks wait here, inside the process group timeout, until the checkpoint exists.
    if context.distributed:
        dist.barrier()
    return model_dir


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.profile, args.set, args.conf)
    torch.set_num_threads(cfg.train.num_threads)

    context = init_distributed(timedelta(minutes=cfg.train.dist_timeout_minutes))
    setup_logging(context)
    try:
        run_training(cfg, context, args.model_version)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
