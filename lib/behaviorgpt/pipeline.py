"""The pipeline's stages as functions of one resolved config, run alone or one after another.

Spark stages share one SparkSession. Training runs in a separate `torchrun` process group so
that the same command works on one laptop (gloo on CPU) and on GPU nodes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from behaviorgpt.config import PipelineConfig
from behaviorgpt.layout import EVENTS_TABLE, PROFILES_TABLE, SESSIONS_TABLE, Layout

log = logging.getLogger(__name__)

STAGES = ("ingest", "sessionize", "sequences", "train", "evaluate", "score")


@dataclass
class RunContext:
    """What every stage of one run needs: the config, where it came from, and the run's ids."""

    config: PipelineConfig
    profile: str | None
    conf_dir: str | None
    overrides: list[str]
    run_date: str
    run_id: str
    layout: Layout
    spark: object | None = None
    results: dict = field(default_factory=dict)

    @classmethod
    def create(cls, config: PipelineConfig, *, profile: str | None, conf_dir: str | None,
               overrides: list[str]) -> "RunContext":
        now = dt.datetime.now(dt.timezone.utc)
        run_date = config.run_date or now.date().isoformat()
        _check_date(run_date)
        return cls(config=config, profile=profile, conf_dir=conf_dir, overrides=list(overrides),
                   run_date=run_date, run_id=f"{run_date}-{now:%H%M%S}",
                   layout=Layout.from_root(config.paths.root))

    def get_spark(self):
        if self.spark is None:
            from behaviorgpt.spark import build_spark_session

            self.spark = build_spark_session(self.config)
        return self.spark


def input_path(context: RunContext) -> str:
    """Return the configured input log, generating the embedded default when none is set."""
    if context.config.paths.input:
        path = Path(context.config.paths.input).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"paths.input = {str(path)!r} does not exist. Fix: pass an "
                                    f"existing file or folder with --input")
        return str(path.resolve())

    from behaviorgpt.generator import generate_event_log

    generated = generate_event_log(context.layout.generated_input_dir, context.config.generator)
    log.info("generated %d events for %d users at %s", generated.num_events, generated.num_users,
             generated.events_path)
    return str(Path(generated.events_path).resolve())


def run_ingest(context: RunContext):
    from behaviorgpt.events import ingest_taobao
    from behaviorgpt.privacy import pseudonymization_key

    key = pseudonymization_key(context.config.privacy)
    stats = ingest_taobao(context.get_spark(), input_path(context), context.layout, key=key,
                          run_id=context.run_id, run_date=context.run_date)
    return stats


def run_sessionize(context: RunContext):
    from behaviorgpt.sessions import SESSIONS_PARTITION, sessionize
    from behaviorgpt.tables import read_table, write_table

    events = read_table(context.get_spark(), context.layout, EVENTS_TABLE)
    sessions = sessionize(events, gap_seconds=context.config.session.gap_minutes * 60)
    write_table(sessions, context.layout, SESSIONS_TABLE, partition_by=[SESSIONS_PARTITION])
    return str(context.layout.table(SESSIONS_TABLE))


def run_sequences(context: RunContext):
    from behaviorgpt.sequences import build_sequences
    from behaviorgpt.tables import read_table

    spark = context.get_spark()
    settings = context.config.sequences
    return build_sequences(spark, read_table(spark, context.layout, SESSIONS_TABLE),
                           context.layout, max_len=settings.max_len,
                           min_item_count=settings.min_item_count,
                           num_shards=settings.num_shards)


def run_train(context: RunContext) -> str:
    """Train with `torchrun` on this machine and return the new model's folder."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={context.config.train.nproc}",
               "-m", "behaviorgpt.train", *_config_arguments(context)]
    log.info("training: %s", " ".join(command))
    subprocess.run(command, check=True, env=_child_environment())
    return str(context.layout.latest_model_dir())


def run_evaluate(context: RunContext) -> dict:
    from behaviorgpt.evaluate import evaluate_leave_one_out

    metrics = evaluate_leave_one_out(context.layout.latest_model_dir(),
                                     context.layout.sequences_dir, k=10)
    return metrics


def run_score(context: RunContext) -> str:
    from behaviorgpt.scoring import (read_model_version, score_users, select_users_to_score,
                                     write_profiles)

    from behaviorgpt.tables import check_catalog_name

    settings = context.config.score
    if settings.database:
        check_catalog_name(settings.database)  # fail before scoring, not after it

    spark = context.get_spark()
    model_dir = context.layout.latest_model_dir()
    shards = spark.read.parquet(str(context.layout.sequences_dir / "shards"))
    to_score = select_users_to_score(spark, shards, context.layout,
                                     model_version=read_model_version(model_dir),
                                     full_rescore=settings.full_rescore)
    profiles = score_users(spark, to_score, model_dir, top_k=settings.top_k,
                           batch_size=settings.batch_size, num_threads=settings.num_threads,
                           run_date=context.run_date,
                           evidence_categories=settings.evidence_categories,
                           evidence_events=settings.evidence_events)
    written = write_profiles(spark, profiles, context.layout, run_date=context.run_date,
                             settings=settings)
    log.info("score: %d users scored (%s)", written.users_scored,
             "full rescore" if settings.full_rescore else "incremental")
    return str(context.layout.table(PROFILES_TABLE))


STAGE_FUNCTIONS = {
    "ingest": run_ingest,
    "sessionize": run_sessionize,
    "sequences": run_sequences,
    "train": run_train,
    "evaluate": run_evaluate,
    "score": run_score,
}


def run_stages(context: RunContext, stages: tuple[str, ...] | list[str]) -> dict:
    """Run the named stages in pipeline order and return each stage's result."""
    for stage in stages:
        started = dt.datetime.now(dt.timezone.utc)
        log.info("stage %s: started", stage)
        context.results[stage] = STAGE_FUNCTIONS[stage](context)
        seconds = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
        log.info("stage %s: finished in %.1f s", stage, seconds)
    return context.results


def _config_arguments(context: RunContext) -> list[str]:
    """Command-line arguments that give a child process exactly this run's config."""
    arguments = []
    if context.conf_dir:
        arguments += ["--conf", str(Path(context.conf_dir).resolve())]
    if context.profile:
        arguments += ["--profile", context.profile]
    # The child may start in another folder, so the root is passed as an absolute path.
    pinned = {"paths.root": str(context.layout.root), "run_date": context.run_date}
    kept = [item for item in context.overrides if item.partition("=")[0].strip() not in pinned]
    for override in [*kept, *(f"{key}={value}" for key, value in pinned.items())]:
        arguments += ["--set", override]
    return arguments


def _child_environment() -> dict:
    environment = dict(os.environ)
    # One BLAS thread per process unless the operator chose otherwise: DDP already runs
    # one process per core, and oversubscription slows every rank.
    environment.setdefault("OMP_NUM_THREADS", "1")
    return environment


def _check_date(value: str) -> None:
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"run_date = {value!r} is invalid: expected YYYY-MM-DD. "
                         f"Fix: pass --date 2024-01-31") from None


def describe(context: RunContext, stages: list[str]) -> str:
    """The plan and resolved config as text, for `--dry-run`."""
    plan = {"run_id": context.run_id, "run_date": context.run_date, "stages": list(stages),
            "root": str(context.layout.root), "config": context.config.to_dict()}
    return json.dumps(plan, indent=2)
