"""Time the whole pipeline on generated logs of growing size and check that its cost is linear.

    PYTHONPATH=lib python benchmarks/pipeline_scale.py                    # 1 M, 4 M, 16 M events
    PYTHONPATH=lib python benchmarks/pipeline_scale.py --sizes 250000,1000000,4000000

For each size the script generates a Taobao-format log with the embedded generator (not
timed). A fresh child process then runs ingest, sessionize, sequences, one training epoch of
`--train-steps` optimizer steps per rank, and scoring, so every size starts a new JVM and
its memory peaks are its own. Evaluation is left out because it is not part of the
nightly path.

Fixed start-up costs are measured, not guessed. The Spark session start is timed on its
own. Each stage's fixed cost (job scheduling, Delta commits, torchrun and model start-up,
the fixed training steps) is its time on a tiny baseline log (`--baseline-events`), and the
linearity check subtracts it: linearity = (t(16 M) - t(base)) / (4 * (t(4 M) - t(base))),
which is 1.0 for a perfectly linear stage; the target is <= 1.15.

Memory is the resident set size (RSS, from psutil, sampled every 0.2 s) of the processes
under the driver: the driver JVM (in local mode it also hosts the executors' task threads,
so its RSS is driver and executor JVM memory together), the executors' Python workers
(summed), and the torchrun training processes (summed). A JVM's RSS includes heap that it
has grown but not returned, so it is an upper bound of what the JVM needs.

Catalogue size (items, categories) is held fixed across sizes, so the model, and the cost
of one training step or one scored user, is the same at every size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil

STAGES = ("ingest", "sessionize", "sequences", "train", "score")
LINEAR_TARGET = 1.15
MEBIBYTE = 1024 * 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,4000000,16000000",
                        help="comma-separated event counts; the ratios use the first, and the "
                             "linearity check the last two (default: 1 M, 4 M, 16 M)")
    parser.add_argument("--baseline-events", type=int, default=20_000,
                        help="events in the tiny log whose stage times are the fixed costs")
    parser.add_argument("--root", default="/tmp/behaviorgpt-scale",
                        help="folder for the generated logs and each size's warehouse")
    parser.add_argument("--master", default="local[2]", help="Spark master of every run")
    parser.add_argument("--train-steps", type=int, default=20,
                        help="optimizer steps per rank in the one training epoch")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="extra pipeline config override")
    parser.add_argument("--output", help="write the measurements as JSON to this file")
    parser.add_argument("--resume", action="store_true",
                        help="reuse a size's result-<events>.json under --root from an earlier "
                             "run with the same settings instead of running it again")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_one_size(args)

    root = Path(args.root)
    sizes = [int(size) for size in args.sizes.split(",")]
    results = []
    for events in [args.baseline_events, *sizes]:
        log_path = generate_log(root / "inputs" / str(events), events)
        result_path = root / f"result-{events}.json"
        command = [sys.executable, __file__, "--child", str(log_path), "--events", str(events),
                   "--root", str(root / f"warehouse-{events}"), "--master", args.master,
                   "--train-steps", str(args.train_steps), "--output", str(result_path)]
        for override in args.overrides:
            command += ["--set", override]
        if not (args.resume and result_path.is_file()):
            print(f"running {events:,} events ...", file=sys.stderr, flush=True)
            subprocess.run(command, check=True)
        results.append(json.loads(result_path.read_text(encoding="utf-8")))

    report = summarize(results, master=args.master, train_steps=args.train_steps)
    print(report["text"])
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def generate_log(folder: Path, events: int) -> Path:
    """Write (once) a generated log of about `events` events and return its CSV path."""
    from behaviorgpt.config import GeneratorConfig
    from behaviorgpt.generator import EVENTS_FILE, generate_event_log

    path = folder / EVENTS_FILE
    if path.is_file():
        return path
    defaults = GeneratorConfig()
    users = max(1, round(events / defaults.mean_events_per_user))
    generate_event_log(folder, replace(defaults, users=users))
    return path


# ---- one size, in a child process -------------------------------------------------------

class MemorySampler:
    """Sample the RSS of this process's descendants by role and keep each role's peak."""

    ROLES = ("driver_jvm", "executor_jvms", "python_workers", "training")

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.peaks = dict.fromkeys(self.ROLES, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def reset(self) -> dict:
        """Return the peaks since the last reset, in MiB, and start new ones."""
        peaks = {role: round(value / MEBIBYTE) for role, value in self.peaks.items()}
        self.peaks = dict.fromkeys(self.ROLES, 0)
        return peaks

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self.interval_s):
            totals = dict.fromkeys(self.ROLES, 0)
            for process in me.children(recursive=True):
                try:
                    role = self._role(process)
                    if role:
                        totals[role] += process.memory_info().rss
                except psutil.Error:
                    continue
            for role, value in totals.items():
                self.peaks[role] = max(self.peaks[role], value)

    @staticmethod
    def _role(process: psutil.Process) -> str | None:
        command = " ".join(process.cmdline())
        if process.name() == "java":
            # Executor JVMs (local-cluster) are started by the driver JVM's workers.
            parent = process.parent()
            return "executor_jvms" if parent and parent.name() == "java" else "driver_jvm"
        if "pyspark.daemon" in command or "pyspark.worker" in command:
            return "python_workers"
        if "torch.distributed.run" in command or "behaviorgpt.train" in command:
            return "training"
        return None


def run_one_size(args: argparse.Namespace) -> int:
    from behaviorgpt.config import load_config
    from behaviorgpt.pipeline import STAGE_FUNCTIONS, RunContext

    overrides = [f"paths.root={args.root}", f"paths.input={args.child}",
                 f"spark.master={args.master}", "run_date=2017-12-04", "train.epochs=1",
                 f"train.max_steps={args.train_steps}", *args.overrides]
    config = load_config("local", overrides)
    context = RunContext.create(config, profile="local", conf_dir=None, overrides=overrides)

    sampler = MemorySampler()
    sampler.start()
    started = time.perf_counter()
    context.get_spark()
    spark_start_s = time.perf_counter() - started
    sampler.reset()

    seconds, memory = {}, {}
    for stage in STAGES:
        started = time.perf_counter()
        STAGE_FUNCTIONS[stage](context)
        if stage == "train":
            # Evaluation and the quality gate are not timed here, so promote the new model
            # straight to serving, as the gate would, for the score stage to find it.
            layout = context.layout
            layout.point(layout.latest_model_file,
                         layout.pointed_version(layout.candidate_model_file))
        seconds[stage] = time.perf_counter() - started
        memory[stage] = sampler.reset()
        print(f"  {args.events:,} events: {stage} {seconds[stage]:.1f} s", file=sys.stderr,
              flush=True)
    sampler.stop()

    manifest = json.loads((context.layout.sequences_dir / "manifest.json").read_text())
    training = json.loads((context.layout.latest_model_dir() / "model_config.json")
                          .read_text())["training"]
    result = {
        "events": args.events,
        "users": manifest["rows"],
        "input_bytes": Path(args.child).stat().st_size,
        "spark_start_s": spark_start_s,
        "seconds": seconds,
        "memory_mib": memory,
        "spark_cores": spark_cores(config.spark.master),
        "training_cores": config.train.nproc * config.train.num_threads,
        "train_steps_per_rank": training["batches_per_rank_per_epoch"],
        "train_sequences": training["train_sequences_per_epoch"],
        "train_loop_s": training["train_seconds"],
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    context.get_spark().stop()
    return 0


def spark_cores(master: str) -> int:
    """Task slots of a local or local-cluster master (`local[*]` counts this machine)."""
    if match := re.fullmatch(r"local\[(\d+|\*)(?:,\d+)?\]", master):
        if match.group(1) == "*":
            return os.cpu_count() or 1
        return int(match.group(1))
    if match := re.fullmatch(r"local-cluster\[(\d+),\s*(\d+),\s*\d+\]", master):
        return int(match.group(1)) * int(match.group(2))
    if master == "local":
        return 1
    raise ValueError(f"cannot count the cores of master {master!r}; use local[N] or "
                     f"local-cluster[workers,cores,MiB]")


# ---- the report --------------------------------------------------------------------------

def summarize(results: list[dict], *, master: str, train_steps: int) -> dict:
    """Build the printed table and the ratios from the per-size measurements."""
    baseline, sizes = results[0], results[1:]
    first, before_last, last = sizes[0], sizes[-2] if len(sizes) > 1 else sizes[0], sizes[-1]
    lines = [f"Pipeline scale benchmark: master {master}, {baseline['spark_cores']} Spark cores, "
             f"{baseline['training_cores']} training processes, {train_steps} training steps "
             f"per rank, {os.cpu_count()} CPUs on this machine",
             "",
             "Wall time per stage (s); fixed cost = time on the "
             f"{baseline['events']:,}-event baseline log",
             _row(["stage", "fixed", *[_events(r) for r in sizes],
                   f"{_events(before_last)}/{_events(first)}", f"{_events(last)}/{_events(first)}",
                   "ev/s/core", f"linearity {_events(before_last)}->{_events(last)}"])]

    stages = {}
    for stage in STAGES:
        fixed = baseline["seconds"][stage]
        times = [r["seconds"][stage] for r in sizes]
        cores = last["training_cores"] if stage == "train" else last["spark_cores"]
        net_last = last["seconds"][stage] - fixed
        net_before = before_last["seconds"][stage] - fixed
        scale = last["events"] / before_last["events"]
        # A size whose time does not exceed the baseline's has no measurable variable cost
        # (the difference is noise), so neither the rate nor the linearity can be computed.
        linearity = (net_last / (scale * net_before)
                     if net_last > 0 and net_before > 0 and last is not before_last else None)
        rate = (last["events"] - baseline["events"]) / net_last / cores if net_last > 0 else None
        stages[stage] = {
            "fixed_s": fixed, "seconds": times,
            "ratio_second_to_first": before_last["seconds"][stage] / first["seconds"][stage],
            "ratio_last_to_first": last["seconds"][stage] / first["seconds"][stage],
            "events_per_s_per_core": rate, "linearity": linearity,
            "within_target": linearity is not None and linearity <= LINEAR_TARGET,
        }
        verdict = ("n/a" if linearity is None else
                   f"{linearity:.2f} {'ok' if linearity <= LINEAR_TARGET else 'OVER'}")
        lines.append(_row([stage, f"{fixed:.1f}", *[f"{t:.1f}" for t in times],
                           f"{stages[stage]['ratio_second_to_first']:.2f}",
                           f"{stages[stage]['ratio_last_to_first']:.2f}",
                           "n/a" if rate is None else f"{rate:,.0f}", verdict]))

    spark_start = [r["spark_start_s"] for r in results]
    bytes_per_event = last.get("input_bytes", 0) / last["events"]
    lines += ["", f"Input: {bytes_per_event:.1f} bytes per event of raw CSV, "
              f"{last['events'] / last['users']:.1f} events per user at {_events(last)}"]
    lines += ["", "Fixed start-up, excluded above: Spark session start "
              + ", ".join(f"{_events(r)} {r['spark_start_s']:.1f} s" for r in results)]

    lines += ["", "Peak RSS (MiB) during the run: driver JVM (hosts the executors in local mode), "
              "executor JVMs (local-cluster only), executors' Python workers, training processes",
              _row(["events", "users", "driver JVM", "executor JVMs", "Python workers",
                    "training"])]
    for r in results:
        peaks = {role: max(r["memory_mib"][stage][role] for stage in STAGES)
                 for role in MemorySampler.ROLES}
        lines.append(_row([_events(r), f"{r['users']:,}", str(peaks["driver_jvm"]),
                           str(peaks["executor_jvms"]), str(peaks["python_workers"]),
                           str(peaks["training"])]))

    training = [f"{_events(r)}: {sum(r['train_steps_per_rank'])} steps, "
                f"{r['train_sequences'] / max(r['train_loop_s'], 1e-9):.0f} sequences/s in the "
                f"loop" for r in sizes]
    lines += ["", "Training epoch (fixed steps; the rest of the stage is start-up, loading the "
              "rank's shards and validating every user): " + "; ".join(training)]

    over = [stage for stage, values in stages.items() if not values["within_target"]]
    lines += ["", f"Ratios time({_events(before_last)})/time({_events(first)}) and "
              f"time({_events(last)})/time({_events(first)}) per stage: "
              + "; ".join(f"{stage} {v['ratio_second_to_first']:.2f} and "
                          f"{v['ratio_last_to_first']:.2f}" for stage, v in stages.items()),
              f"Linear within {LINEAR_TARGET}x from {_events(before_last)} to {_events(last)} "
              f"(fixed costs excluded): "
              + ("every stage" if not over else f"not met by {', '.join(over)}")]
    return {"text": "\n".join(lines), "stages": stages, "results": results,
            "spark_start_s": spark_start, "master": master, "train_steps": train_steps}


def _events(result: dict) -> str:
    events = result["events"]
    if events >= 1_000_000:
        return f"{events / 1_000_000:g}M"
    return f"{events / 1000:g}k"


def _row(cells: list[str]) -> str:
    return " | ".join(f"{cell:>10}" for cell in cells)


if __name__ == "__main__":
    sys.exit(main())
