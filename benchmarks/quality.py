"""Model quality against every baseline, leave-one-out with full ranking, on real logs.

For each dataset it runs the whole pipeline through the CLI (ingest, sessionize, sequences,
train, evaluate; scoring is skipped) with `evaluate.single_task_baseline=true`, so the
evaluate stage also trains the next_item-only model. It then prints a Markdown table of
HR@10, NDCG@10 and MRR@10 of the model and of each baseline (most popular, recent items,
co-occurrence, single task) with the training seconds of the two learned models, plus the
machine's load average before and after each dataset.

    BEHAVIORGPT_DATA_DIR=/path/to/data python benchmarks/quality.py --work /tmp/quality

MovieLens users rate each movie once, so the MovieLens rows use `evaluate.exclude_seen=true`
(no method may spend its top ranks on movies the user has already rated); the Taobao rows
keep the default (off), because shoppers often return to items.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from behaviorgpt.cli import main as cli_main
from behaviorgpt.layout import Layout

DATASETS = {
    "taobao": {
        "file": "taobao_userbehavior/user_sorted_head_Haohanblue-mydeep/UserBehavior.csv",
        "settings": ["ingest.format=taobao"],
    },
    "movielens_1m_partial": {
        "file": "movielens_1m_partial/ratings.dat",
        "settings": ["ingest.format=movielens", "ingest.earliest_date=1995-01-01",
                     "evaluate.exclude_seen=true"],
    },
}

METHODS = ("model", "single_task", "cooccurrence", "recent_items", "most_popular")


STAGES = ("ingest", "sessionize", "sequences", "train", "evaluate")


def run_dataset(name: str, data_dir: Path, work: Path, extra: list[str],
                first_stage: str = "ingest") -> dict:
    """Run the pipeline on one dataset and return its metrics, timings and load averages.

    `first_stage` resumes an interrupted run: the earlier stages' outputs under `work` are
    reused, and the evaluate stage reuses a single-task model that was already trained.
    """
    spec = DATASETS[name]
    source = data_dir / spec["file"]
    root = work / name
    stages = STAGES[STAGES.index(first_stage):]
    settings = [*spec["settings"], "evaluate.single_task_baseline=true", *extra]
    arguments = ["--root", str(root), "--date", "2017-12-04", "--input",
                 str(source.parent if name.startswith("movielens") else source)]
    for setting in settings:
        arguments += ["--set", setting]

    load_before = os.getloadavg()
    started = time.perf_counter()
    for stage in stages:
        if cli_main([stage, *arguments]) != 0:
            raise RuntimeError(f"stage {stage} failed on {name}")
    wall_seconds = time.perf_counter() - started
    load_after = os.getloadavg()

    layout = Layout.from_root(root)
    model_dir = layout.candidate_model_dir()
    metrics = json.loads((model_dir / "metrics.json").read_text(encoding="utf-8"))
    single_dir = (Layout.from_root(layout.baseline_models_dir)
                  .model_dir(metrics["single_task_model_version"]))
    return {
        "dataset": name,
        "settings": settings,
        "metrics": metrics,
        "train_seconds": {"model": _train_seconds(model_dir),
                          "single_task": _train_seconds(single_dir)},
        "wall_seconds": wall_seconds,
        "load_before": load_before,
        "load_after": load_after,
    }


def _train_seconds(model_dir: Path) -> float:
    description = json.loads((model_dir / "model_config.json").read_text(encoding="utf-8"))
    return float(description["training"]["train_seconds"])


def markdown_table(results: list[dict]) -> str:
    """Return one Markdown table with a row per dataset and method."""
    lines = ["| dataset | users | method | HR@10 | NDCG@10 | MRR@10 | training s |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for result in results:
        metrics = result["metrics"]
        for method in METHODS:
            if method not in metrics:
                continue
            values = metrics[method]
            seconds = result["train_seconds"].get(method)
            lines.append(f"| {result['dataset']} | {metrics['users']:,} | {method} | "
                         f"{values['hr@10']:.4f} | {values['ndcg@10']:.4f} | "
                         f"{values['mrr@10']:.4f} | "
                         f"{'' if seconds is None else f'{seconds:.0f}'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="scratch folder for the pipeline roots")
    parser.add_argument("--data-dir", default=os.environ.get("BEHAVIORGPT_DATA_DIR"),
                        help="folder of the real logs (default: $BEHAVIORGPT_DATA_DIR)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every dataset, e.g. train.epochs=3")
    parser.add_argument("--from-stage", default="ingest", choices=STAGES,
                        help="first stage to run, to resume a run under --work")
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args()
    if not args.data_dir:
        parser.error("pass --data-dir or set BEHAVIORGPT_DATA_DIR")

    results = [run_dataset(name, Path(args.data_dir), Path(args.work), args.set,
                           args.from_stage)
               for name in args.datasets]
    print(markdown_table(results))
    for result in results:
        print(f"{result['dataset']}: settings {result['settings']}; wall {result['wall_seconds']:.0f}"
              f" s; load average (1, 5, 15 min) before {result['load_before']}, after "
              f"{result['load_after']}")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2, default=str) + "\n",
                                     encoding="utf-8")


if __name__ == "__main__":
    main()
