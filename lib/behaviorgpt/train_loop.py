"""The training loop of one model version: epochs, checkpoints and resuming from them.

`behaviorgpt.train.main` sets up the process group and calls `run_training`. `TrainingRun`
runs the epochs, writes the training-state checkpoints (files in `train_state.py`) and
restores them, so that a run resumed from step k takes the same steps k+1, k+2, ... as a run
that never stopped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from behaviorgpt.checkpoint import save_checkpoint
from behaviorgpt.config import PipelineConfig
from behaviorgpt.data import read_manifest, read_rank_sequences, read_vocab_manifest
from behaviorgpt.evaluate import RankingTotals
from behaviorgpt.layout import Layout
from behaviorgpt.losses import validate_task_weights
from behaviorgpt.multitask import broadcast_parameters, measure_matmul_peak
from behaviorgpt.train import (DIAGNOSTICS_FILE, VALIDATION_K, DistributedContext,
                               agree_model_version, all_reduce_floats, build_loader,
                               build_model, build_trainer, estimate_total_steps,
                               validation_totals)
from behaviorgpt.train_metrics import METRICS_FILE, TENSORBOARD_DIR, MetricsWriter
from behaviorgpt.train_state import (join_optimizer_state, latest_training_checkpoint,
                                     read_training_checkpoint, restore_log_files,
                                     split_optimizer_state, write_training_checkpoint)

log = logging.getLogger(__name__)


FAULT_STEP_VARIABLE = "BEHAVIORGPT_FAULT_EXIT_AFTER_STEP"
FAULT_RANK_VARIABLE = "BEHAVIORGPT_FAULT_RANK"


def inject_fault(step: int, rank: int) -> None:
    """Test hook: end this process abruptly after optimizer step `step`, like a killed rank.

    Does nothing unless `BEHAVIORGPT_FAULT_EXIT_AFTER_STEP=<step>` is set. The rank named by
    `BEHAVIORGPT_FAULT_RANK` (default 0) then calls `os._exit(1)` after that step, with no
    cleanup and no barrier. It fires only in the first attempt of a torchrun group
    (`TORCHELASTIC_RESTART_COUNT` unset or 0), so a group that torchrun restarts runs through.
    The tests use it to check resuming; never set it in production.
    """
    planned = os.environ.get(FAULT_STEP_VARIABLE)
    if not planned or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return
    if step == int(planned) and rank == int(os.environ.get(FAULT_RANK_VARIABLE, "0")):
        log.error("fault injection: rank %d exits after step %d (%s is set)", rank, step,
                  FAULT_STEP_VARIABLE)
        logging.shutdown()
        os._exit(1)


def all_gather_bytes(data: bytes, context: DistributedContext) -> list[bytes]:
    """Return every rank's `data`, in rank order, through tensor collectives.

    Used instead of `all_gather_object`, which pickles, so no checkpoint content is pickled.
    """
    if not context.distributed:
        return [data]
    size = torch.tensor([len(data)], dtype=torch.int64, device=context.device)
    sizes = [torch.zeros_like(size) for _ in range(context.world_size)]
    dist.all_gather(sizes, size)
    longest = max(int(item) for item in sizes)

    padded = torch.zeros(max(longest, 1), dtype=torch.uint8)
    padded[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else 0
    padded = padded.to(context.device)
    gathered = [torch.zeros_like(padded) for _ in range(context.world_size)]
    dist.all_gather(gathered, padded)
    return [bytes(tensor[:int(count)].cpu().numpy()) for tensor, count in zip(gathered, sizes)]


def new_epoch_sums(tasks: tuple[str, ...]) -> dict[str, float]:
    """Running sums of one epoch on one rank (the task loss sums are global)."""
    sums = {task: 0.0 for task in tasks}
    sums.update({f"{task}_targets": 0.0 for task in tasks})
    sums.update(sequences=0.0, tokens=0.0, batches=0.0, steps=0.0, step_seconds=0.0,
                flops=0.0, epoch_seconds=0.0, data_wait_seconds=0.0)
    return sums


class TrainingRun:
    """One model version's training: the loop, its checkpoints and resuming from them.

    Every rank has the same model, optimizer, schedule and strategy state. Each rank has its
    own loader position, random generator and partial epoch sums. A checkpoint records all of
    it, so a run resumed from step k takes the same steps k+1, k+2, ... as a run that never
    stopped and ends with bit-identical weights.
    """

    def __init__(self, cfg: PipelineConfig, context: DistributedContext, layout: Layout,
                 model_version: str) -> None:
        self.cfg = cfg
        self.context = context
        self.layout = layout
        self.model_version = model_version
        self.weights = validate_task_weights(cfg.train.task_weights)
        self.checkpoints_dir = layout.training_checkpoints_dir(model_version)

        manifest = read_manifest(layout.sequences_dir)
        self.vocab = read_vocab_manifest(layout.vocab_dir)
        self.sequences = read_rank_sequences(layout.sequences_dir, context.rank,
                                             context.world_size)
        self.loader = build_loader(cfg, layout, context, manifest.max_len)
        if self.loader.dataset.num_examples == 0:
            log.warning("rank %d has no training example; it only joins the all-reduces",
                        context.rank)

        # Same initial weights on every rank (DDP also broadcasts rank 0's), different dropout.
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg, self.vocab, manifest.max_len).to(context.device)
        torch.manual_seed(cfg.train.seed + context.rank)

        # Rank 0 keeps the JSON lines logs in a private folder until the model folder exists.
        self.work_dir = Path(tempfile.mkdtemp(prefix="behaviorgpt-")) if context.is_main else None
        diagnostics_path = self.work_dir / DIAGNOSTICS_FILE if context.is_main else None
        self.total_steps = estimate_total_steps(cfg, layout, context.world_size)
        self.trainer = build_trainer(self.model, cfg, self.weights, diagnostics_path,
                                     self.total_steps)

        self.epoch = 0
        """Index of the epoch in progress, or of the next one at an epoch boundary."""
        self.partial_sums: dict | None = None
        self.history: list[dict] = []
        self.best_epoch, self.best_hit_rate = 0, -1.0
        self.best_state: dict[str, torch.Tensor] | None = None

    @property
    def log_files(self) -> list[Path]:
        return [self.work_dir / DIAGNOSTICS_FILE, self.work_dir / METRICS_FILE]

    def restore(self, folder: Path) -> None:
        """Load a training-state checkpoint written by `save_checkpoint` (on every rank)."""
        tensors, state = read_training_checkpoint(folder)
        if state["world_size"] != self.context.world_size:
            raise ValueError(f"{folder} was written by {state['world_size']} ranks but this run "
                             f"has {self.context.world_size}; resume with the same number of "
                             f"ranks (train.nproc) or train a new model version")
        self.model.load_state_dict(tensors["model"])
        self.trainer.optimizer.load_state_dict(
            join_optimizer_state(tensors["optimizer"], state["optimizer"]))
        self.trainer.scheduler.load_state_dict(state["scheduler"])
        self.trainer.strategy.set_state(tensors["strategy"])
        self.trainer.step_count = state["step_count"]

        mine = state["ranks"][self.context.rank]
        self.loader.load_state_dict(mine["loader"])
        self.partial_sums = mine["sums"]
        torch.set_rng_state(tensors["ranks"][f"rank{self.context.rank}.cpu"])
        cuda_state = tensors["ranks"].get(f"rank{self.context.rank}.cuda")
        if cuda_state is not None and self.context.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_state, self.context.device)

        self.epoch = state["epoch"]
        self.history = state["history"]
        self.best_epoch, self.best_hit_rate = state["best_epoch"], state["best_hit_rate"]
        if self.context.is_main:
            self.best_state = tensors.get("best_model")
            restore_log_files(folder, self.work_dir)
        log.info("resumed model %s from %s: step %d, epoch %d", self.model_version, folder,
                 self.trainer.step_count, self.epoch + 1)

    def save_checkpoint(self, sums: dict | None) -> None:
        """Write a training-state checkpoint (rank 0) while the other ranks wait at a barrier.

        `sums` is this rank's partial epoch sums mid-epoch, None at an epoch boundary. Every
        rank must call this at the same step, because the ranks' states are gathered first.
        """
        rank_state = json.dumps({"loader": self.loader.state_dict(), "sums": sums}).encode()
        rank_states = all_gather_bytes(rank_state, self.context)
        generators = all_gather_bytes(torch.get_rng_state().numpy().tobytes(), self.context)
        # NOTE: no test runs on CUDA; there dropout draws from the device generator, saved
        # below, but kernels may still differ between runs, so resuming is not bit-exact.
        cuda_generators = []
        if self.context.device.type == "cuda":
            cuda_generators = all_gather_bytes(
                torch.cuda.get_rng_state(self.context.device).numpy().tobytes(), self.context)

        if self.context.is_main:
            optimizer_tensors, optimizer_state = split_optimizer_state(
                self.trainer.optimizer.state_dict())
            tensors = {"model": self.model.state_dict(), "optimizer": optimizer_tensors,
                       "strategy": self.trainer.strategy.get_state(),
                       "ranks": {f"rank{rank}.cpu": torch.frombuffer(bytearray(data),
                                                                    dtype=torch.uint8)
                                 for rank, data in enumerate(generators)}}
            tensors["ranks"].update({f"rank{rank}.cuda": torch.frombuffer(bytearray(data),
                                                                        dtype=torch.uint8)
                                     for rank, data in enumerate(cuda_generators)})
            if self.best_state is not None:
                tensors["best_model"] = self.best_state
            state = {"model_version": self.model_version,
                     "world_size": self.context.world_size,
                     "step_count": self.trainer.step_count, "epoch": self.epoch,
                     "history": self.history, "best_epoch": self.best_epoch,
                     "best_hit_rate": self.best_hit_rate, "optimizer": optimizer_state,
                     "scheduler": self.trainer.scheduler.state_dict(),
                     "ranks": [json.loads(data) for data in rank_states]}
            folder = write_training_checkpoint(self.checkpoints_dir, self.trainer.step_count,
                                               tensors, state, self.log_files,
                                               keep=self.cfg.train.keep_checkpoints)
            log.info("wrote training checkpoint %s", folder)
        # The other ranks wait here, inside the process group timeout, until it is written.
        if self.context.distributed:
            dist.barrier()

    def train_epoch(self, epoch: int, metrics: MetricsWriter) -> dict[str, float]:
        """Run (the rest of) one epoch over this rank's batches; return its sums.

        Every rank takes the same number of optimizer steps: the step ends when no rank has a
        batch left. A rank whose batches ran out takes part in each step with zero losses and
        gradients, so the step's gradient is that of the ranks that still had a batch, each
        target counted once (the same semantics as DDP's `Join`, without its averaging).
        """
        settings = self.cfg.train
        trainer = self.trainer
        trainer.loss.train()
        sums = self.partial_sums or new_epoch_sums(trainer.tasks)
        self.partial_sums = None
        carried_seconds = sums["epoch_seconds"]

        # A rank restored after its batches ran out has a loader already at the next epoch.
        if self.loader.epoch > epoch:
            batches = iter(())
        else:
            self.loader.set_epoch(epoch)
            batches = iter(self.loader)
        self.loader.reset_wait()
        started = time.perf_counter()
        window = WindowCounter()
        metrics.start_epoch(epoch + 1, int(sums["steps"]))
        while True:
            # A rank that reached train.max_steps takes part like one whose batches ran out.
            if settings.max_steps and sums["batches"] >= settings.max_steps:
                batch = None
            else:
                batch = next(batches, None)
            learning_rate = trainer.optimizer.param_groups[0]["lr"]
            step_started = time.perf_counter()
            report = trainer.step(None if batch is None else batch.to(self.context.device))
            if report is None:
                break

            sums["step_seconds"] += time.perf_counter() - step_started
            sums["steps"] += 1
            sums["flops"] += report.flops
            for index, task in enumerate(trainer.tasks):
                sums[task] += float(report.losses[index]) * float(report.counts[index])
                sums[f"{task}_targets"] += float(report.counts[index])
            if batch is not None:
                window.add(batch.item.shape[0], float(batch.lengths.sum()), report.flops)
                sums["sequences"] += batch.item.shape[0]
                sums["tokens"] += float(batch.lengths.sum())
                sums["batches"] += 1
            sums["epoch_seconds"] = carried_seconds + time.perf_counter() - started
            metrics.advance()

            step = trainer.step_count
            if settings.log_every and step % settings.log_every == 0:
                loss = sum(self.weights[task] * float(report.losses[index])
                           for index, task in enumerate(trainer.tasks))
                self.log_step(window, metrics, epoch, step, loss, learning_rate)
            if settings.checkpoint_every and step % settings.checkpoint_every == 0:
                sums["data_wait_seconds"] += self.loader.reset_wait()
                self.save_checkpoint(sums)
            inject_fault(step, self.context.rank)

        trainer.strategy.end_epoch()
        sums["data_wait_seconds"] += self.loader.reset_wait()
        sums["epoch_seconds"] = carried_seconds + time.perf_counter() - started
        return sums

    def log_step(self, window: "WindowCounter", metrics: MetricsWriter, epoch: int, step: int,
                 loss: float, learning_rate: float) -> None:
        """Sum the window's counts over the ranks (all ranks call this) and log them."""
        examples, tokens, flops = all_reduce_floats(
            [window.examples, window.tokens, window.flops], self.context)
        seconds = max(time.perf_counter() - window.started, 1e-9)
        metrics.write_step({
            "kind": "step", "step": step, "epoch": epoch + 1, "loss": loss,
            "learning_rate": learning_rate, "examples_per_s": examples / seconds,
            "tokens_per_s": tokens / seconds,
            # Model FLOPs per second of wall time (data waits included) per rank, over the
            # rank's measured float32 matmul peak.
            "mfu": flops / self.context.world_size / seconds / self.matmul_peak})
        window.reset()

    def epoch_record(self, epoch: int, sums: dict[str, float],
                     validation: RankingTotals) -> dict:
        """Turn an epoch's sums (global losses, per-rank counts) into its history record."""
        context = self.context
        per_rank = ["sequences", "tokens", "batches", "flops", "data_wait_seconds"]
        totals = dict(sums)
        totals.update(zip(per_rank,
                          all_reduce_floats([sums[key] for key in per_rank], context)))
        hits, ndcg, users = all_reduce_floats(
            [validation.hits, validation.ndcg, float(validation.users)], context)
        seconds = max(sums["epoch_seconds"], 1e-9)

        record = {"epoch": epoch + 1}
        for task in self.trainer.tasks:
            record[task] = totals[task] / max(totals[f"{task}_targets"], 1.0)
        record["loss"] = sum(self.weights[task] * record[task] for task in self.trainer.tasks)
        record[f"validation_hr@{VALIDATION_K}"] = hits / max(users, 1.0)
        record[f"validation_ndcg@{VALIDATION_K}"] = ndcg / max(users, 1.0)
        record["validation_users"] = int(users)
        record["sequences_per_s"] = totals["sequences"] / seconds
        record["tokens_per_s"] = totals["tokens"] / seconds
        record["targets_per_s"] = totals.get("next_item_targets", 0.0) / seconds
        record["seconds_per_step"] = sums["step_seconds"] / max(sums["steps"], 1.0)
        # MFU: this rank's model FLOPs per second of step time over its measured peak,
        # averaged over ranks (each rank has its own core and peak).
        record["mfu"] = (totals["flops"] / context.world_size
                         / max(sums["step_seconds"], 1e-9) / self.matmul_peak)
        # Mean over ranks of the share of the epoch spent waiting for the next batch.
        record["data_wait_fraction"] = totals["data_wait_seconds"] / (context.world_size * seconds)
        record["train_sequences"] = int(totals["sequences"])
        return record

    def keep_if_best(self, record: dict) -> None:
        """Keep the weights of the epoch with the best validation hit rate.

        With many rare items the vocabulary softmax starts to memorise training targets after
        a few epochs. Every rank has the same weights, so only rank 0, which saves them,
        copies them.
        """
        hit_rate = record[f"validation_hr@{VALIDATION_K}"]
        if hit_rate > self.best_hit_rate:
            self.best_epoch, self.best_hit_rate = record["epoch"], hit_rate
            if self.context.is_main:
                self.best_state = {name: tensor.detach().to("cpu", copy=True)
                                   for name, tensor in self.model.state_dict().items()}

    def should_stop_early(self) -> bool:
        patience = self.cfg.train.early_stopping_patience
        return bool(patience and self.history
                    and self.history[-1]["epoch"] - self.best_epoch >= patience)

    def run(self) -> Path | None:
        """Train the remaining epochs and save the model; return its folder on rank 0."""
        cfg, context = self.cfg, self.context
        # The machine's float32 matmul peak, measured in this process with its thread count.
        self.matmul_peak = measure_matmul_peak(device=context.device)
        log.info("training model %s: %d ranks, %d items, %d categories, %d parameters, "
                 "tasks %s, aggregation %s, precision %s, about %d steps, measured float32 "
                 "matmul peak %.1f GFLOP/s per rank", self.model_version, context.world_size,
                 self.model.config.num_items, self.model.config.num_categories,
                 sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                 ",".join(self.trainer.tasks), cfg.train.aggregation, cfg.train.precision,
                 self.total_steps, self.matmul_peak / 1e9)

        metrics = MetricsWriter(
            self.work_dir / METRICS_FILE if context.is_main else Path(),
            self.checkpoints_dir / TENSORBOARD_DIR, purge_step=self.trainer.step_count + 1,
            steps_per_epoch=max(self.total_steps // cfg.train.epochs, 1),
            enabled=context.is_main)
        started = time.perf_counter()
        sums = None
        try:
            for epoch in range(self.epoch, cfg.train.epochs):
                if self.should_stop_early():
                    break
                sums = self.train_epoch(epoch, metrics)
                validation = validation_totals(self.model, self.sequences,
                                               cfg.train.batch_size, context)
                record = self.epoch_record(epoch, sums, validation)
                self.history.append(record)
                self.keep_if_best(record)
                self.epoch = epoch + 1
                metrics.write_epoch(record, self.trainer.step_count)
                self.log_epoch(record)
                self.save_checkpoint(None)
                if self.should_stop_early():
                    log.info("early stopping: no better validation HR@%d for %d epochs",
                             VALIDATION_K, cfg.train.early_stopping_patience)
                    break
        finally:
            metrics.close()
        return self.save_model(sums, time.perf_counter() - started)

    def log_epoch(self, record: dict) -> None:
        task_losses = ", ".join(f"{task} {record[task]:.4f}" for task in self.trainer.tasks)
        log.info("epoch %d/%d: loss %.4f (%s) | validation HR@%d %.4f on %d users | "
                 "%.0f sequences/s, %.3f s/step, MFU %.2f%%",
                 record["epoch"], self.cfg.train.epochs, record["loss"], task_losses,
                 VALIDATION_K, record[f"validation_hr@{VALIDATION_K}"],
                 record["validation_users"], record["sequences_per_s"],
                 record["seconds_per_step"], 100 * record["mfu"])

    def save_model(self, sums: dict | None, seconds: float) -> Path | None:
        """Save the best epoch's weights as the new candidate model (rank 0)."""
        context, cfg = self.context, self.cfg
        batches = -1 if sums is None else int(sums["batches"])
        wait = 0.0 if sums is None else sums["data_wait_seconds"] / max(sums["epoch_seconds"],
                                                                         1e-9)
        batches_per_rank = [int(json.loads(data)) for data in
                            all_gather_bytes(json.dumps(batches).encode(), context)]
        wait_per_rank = [float(json.loads(data)) for data in
                         all_gather_bytes(json.dumps(wait).encode(), context)]
        last = self.history[-1]
        summary = {
            "world_size": context.world_size,
            "epochs": cfg.train.epochs,
            "epochs_run": len(self.history),
            "batch_size": cfg.train.batch_size,
            "max_steps": cfg.train.max_steps,
            "steps": self.trainer.step_count,
            "learning_rate": cfg.train.learning_rate,
            "warmup_steps": cfg.train.warmup_steps,
            "min_learning_rate_ratio": cfg.train.min_learning_rate_ratio,
            "weight_decay": cfg.train.weight_decay,
            "precision": cfg.train.precision,
            "seed": cfg.train.seed,
            "warm_start": cfg.train.warm_start,
            "task_weights": self.weights,
            "aggregation": cfg.train.aggregation,
            "matmul_peak_flops": self.matmul_peak,
            "train_sequences_per_epoch": last["train_sequences"],
            # -1 for a rank whose last epoch this process did not run (resumed at its end).
            "batches_per_rank_per_epoch": batches_per_rank,
            "last_epoch_data_wait_fraction_per_rank": wait_per_rank,
            "train_seconds": seconds,
            "history": self.history,
            "selected_epoch": self.best_epoch,
        }

        model_dir = None
        if context.is_main:
            self.model.load_state_dict(self.best_state)
            model_dir = save_checkpoint(self.model, self.layout, self.model_version,
                                        self.layout.vocab_dir, summary)
            for path in self.log_files:
                if path.is_file():
                    shutil.move(path, model_dir / path.name)
            board = self.checkpoints_dir / TENSORBOARD_DIR
            if board.is_dir():
                shutil.copytree(board, model_dir / TENSORBOARD_DIR)
            shutil.rmtree(self.work_dir, ignore_errors=True)
            best = self.history[self.best_epoch - 1]
            log.info("trained model %s: %d epochs run, best epoch %d (validation HR@%d %.4f, "
                     "NDCG@%d %.4f), %.0f examples/s, MFU %.1f%%, %.0f s; saved to %s",
                     self.model_version, len(self.history), self.best_epoch, VALIDATION_K,
                     best[f"validation_hr@{VALIDATION_K}"], VALIDATION_K,
                     best[f"validation_ndcg@{VALIDATION_K}"], last["sequences_per_s"],
                     100 * last["mfu"], seconds, model_dir)
        # Other ranks wait here, inside the process group timeout, until the model exists.
        if context.distributed:
            dist.barrier()
        return model_dir


class WindowCounter:
    """This rank's examples, tokens and FLOPs since the last progress line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.examples = self.tokens = self.flops = 0.0
        self.started = time.perf_counter()

    def add(self, examples: int, tokens: float, flops: float) -> None:
        self.examples += examples
        self.tokens += tokens
        self.flops += flops


def run_training(cfg: PipelineConfig, context: DistributedContext,
                 requested_version: str | None, resume: bool = False) -> Path | None:
    """Train (or continue training) a model version and save it; return its folder on rank 0.

    With `resume`, the newest training-state checkpoint of the version is loaded; without
    one, training starts from the beginning. Without `resume`, existing checkpoints of the
    version are an error, so two runs never mix their states.
    """
    layout = Layout.from_root(cfg.paths.root)
    model_version = agree_model_version(requested_version, context)
    model_dir = layout.model_dir(model_version)
    if resume and (model_dir / "model_config.json").is_file():
        log.info("model %s is already trained (%s); nothing to resume", model_version,
                 model_dir)
        return model_dir if context.is_main else None

    if model_dir.exists() and not resume:
        raise FileExistsError(f"model folder {model_dir} already exists; pass another "
                              f"--model-version or remove the folder")
    checkpoints_dir = layout.training_checkpoints_dir(model_version)
    latest = latest_training_checkpoint(checkpoints_dir)
    if latest is not None and not resume:
        raise FileExistsError(f"{checkpoints_dir} already has training checkpoints of model "
                              f"{model_version}; pass --resume to continue them, or another "
                              f"--model-version")

    run = TrainingRun(cfg, context, layout, model_version)
    if latest is not None:
        run.restore(latest)
    else:
        if resume:
            log.warning("no training checkpoint under %s: training model %s from the start",
                        checkpoints_dir, model_version)
        if cfg.train.warm_start:
            from behaviorgpt.warm_start import load_serving_weights

            load_serving_weights(run.model, layout, layout.vocab_dir)
    broadcast_parameters(run.model)
    return run.run()
