"""Measure training throughput and MFU at the configured (default) model size.

One process takes optimizer steps (`multitask.Trainer.step`, the step the training job runs)
on synthetic full-length batches and prints a Markdown table with examples/s, tokens/s and
MFU for each precision. MFU is the estimated model FLOPs per second
(`multitask.estimate_step_flops`) over the float32 matmul peak measured in the same process
(`multitask.measure_matmul_peak`, 1024 x 1024 matrices). It is therefore relative to what this
process can reach with its thread count, not to a data-sheet number. The target is an MFU of
at least 0.40 of that peak.

    python benchmarks/train_throughput.py --steps 20 --threads 1
    python benchmarks/train_throughput.py --set model.d_model=128 --precision fp32 bf16

Run it on a quiet machine: other processes on the same cores lower every number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from behaviorgpt.config import load_config
from behaviorgpt.data import Batch
from behaviorgpt.losses import validate_task_weights
from behaviorgpt.multitask import measure_matmul_peak
from behaviorgpt.tokens import NUM_EVENT_TYPE_IDS, NUM_RESERVED_IDS, NUM_TIME_GAP_IDS
from behaviorgpt.train import build_model, build_trainer


def synthetic_batch(batch_size: int, max_len: int, num_items: int, num_categories: int,
                    seed: int) -> Batch:
    """Return a batch of full-length random histories (no padding), as the loader builds."""
    rng = np.random.default_rng(seed)
    width = max_len - 1

    def ids(low: int, high: int, columns: int = width) -> torch.Tensor:
        return torch.from_numpy(rng.integers(low, high, size=(batch_size, columns)))

    return Batch(item=ids(NUM_RESERVED_IDS, num_items),
                 category=ids(NUM_RESERVED_IDS, num_categories),
                 event_type=ids(NUM_RESERVED_IDS, NUM_EVENT_TYPE_IDS),
                 time_gap=ids(NUM_RESERVED_IDS, NUM_TIME_GAP_IDS),
                 session_start=ids(0, 2),
                 lengths=torch.full((batch_size,), width, dtype=torch.int64),
                 target_item=ids(NUM_RESERVED_IDS, num_items),
                 target_category=ids(NUM_RESERVED_IDS, num_categories),
                 target_event_type=ids(NUM_RESERVED_IDS, NUM_EVENT_TYPE_IDS),
                 category_interest=ids(NUM_RESERVED_IDS, num_categories, columns=3),
                 purchase_label=torch.from_numpy(rng.integers(0, 2, batch_size)),
                 return_label=torch.from_numpy(rng.integers(0, 2, batch_size)),
                 example_ids=tuple(f"e{row}" for row in range(batch_size)))


def measure(cfg, precision: str, num_items: int, num_categories: int, steps: int,
            warmup: int, peak: float) -> dict:
    """Time `steps` optimizer steps after `warmup` untimed ones; return one table row."""
    settings = cfg.train
    vocab = {"num_items": num_items, "num_categories": num_categories}
    torch.manual_seed(settings.seed)
    model = build_model(cfg, vocab, cfg.sequences.max_len)
    with_precision = dataclasses.replace(cfg, train=dataclasses.replace(settings,
                                                                      precision=precision))
    trainer = build_trainer(model, with_precision, validate_task_weights(settings.task_weights),
                            diagnostics_path=None, total_steps=warmup + steps)
    trainer.diagnostics_every = 0
    batch = synthetic_batch(settings.batch_size, cfg.sequences.max_len, num_items,
                            num_categories, settings.seed)

    for _ in range(warmup):
        trainer.step(batch)
    flops = 0.0
    started = time.perf_counter()
    for _ in range(steps):
        flops += trainer.step(batch).flops
    seconds = time.perf_counter() - started
    tokens = float(batch.lengths.sum()) * steps
    return {"precision": precision, "d_model": cfg.model.d_model, "n_layer": cfg.model.n_layer,
            "items": num_items, "batch_size": settings.batch_size,
            "max_len": cfg.sequences.max_len, "steps": steps,
            "examples_per_s": settings.batch_size * steps / seconds,
            "tokens_per_s": tokens / seconds, "mfu": flops / seconds / peak,
            "peak_gflops": peak / 1e9}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="local")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, for example model.d_model=128")
    parser.add_argument("--items", type=int, default=20_000,
                        help="item vocabulary size (default: the generator's 20000 items)")
    parser.add_argument("--categories", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: train.num_threads)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"],
                        choices=["fp32", "bf16"])
    parser.add_argument("--output", help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)

    cfg = load_config(args.profile, args.set)
    torch.set_num_threads(args.threads or cfg.train.num_threads)
    peak = measure_matmul_peak()
    rows = [measure(cfg, precision, args.items, args.categories, args.steps, args.warmup, peak)
            for precision in args.precision]

    print(f"float32 matmul peak of this process: {peak / 1e9:.1f} GFLOP/s "
          f"({torch.get_num_threads()} threads)")
    print("| precision | d_model | layers | items | batch | max_len | examples/s | tokens/s "
          "| MFU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['precision']} | {row['d_model']} | {row['n_layer']} | {row['items']} "
              f"| {row['batch_size']} | {row['max_len']} | {row['examples_per_s']:.1f} "
              f"| {row['tokens_per_s']:.0f} | {100 * row['mfu']:.1f}% |")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as output:
            json.dump(rows, output, indent=2)


if __name__ == "__main__":
    main()
