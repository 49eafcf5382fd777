"""Compare single-task training with multi-task training under each aggregation strategy.

Every run starts from the same weights and trains the same number of epochs over the same
batches on one process, then scores the leave-one-out test view:

- next item: HR@10 and NDCG@10 of the held-out last event, over the whole item vocabulary;
- purchase and return: AUC at one cutoff per user, `train.window_events` events before the
  end of the test view's input;
- category interest: mAP over the real categories at the same cutoff.

It prints a Markdown table (and writes the results as JSON with `--output`) with the mean
seconds per optimizer step during training and its ratio to the fixed-weights run. Because
other work on the machine changes those means, it also times every run round-robin on the
same batches (`--timing-rounds`) and reports the medians.

Prepare the sequences once from the Taobao slice, then run the benchmark:

    behaviorgpt ingest --input UserBehavior.csv --root /tmp/bench --date 2017-12-04
    behaviorgpt sessionize --root /tmp/bench --date 2017-12-04
    behaviorgpt sequences --root /tmp/bench --date 2017-12-04
    python benchmarks/multitask.py --root /tmp/bench --epochs 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time

import numpy as np
import torch

from behaviorgpt.aggregation import STRATEGIES
from behaviorgpt.config import load_config
from behaviorgpt.data import (eligible_rows, read_manifest, read_rank_sequences,
                              read_vocab_manifest, training_batches)
from behaviorgpt.evaluate import RankingTotals, model_top_items, window_task_metrics
from behaviorgpt.layout import Layout
from behaviorgpt.losses import TASKS, validate_task_weights
from behaviorgpt.multitask import measure_matmul_peak
from behaviorgpt.train import DistributedContext, build_model, build_trainer

log = logging.getLogger("benchmarks.multitask")

K = 10


def run_one(cfg, label: str, strategy: str, weights: dict[str, float], sequences, vocab: dict,
            max_len: int, matmul_peak: float) -> dict:
    """Train one configuration from the shared initial weights and score it on the test view."""
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, aggregation=strategy))
    context = DistributedContext(rank=0, local_rank=0, world_size=1,
                                 device=torch.device("cpu"))
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, vocab, max_len)
    batches_per_epoch = math.ceil(len(eligible_rows(sequences, "train")) / cfg.train.batch_size)
    trainer = build_trainer(model, cfg, weights, diagnostics_path=None,
                            total_steps=batches_per_epoch * cfg.train.epochs)

    step_seconds, steps, flops = 0.0, 0.0, 0.0
    started = time.perf_counter()
    for epoch in range(cfg.train.epochs):
        trainer.loss.train()
        for batch in training_batches(sequences, cfg.train.batch_size, cfg.train.seed, epoch,
                                      context.rank):
            step_started = time.perf_counter()
            report = trainer.step(batch)
            step_seconds += time.perf_counter() - step_started
            steps += 1
            flops += report.flops
        trainer.strategy.end_epoch()
    train_seconds = time.perf_counter() - started

    model.eval()
    ranking = RankingTotals()
    for top_ids, targets in model_top_items(model, sequences, "test", K, 256):
        ranking.add(top_ids, targets)
    window = window_task_metrics(model, sequences, "test", cfg.train.window_events,
                                 cfg.train.return_days, 256)
    result = {"run": label, "strategy": strategy, "tasks": list(trainer.tasks),
              **ranking.as_dict(K), **window, "users": ranking.users, "steps": int(steps),
              "seconds_per_step": step_seconds / max(steps, 1.0),
              "train_seconds": train_seconds,
              "mfu": flops / max(step_seconds, 1e-9) / matmul_peak}
    log.info("%s", json.dumps(result))
    return result


def interleaved_step_seconds(cfg, runs: list[tuple[str, str, dict]], sequences, vocab: dict,
                             max_len: int, rounds: int) -> dict[str, float]:
    """Return the median seconds per optimizer step of each run, timed round-robin.

    Each round times one step of every run on the same batch, one run after the other, so a
    change in machine load affects every run alike.
    """
    context = DistributedContext(rank=0, local_rank=0, world_size=1,
                                 device=torch.device("cpu"))
    trainers = {}
    for label, strategy, weights in runs:
        run_cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, aggregation=strategy))
        torch.manual_seed(cfg.train.seed)
        trainers[label] = build_trainer(build_model(run_cfg, vocab, max_len), run_cfg,
                                        weights, diagnostics_path=None, total_steps=rounds)
    batches = list(training_batches(sequences, cfg.train.batch_size, cfg.train.seed, 0,
                                    context.rank))
    times: dict[str, list[float]] = {label: [] for label in trainers}
    for round_index in range(rounds):
        batch = batches[round_index % len(batches)]
        for label, trainer in trainers.items():
            started = time.perf_counter()
            trainer.step(batch)
            times[label].append(time.perf_counter() - started)
    return {label: float(np.median(values)) for label, values in times.items()}


def markdown_table(results: list[dict]) -> str:
    fixed = next((r for r in results if r["run"] == "multi-task fixed"), results[0])
    lines = ["| run | HR@10 | NDCG@10 | purchase AUC | return AUC | interest mAP | s/step | "
             "x fixed | MFU | s/step interleaved | x fixed interleaved |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        interleaved = r.get("interleaved_seconds_per_step", math.nan)
        interleaved_ratio = interleaved / fixed.get("interleaved_seconds_per_step", math.nan)
        lines.append(
            f"| {r['run']} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | {_fmt(r['purchase_auc'])} "
            f"| {_fmt(r['return_auc'])} | {_fmt(r['category_interest_map'])} | "
            f"{r['seconds_per_step']:.3f} | {r['seconds_per_step'] / fixed['seconds_per_step']:.2f}"
            f" | {100 * r['mfu']:.2f}% | {_fmt(interleaved, 3)} | {_fmt(interleaved_ratio, 2)} |")
    return "\n".join(lines)


def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="warehouse root with sequences/")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help="comma-separated strategies to run (default: all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override, for example model.d_model=128")
    parser.add_argument("--timing-rounds", type=int, default=10,
                        help="rounds of the interleaved step timing (0 skips it)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_config("local", [f"paths.root={args.root}", f"train.epochs={args.epochs}",
                                *args.set])
    torch.set_num_threads(cfg.train.num_threads)
    layout = Layout.from_root(cfg.paths.root)
    manifest = read_manifest(layout.sequences_dir)
    vocab = read_vocab_manifest(layout.vocab_dir)
    sequences = read_rank_sequences(layout.sequences_dir, rank=0, world_size=1)
    matmul_peak = measure_matmul_peak()
    log.info("%d users, %d items, %d categories; float32 matmul peak %.1f GFLOP/s on %d "
             "threads", len(sequences), vocab["num_items"], vocab["num_categories"],
             matmul_peak / 1e9, torch.get_num_threads())

    multi = validate_task_weights(cfg.train.task_weights)
    single = {task: (1.0 if task == "next_item" else 0.0) for task in TASKS}
    runs = [("single-task (next item)", "fixed", single)]
    runs += [(f"multi-task {name}", name, multi) for name in args.strategies.split(",")]

    results = [run_one(cfg, label, strategy, weights, sequences, vocab, manifest.max_len,
                       matmul_peak) for label, strategy, weights in runs]
    if args.timing_rounds:
        medians = interleaved_step_seconds(cfg, runs, sequences, vocab, manifest.max_len,
                                           args.timing_rounds)
        for result in results:
            result["interleaved_seconds_per_step"] = medians[result["run"]]
    print(markdown_table(results))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as output:
            json.dump({"matmul_peak_flops": matmul_peak, "epochs": args.epochs,
                       "users": len(sequences), "results": results}, output, indent=2)
    return results


if __name__ == "__main__":
    main()
