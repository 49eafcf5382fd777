"""Turn a pipeline_scale.py result into the capacity plan of docs/scaling.md.

    PYTHONPATH=lib python benchmarks/capacity_plan.py /tmp/behaviorgpt-scale/report.json

Every input is either a measured number from the benchmark's JSON (`--output`) or one of the
assumptions below, which the printed plan repeats. The plan is an estimate: it extrapolates
per-core rates measured on one machine and assumes that a cluster keeps them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

RAW_SIZES = {"1 TB": 1e12, "100 TB": 1e14, "1 PB": 1e15}

SPARK_STAGES = ("ingest", "sessionize", "sequences")
"""Stages before training; scoring is planned separately because it runs after training."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="JSON written by pipeline_scale.py --output")
    parser.add_argument("--window-hours", type=float, default=4.0,
                        help="wall-clock hours allowed for the Spark stages before training "
                             "and, separately, for scoring (assumption)")
    parser.add_argument("--executor-cores", type=int, default=4,
                        help="cores per Spark executor (assumption)")
    parser.add_argument("--gpu-sequences-per-s", type=float, default=20_000.0,
                        help="training sequences per second on one GPU at the default model "
                             "size (assumption, not measured)")
    parser.add_argument("--epochs", type=int, default=8,
                        help="training epochs per night (the train.epochs default)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with open(args.report, encoding="utf-8") as handle:
        report = json.load(handle)
    print(plan(report, args))
    return 0


def plan(report: dict, args: argparse.Namespace) -> str:
    stages = report["stages"]
    largest = report["results"][-1]
    bytes_per_event = largest["input_bytes"] / largest["events"]
    events_per_user = largest["events"] / largest["users"]

    # Core-seconds per event of the stages before training, then of scoring.
    spark_core_s = sum(1.0 / stages[stage]["events_per_s_per_core"] for stage in SPARK_STAGES)
    score_core_s = 1.0 / stages["score"]["events_per_s_per_core"]
    cpu_sequences_per_s = largest["train_sequences"] / largest["train_loop_s"]
    window_s = args.window_hours * 3600

    lines = [
        "Measured (from the benchmark report):",
        f"  raw CSV: {bytes_per_event:.1f} bytes per event, {events_per_user:.1f} events per user",
        "  events/s per core: " + ", ".join(
            f"{stage} {stages[stage]['events_per_s_per_core']:,.0f}"
            for stage in (*SPARK_STAGES, "score")),
        f"  stages before training: {1 / spark_core_s:,.0f} events/s per core together",
        f"  training loop on CPU: {cpu_sequences_per_s:,.0f} sequences/s with "
        f"{largest['training_cores']} processes",
        "Assumed:",
        f"  {args.window_hours:g} h window for the Spark stages and {args.window_hours:g} h for "
        f"scoring, {args.executor_cores}-core executors, {args.epochs} epochs, "
        f"{args.gpu_sequences_per_s:,.0f} sequences/s per GPU",
        "",
        "| raw events | events | users | Spark core-hours | executors | GPU hours | "
        "scoring core-hours | scoring executors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, raw_bytes in RAW_SIZES.items():
        events = raw_bytes / bytes_per_event
        users = events / events_per_user
        spark_core_h = events * spark_core_s / 3600
        spark_executors = math.ceil(events * spark_core_s / window_s / args.executor_cores)
        gpu_hours = users * args.epochs / args.gpu_sequences_per_s / 3600
        score_core_h = events * score_core_s / 3600
        score_executors = math.ceil(events * score_core_s / window_s / args.executor_cores)
        lines.append(f"| {name} | {events:.2e} | {users:.2e} | {spark_core_h:,.0f} | "
                     f"{spark_executors:,} | {gpu_hours:,.1f} | {score_core_h:,.0f} | "
                     f"{score_executors:,} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
