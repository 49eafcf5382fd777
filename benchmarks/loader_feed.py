"""Measure how well the example loader feeds 2-rank DDP training on a real event log.

Builds the example shards with the Spark stages (ingest, sessionize, sequences), reports the
padding fraction of the length-bucketed training batches, then trains with torchrun on 2
ranks (gloo on CPU) and reports each rank's time waiting for the next batch as a fraction of
its epoch time.

    PYTHONPATH=lib python benchmarks/loader_feed.py --input path/to/UserBehavior.csv \\
        --root /tmp/loader-bench

`--skip-build` reuses shards already under `--root`.
"""

from __future__ import annotations

import argparse
import json
import logging

from behaviorgpt.config import load_config
from behaviorgpt.loader import ExampleLoader, ExampleStream
from behaviorgpt.pipeline import RunContext, run_stages


def padding_fraction(sequences_dir, *, world_size: int, batch_size: int, bucket_batches: int,
                     max_len: int) -> dict:
    """Share of the batch slots that are padding, over all ranks' batches of one epoch."""
    real = slots = batches = 0
    for rank in range(world_size):
        dataset = ExampleStream(sequences_dir, rank=rank, world_size=world_size,
                                batch_size=batch_size, seed=0, max_len=max_len,
                                bucket_batches=bucket_batches)
        for batch in ExampleLoader(dataset):
            real += int(batch.lengths.sum())
            slots += batch.item.numel()
            batches += 1
    return {"bucket_batches": bucket_batches, "batches": batches,
            "padding_fraction": 1 - real / slots}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", help="Taobao-format event log (CSV)")
    parser.add_argument("--root", required=True, help="folder for the tables and shards")
    parser.add_argument("--skip-build", action="store_true", help="reuse shards under --root")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, for example train.epochs=2")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    overrides = [f"paths.root={args.root}", "run_date=2017-12-04", "train.nproc=2",
                 "train.epochs=2", *args.set]
    if args.input:
        overrides.append(f"paths.input={args.input}")
    config = load_config("local", overrides)
    context = RunContext.create(config, profile="local", conf_dir=None, overrides=overrides)
    if not args.skip_build:
        run_stages(context, ["ingest", "sessionize", "sequences"])
        context.spark.stop()

    sequences_dir = context.layout.sequences_dir
    padding = [padding_fraction(sequences_dir, world_size=2, batch_size=config.train.batch_size,
                                bucket_batches=value, max_len=config.sequences.max_len)
               for value in (1, config.train.bucket_batches)]

    run_stages(context, ["train"])
    description = json.loads((context.layout.latest_model_dir() / "model_config.json")
                             .read_text(encoding="utf-8"))
    training = description["training"]
    report = {
        "padding": padding,
        "batches_per_rank_per_epoch": training["batches_per_rank_per_epoch"],
        "data_wait_fraction_per_epoch": [record["data_wait_fraction"]
                                         for record in training["history"]],
        "last_epoch_data_wait_fraction_per_rank":
            training["last_epoch_data_wait_fraction_per_rank"],
        "loader_workers": config.train.loader_workers,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
