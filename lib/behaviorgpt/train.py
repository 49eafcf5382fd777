"""Train BehaviorGPT with data parallelism, one process per rank.

Run with torchrun (`torchrun --nproc_per_node=2 -m behaviorgpt.train --profile local`) or as
a single process (`python -m behaviorgpt.train`), which trains without a process group.

Each rank reads its own shards (shard i goes to rank i % world_size), so ranks can have
different numbers of batches. A rank that runs out of batches keeps joining each step's
collectives with zeros until all are done (see `multitask.Trainer`, which also explains why
gradients are all-reduced by hand instead of by DDP). So no rank hangs, and every training
sequence is used once per epoch, none dropped or repeated. A step's gradient is the gradient
of the multi-task loss over all targets of the ranks that still had a batch.

Rank 0 alone logs. After the last epoch it saves the weights of the epoch with the best
validation HR@10 while the other ranks wait at a barrier.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch
import torch.distributed as dist

from behaviorgpt.aggregation import Strategy, make_strategy
from behaviorgpt.checkpoint import save_checkpoint
from behaviorgpt.config import PipelineConfig, load_config
from behaviorgpt.data import (EventSequences, read_manifest, read_rank_sequences,
                              read_vocab_manifest)
from behaviorgpt.evaluate import RankingTotals, model_top_items
from behaviorgpt.layout import Layout
from behaviorgpt.loader import ExampleLoader, ExampleStream
from behaviorgpt.losses import TASKS, MultiTaskLoss, validate_task_weights
from behaviorgpt.model import BehaviorGPT, BehaviorGPTConfig
from behaviorgpt.multitask import Trainer, broadcast_parameters, measure_matmul_peak
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


def build_trainer(model: BehaviorGPT, cfg: PipelineConfig, weights: dict[str, float],
                  diagnostics_path: Path | None) -> Trainer:
    """Build the loss, the aggregation strategy over the tasks with weight > 0, the optimizer
    and the trainer from the config."""
    tasks = tuple(task for task in TASKS if weights[task] > 0)
    strategy = make_strategy(cfg.train.aggregation, [weights[task] for task in tasks],
                             seed=cfg.train.seed, dwa_temperature=cfg.train.dwa_temperature,
                             cagrad_c=cfg.train.cagrad_c).to(next(model.parameters()).device)
    loss = MultiTaskLoss(model, window_events=cfg.train.window_events,
                         return_days=cfg.train.return_days)
    return Trainer(loss, strategy, tasks, make_optimizer(model, cfg, strategy),
                   grad_clip_norm=cfg.train.grad_clip_norm,
                   diagnostics_every=cfg.train.diagnostics_every,
                   diagnostics_path=diagnostics_path)


def all_reduce_floats(values: list[float], context: DistributedContext) -> list[float]:
    """Sum a list of numbers over all ranks (returned unchanged on a single rank)."""
    if not context.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def train_one_epoch(trainer: Trainer, loader: ExampleLoader, cfg: PipelineConfig,
                    epoch: int, context: DistributedContext) -> dict[str, float]:
    """Run one epoch over this rank's batches; return global loss sums and this rank's counts.

    Every rank takes the same number of optimizer steps: the step ends when no rank has a
    batch left. A rank whose batches ran out takes part in each step with zero losses and
    gradients, so the step's gradient is that of the ranks that still had a batch, each
    target counted once (the same semantics as DDP's `Join`, without its averaging).
    """
    trainer.loss.train()
    sums = {task: 0.0 for task in trainer.tasks}
    sums.update({f"{task}_targets": 0.0 for task in trainer.tasks})
    sums.update(sequences=0.0, batches=0.0, steps=0.0, step_seconds=0.0, flops=0.0)

    loader.set_epoch(epoch)
    batches = iter(loader)
    while True:
        # A rank that reached train.max_steps takes part like one whose batches ran out.
        if cfg.train.max_steps and sums["batches"] >= cfg.train.max_steps:
            batch = None
        else:
            batch = next(batches, None)
        started = time.perf_counter()
        report = trainer.step(None if batch is None else batch.to(context.device))
        if report is None:
            break
        sums["step_seconds"] += time.perf_counter() - started
        sums["steps"] += 1
        sums["flops"] += report.flops
        for index, task in enumerate(trainer.tasks):
            sums[task] += float(report.losses[index]) * float(report.counts[index])
            sums[f"{task}_targets"] += float(report.counts[index])
        if batch is not None:
            sums["sequences"] += batch.item.shape[0]
            sums["batches"] += 1
    trainer.strategy.end_epoch()
    return sums


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


def run_training(cfg: PipelineConfig, context: DistributedContext,
                 requested_version: str | None) -> Path | None:
    """Train for `cfg.train.epochs` and save the model; return its folder on rank 0."""
    weights = validate_task_weights(cfg.train.task_weights)
    layout = Layout.from_root(cfg.paths.root)
    manifest = read_manifest(layout.sequences_dir)
    vocab = read_vocab_manifest(layout.vocab_dir)
    model_version = agree_model_version(requested_version, context)

    sequences = read_rank_sequences(layout.sequences_dir, context.rank, context.world_size)
    loader = build_loader(cfg, layout, context, manifest.max_len)
    if loader.dataset.num_examples == 0:
        log.warning("rank %d has no training example; it only joins the all-reduces",
                    context.rank)

    # Same initial weights on every rank (DDP also broadcasts rank 0's), different dropout.
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, vocab, manifest.max_len).to(context.device)
    torch.manual_seed(cfg.train.seed + context.rank)

    broadcast_parameters(model)
    diagnostics_path = None
    if context.is_main:
        diagnostics_path = Path(tempfile.mkdtemp(prefix="behaviorgpt-")) / DIAGNOSTICS_FILE
    trainer = build_trainer(model, cfg, weights, diagnostics_path)

    # The machine's float32 matmul peak, measured in this process with its thread count.
    matmul_peak = measure_matmul_peak(device=context.device)
    log.info("training model %s: %d ranks, %d items, %d categories, %d parameters, tasks %s, "
             "aggregation %s, measured float32 matmul peak %.1f GFLOP/s per rank",
             model_version, context.world_size, model.config.num_items,
             model.config.num_categories,
             sum(p.numel() for p in model.parameters() if p.requires_grad),
             ",".join(trainer.tasks), cfg.train.aggregation, matmul_peak / 1e9)

    history = []
    best_epoch, best_hit_rate, best_state = 0, -1.0, None
    started = time.perf_counter()
    for epoch in range(cfg.train.epochs):
        epoch_started = time.perf_counter()
        loader.reset_wait()
        sums = train_one_epoch(trainer, loader, cfg, epoch, context)
        seconds = time.perf_counter() - epoch_started
        sums["data_wait_seconds"] = loader.reset_wait()
        validation = validation_totals(model, sequences, cfg.train.batch_size, context)

        # Loss sums are already global; sequences, batches and FLOPs are per rank.
        per_rank = ["sequences", "batches", "flops", "data_wait_seconds"]
        totals = dict(sums)
        totals.update(zip(per_rank,
                          all_reduce_floats([sums[key] for key in per_rank], context)))
        hits, ndcg, users = all_reduce_floats(
            [validation.hits, validation.ndcg, float(validation.users)], context)

        record = {"epoch": epoch + 1}
        for task in trainer.tasks:
            record[task] = totals[task] / max(totals[f"{task}_targets"], 1.0)
        record["loss"] = sum(weights[task] * record[task] for task in trainer.tasks)
        record[f"validation_hr@{VALIDATION_K}"] = hits / max(users, 1.0)
        record[f"validation_ndcg@{VALIDATION_K}"] = ndcg / max(users, 1.0)
        record["sequences_per_s"] = totals["sequences"] / seconds
        record["targets_per_s"] = totals.get("next_item_targets", 0.0) / seconds
        record["seconds_per_step"] = sums["step_seconds"] / max(sums["steps"], 1.0)
        # MFU: this rank's model FLOPs per second of step time over its measured peak,
        # averaged over ranks (each rank has its own core and peak).
        record["mfu"] = (totals["flops"] / context.world_size
                         / max(sums["step_seconds"], 1e-9) / matmul_peak)
        # Mean over ranks of the share of the epoch spent waiting for the next batch.
        record["data_wait_fraction"] = totals["data_wait_seconds"] / (context.world_size * seconds)
        history.append(record)

        # Keep the weights of the epoch with the best validation hit rate: with many rare
        # items the vocabulary softmax starts to memorise training targets after a few epochs.
        # Every rank has the same weights, so only rank 0, which saves them, copies them.
        if record[f"validation_hr@{VALIDATION_K}"] > best_hit_rate:
            best_epoch, best_hit_rate = epoch + 1, record[f"validation_hr@{VALIDATION_K}"]
            if context.is_main:
                best_state = {name: tensor.detach().to("cpu", copy=True)
                              for name, tensor in model.state_dict().items()}
        task_losses = ", ".join(f"{task} {record[task]:.4f}" for task in trainer.tasks)
        log.info("epoch %d/%d: loss %.4f (%s) | validation HR@%d %.4f on %d users | "
                 "%.0f sequences/s, %.3f s/step, MFU %.2f%%",
                 epoch + 1, cfg.train.epochs, record["loss"], task_losses, VALIDATION_K,
                 record[f"validation_hr@{VALIDATION_K}"], users, record["sequences_per_s"],
                 record["seconds_per_step"], 100 * record["mfu"])

    batches_per_rank = [int(sums["batches"])]
    wait_per_rank = [sums["data_wait_seconds"] / seconds]
    if context.distributed:
        batches_per_rank = [None] * context.world_size
        dist.all_gather_object(batches_per_rank, int(sums["batches"]))
        wait_per_rank = [None] * context.world_size
        dist.all_gather_object(wait_per_rank, sums["data_wait_seconds"] / seconds)

    summary = {
        "world_size": context.world_size,
        "epochs": cfg.train.epochs,
        "batch_size": cfg.train.batch_size,
        "max_steps": cfg.train.max_steps,
        "learning_rate": cfg.train.learning_rate,
        "weight_decay": cfg.train.weight_decay,
        "seed": cfg.train.seed,
        "task_weights": weights,
        "aggregation": cfg.train.aggregation,
        "matmul_peak_flops": matmul_peak,
        "train_sequences_per_epoch": int(totals["sequences"]),
        "batches_per_rank_per_epoch": batches_per_rank,
        "last_epoch_data_wait_fraction_per_rank": wait_per_rank,
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
        if diagnostics_path.is_file():
            shutil.move(diagnostics_path, model_dir / DIAGNOSTICS_FILE)
        shutil.rmtree(diagnostics_path.parent, ignore_errors=True)
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
