"""The `behaviorgpt` command: one subcommand per stage, and `run` for all of them."""

from __future__ import annotations

import argparse
import logging
import sys

from behaviorgpt.config import ConfigError, load_config
from behaviorgpt.errors import CorruptFileError
from behaviorgpt.pipeline import STAGES, RunContext, describe, run_stages

log = logging.getLogger("behaviorgpt")

STAGE_HELP = {
    "ingest": "parse the input log into the events table; bad rows go to quarantine",
    "sessionize": "split each user's events into sessions",
    "sequences": "build the vocabulary and the Parquet training shards",
    "train": "train the multi-task GPT with torchrun (DDP)",
    "evaluate": "leave-one-out next-item metrics of the new model and the baselines",
    "gate": "make the new model the serving one unless its NDCG@10 dropped too far",
    "score": "write user_interest_profiles with the serving model (models/LATEST)",
}

MAINTENANCE_HELP = ("delete rows older than retention.days before --date from the tables "
                    "that hold user data, then run Delta VACUUM (not part of `run`)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--conf", help="folder of YAML configs (default: the repository's conf/)")
    common.add_argument("--profile", default="local",
                        help="profile merged over base.yaml, e.g. local or cluster (default: local)")
    common.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override one config value, e.g. train.epochs=3")
    common.add_argument("--date", help="run date YYYY-MM-DD (default: today, UTC)")
    common.add_argument("--input", help="input event log (file or folder); default: generate one")
    common.add_argument("--root", help="folder for all tables and models (paths.root)")
    common.add_argument("--run-id",
                        help="id of this run in pipeline_runs, e.g. the orchestrator's run id; "
                             "a retry with the same id and command replaces the earlier row "
                             "(default: <date>-<HHMMSS>)")
    common.add_argument("--full-rescore", action="store_true",
                        help="score every user instead of only users with new events "
                             "(sets score.full_rescore=true)")
    common.add_argument("--model-version",
                        help="train: name of the model folder to write (default: UTC timestamp)")
    common.add_argument("--resume", action="store_true",
                        help="train: continue the newest training checkpoint of --model-version "
                             "(default: of the newest unfinished training)")
    common.add_argument("--dry-run", action="store_true",
                        help="print the plan and resolved config, then exit")

    parser = argparse.ArgumentParser(
        prog="behaviorgpt",
        description="Learn user interests from behaviour event logs: Spark ingestion, a "
                    "DDP-trained multi-task GPT, and Delta interest profiles.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run", parents=[common], help="run every stage in order")
    for stage in STAGES:
        commands.add_parser(stage, parents=[common], help=STAGE_HELP[stage])
    commands.add_parser("maintain", parents=[common], help=MAINTENANCE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    overrides = list(arguments.overrides)
    if arguments.date:
        overrides.append(f"run_date={arguments.date}")
    if arguments.input:
        overrides.append(f"paths.input={arguments.input}")
    if arguments.root:
        overrides.append(f"paths.root={arguments.root}")
    if arguments.full_rescore:
        overrides.append("score.full_rescore=true")

    try:
        config = load_config(arguments.profile, overrides, arguments.conf)
        context = RunContext.create(config, profile=arguments.profile, conf_dir=arguments.conf,
                                    overrides=overrides, run_id=arguments.run_id,
                                    model_version=arguments.model_version,
                                    resume=arguments.resume)
    except (ConfigError, ValueError) as error:
        print(f"behaviorgpt: error: {error}", file=sys.stderr)
        return 2

    stages = list(STAGES) if arguments.command == "run" else [arguments.command]
    if arguments.dry_run:
        print(describe(context, stages))
        return 0

    try:
        run_stages(context, stages, command=arguments.command)
    except (CorruptFileError, ConfigError) as error:
        # The message names the file or key and the fix; a stack trace would bury it.
        print(f"behaviorgpt: error: {error}", file=sys.stderr)
        return 1
    if arguments.command in ("run", "score"):
        print_summary(context)
    return 0


def print_summary(context: RunContext) -> None:
    """Print where the tables are and a few profiles, reading only a handful of rows."""
    from behaviorgpt.layout import PROFILES_TABLE
    from behaviorgpt.tables import read_table

    spark = context.get_spark()
    profiles = read_table(spark, context.layout, PROFILES_TABLE)
    print()
    print(f"Tables are under {context.layout.root / 'delta'}")
    print(f"  profiles: {context.layout.table(PROFILES_TABLE)} ({profiles.count()} users)")
    evaluation = context.results.get("evaluate")
    if evaluation:
        print(f"  next-item metrics (leave-one-out): {evaluation}")
    print("A few profiles (top 3 categories and items):")
    sample = profiles.selectExpr("substr(user_key, 1, 12) AS user_key",
                                 "slice(top_categories, 1, 3) AS top_categories",
                                 "slice(top_items, 1, 3) AS top_items").limit(5)
    sample.show(truncate=False)


if __name__ == "__main__":
    sys.exit(main())
