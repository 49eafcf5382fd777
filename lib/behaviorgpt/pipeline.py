"""The pipeline's stages as functions of one resolved config, run alone or one after another.

Spark stages share one SparkSession. Training runs in a separate `torchrun` process group so
that the same command works on one laptop (gloo on CPU) and on GPU nodes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from behaviorgpt.config import PipelineConfig
from behaviorgpt.layout import (EVENTS_TABLE, MODEL_METRICS_TABLE, PROFILES_HISTORY_TABLE,
                                PROFILES_TABLE,
                                QUARANTINE_TABLE, SESSIONS_TABLE, Layout)

log = logging.getLogger(__name__)

STAGES = ("ingest", "sessionize", "sequences", "train", "evaluate", "gate", "score")

INGEST_RUNS_TABLE = "ingest_runs"  # written by events.ingest_taobao

STAGE_TABLES = {
    "ingest": ((), (EVENTS_TABLE, QUARANTINE_TABLE, INGEST_RUNS_TABLE)),
    "sessionize": ((EVENTS_TABLE,), (SESSIONS_TABLE,)),
    "sequences": ((SESSIONS_TABLE,), ()),
    "train": ((), ()),
    "evaluate": ((), (MODEL_METRICS_TABLE,)),
    "gate": ((), ()),
    "score": ((), (PROFILES_TABLE,)),
    "maintain": ((), (EVENTS_TABLE, SESSIONS_TABLE, QUARANTINE_TABLE, PROFILES_TABLE,
                      PROFILES_HISTORY_TABLE)),
}
"""Delta tables each stage reads and writes, as (read, written); `pipeline_runs` records their
versions. The torch stages read Parquet shards and model folders, recorded as model versions."""


@dataclass
class RunContext:
    """Inputs shared by every stage of one run: the config, its source files and the run's ids."""

    config: PipelineConfig
    profile: str | None
    conf_dir: str | None
    overrides: list[str]
    run_date: str
    run_id: str
    layout: Layout
    spark: object | None = None
    results: dict = field(default_factory=dict)
    model_version: str | None = None
    """Model version the train stage writes (default: a UTC timestamp chosen at its start)."""
    resume: bool = False
    """Whether the train stage continues the newest training checkpoint of `model_version`."""

    @classmethod
    def create(cls, config: PipelineConfig, *, profile: str | None, conf_dir: str | None,
               overrides: list[str], run_id: str | None = None,
               model_version: str | None = None, resume: bool = False) -> "RunContext":
        from behaviorgpt.runs import check_run_id

        now = dt.datetime.now(dt.timezone.utc)
        run_date = config.run_date or now.date().isoformat()
        _check_date(run_date)
        return cls(config=config, profile=profile, conf_dir=conf_dir, overrides=list(overrides),
                   run_date=run_date, run_id=check_run_id(run_id or f"{run_date}-{now:%H%M%S}"),
                   layout=Layout.from_root(config.paths.root), model_version=model_version,
                   resume=resume)

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
    from behaviorgpt.events import ingest_events
    from behaviorgpt.privacy import pseudonymization_key

    key = pseudonymization_key(context.config.privacy)
    stats = ingest_events(context.get_spark(), input_path(context), context.layout,
                          settings=context.config.ingest, key=key, run_id=context.run_id,
                          run_date=context.run_date)
    return stats


def run_sessionize(context: RunContext):
    from behaviorgpt.sessions import SESSIONS_PARTITION, sessionize, sessionize_day
    from behaviorgpt.tables import read_table, write_table

    spark = context.get_spark()
    settings = context.config.session
    limits = {"gap_seconds": settings.gap_minutes * 60,
              "max_duration_seconds": settings.max_duration_minutes * 60,
              "max_events": settings.max_events,
              "use_source_sessions": settings.use_source_sessions}
    if context.config.ingest.scope == "run_date":
        sessionize_day(spark, context.layout, context.run_date, **limits)
    else:
        sessions = sessionize(read_table(spark, context.layout, EVENTS_TABLE), **limits)
        write_table(sessions, context.layout, SESSIONS_TABLE, partition_by=[SESSIONS_PARTITION])
    return str(context.layout.table(SESSIONS_TABLE))


def run_sequences(context: RunContext):
    from behaviorgpt.retention import within_retention
    from behaviorgpt.sequences import build_sequences, example_settings
    from behaviorgpt.tables import read_table

    spark = context.get_spark()
    settings = context.config.sequences
    sessions = within_retention(read_table(spark, context.layout, SESSIONS_TABLE),
                                context.run_date, context.config.retention.days)
    return build_sequences(spark, sessions, context.layout, max_len=settings.max_len,
                           min_item_count=settings.min_item_count,
                           num_shards=settings.num_shards, oov_buckets=settings.oov_buckets,
                           frozen_vocab_dir=settings.frozen_vocab_dir,
                           settings=example_settings(context.config, sessions),
                           rows_per_row_group=context.config.examples.rows_per_row_group)


def run_train(context: RunContext) -> str:
    """Train on this machine and return the new model's folder.

    The ranks run under torchrun (or Spark's TorchDistributor with `train.launcher: spark`).
    torchrun restarts the whole group up to `train.max_restarts` times after a rank fails, and
    the restarted ranks continue from the newest training checkpoint. The model version is
    chosen here, not by the ranks, so a restarted group finds the checkpoints of this run.
    The new model becomes the candidate (`models/CANDIDATE`); the gate decides whether it serves.
    """
    settings = context.config.train
    model_version = context.model_version
    if context.resume and model_version is None:
        model_version = newest_unfinished_version(context.layout)
        if model_version is None:
            raise FileNotFoundError(f"no unfinished training under "
                                    f"{context.layout.root / 'checkpoints'} to resume; "
                                    f"run train without --resume")
    resume = context.resume
    if model_version is None:
        # Named after the run id, so that an orchestrator's retry of this run (same run id)
        # continues the failed attempt's checkpoints, or finds the model it already finished,
        # instead of training again from the start.
        model_version = re.sub(r"[^A-Za-z0-9._-]", "_", context.run_id)
        layout = context.layout
        resume = resume or (layout.training_checkpoints_dir(model_version).is_dir()
                            or layout.model_dir(model_version).exists())
    arguments = [*_config_arguments(context), "--model-version", model_version]
    if resume:
        arguments.append("--resume")

    check_shard_files(context.layout, "examples")
    if settings.launcher == "spark":
        _train_with_spark(context, arguments)
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={settings.nproc}", f"--max-restarts={settings.max_restarts}",
                   "-m", "behaviorgpt.train", *arguments]
        log.info("training: %s", " ".join(command))
        subprocess.run(command, check=True, env=_child_environment())
    return str(context.layout.model_dir(model_version))


def newest_unfinished_version(layout: Layout) -> str | None:
    """Return the model version with the newest training checkpoint and no model folder yet."""
    checkpoints = layout.root / "checkpoints"
    if not checkpoints.is_dir():
        return None
    unfinished = [folder for folder in checkpoints.iterdir()
                  if folder.is_dir() and not layout.model_dir(folder.name).exists()]
    if not unfinished:
        return None
    return max(unfinished, key=lambda folder: folder.stat().st_mtime).name


def _train_with_spark(context: RunContext, arguments: list[str]) -> None:
    """Run `behaviorgpt/train.py` with pyspark's TorchDistributor, one rank per Spark task.

    TorchDistributor starts torchrun itself (locally in local mode, else inside barrier-mode
    Spark tasks) without restarts: a failed rank fails the stage, and rerunning it with
    `--resume` continues from the newest checkpoint.
    NOTE: no test runs this launcher; the torchrun launcher is the tested one.
    """
    from pyspark.ml.torch.distributor import TorchDistributor

    import behaviorgpt.train

    settings = context.config.train
    context.get_spark()  # TorchDistributor uses the active session
    local_mode = context.config.spark.master.startswith("local")
    distributor = TorchDistributor(num_processes=settings.nproc, local_mode=local_mode,
                                   use_gpu=False)
    log.info("training with TorchDistributor (%d processes, local mode %s): %s",
             settings.nproc, local_mode, " ".join(arguments))
    distributor.run(behaviorgpt.train.__file__, *arguments)


def run_evaluate(context: RunContext) -> dict:
    """Evaluate the candidate model (the serving one when no candidate exists) and its baselines.

    Writes the model folder's `metrics.json` (read by the quality gate) and replaces this
    run's rows of the `model_metrics` Delta table. The co-occurrence table is counted in Spark
    first; with `evaluate.single_task_baseline` a next_item-only model is trained as well.
    """
    from behaviorgpt.cooccurrence import write_cooccurrence
    from behaviorgpt.evaluate import METRICS_FILE, metric_rows
    from behaviorgpt.tables import write_model_metrics

    layout = context.layout
    settings = context.config.evaluate
    has_candidate = layout.pointed_version(layout.candidate_model_file) is not None
    model_dir = layout.candidate_model_dir() if has_candidate else layout.latest_model_dir()

    check_shard_files(layout, "shards")
    write_cooccurrence(context.get_spark(), layout, settings.cooccurrence_neighbours)
    single_task_dir = train_single_task(context, model_dir.name) \
        if settings.single_task_baseline else None

    if settings.nproc > 1:
        # NOTE: tests run `behaviorgpt.evaluate` under torchrun directly; this launch from
        # the pipeline (evaluate.nproc > 1) is not exercised by any test.
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={settings.nproc}", "-m", "behaviorgpt.evaluate",
                   *_config_arguments(context), "--model-dir", str(model_dir)]
        if single_task_dir is not None:
            command += ["--single-task-dir", str(single_task_dir)]
        log.info("evaluating: %s", " ".join(command))
        subprocess.run(command, check=True, env=_child_environment())
        metrics = json.loads((model_dir / METRICS_FILE).read_text(encoding="utf-8"))
    else:
        import torch

        from behaviorgpt.evaluate import evaluate_leave_one_out

        threads = torch.get_num_threads()
        torch.set_num_threads(settings.num_threads)
        try:
            metrics = evaluate_leave_one_out(
                model_dir, layout.sequences_dir, settings=settings,
                cooccurrence_path=layout.cooccurrence_dir, single_task_dir=single_task_dir,
                window_events=context.config.train.window_events,
                return_days=context.config.train.return_days)
        finally:
            torch.set_num_threads(threads)

    written = write_model_metrics(context.get_spark(), layout, metric_rows(metrics),
                                  run_id=context.run_id, run_date=context.run_date,
                                  evaluated_at=dt.datetime.now(dt.timezone.utc))
    log.info("evaluate: model %s NDCG@10 %.4f on %d users; %d rows in model_metrics",
             metrics["model_version"], metrics["model"]["ndcg@10"], metrics["users"], written)
    return metrics


SINGLE_TASK_WEIGHTS = "{next_item: 1.0, next_category: 0, next_event_type: 0, " \
    "category_interest: 0, purchase: 0, return: 0}"
"""`train.task_weights` of the single-task baseline: next_item alone, the rest of the config
as the run's."""


def train_single_task(context: RunContext, model_version: str) -> Path:
    """Train the next_item-only baseline for `model_version` and return its folder.

    It runs the same training entry point with `train.task_weights` overridden, under
    `layout.baseline_models_dir`, whose `sequences` links to the run's sequences. So its
    checkpoint and pointer files never touch the served `models/` folder. A folder left by an
    earlier attempt of the same model version is reused, so a rerun trains nothing.
    """
    from behaviorgpt.checkpoint import WEIGHTS_FILE

    layout = context.layout
    baseline = Layout.from_root(layout.baseline_models_dir)
    version = f"{model_version}-single_task"
    if (baseline.model_dir(version) / WEIGHTS_FILE).is_file():
        log.info("single-task baseline %s exists; reusing it", version)
        return baseline.model_dir(version)

    baseline.root.mkdir(parents=True, exist_ok=True)
    link = baseline.sequences_dir
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(layout.sequences_dir, target_is_directory=True)

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={context.config.train.nproc}", "-m", "behaviorgpt.train",
               *_config_arguments(context), "--set", f"paths.root={baseline.root}",
               "--set", f"train.task_weights={SINGLE_TASK_WEIGHTS}",
               "--set", "train.warm_start=false", "--model-version", version]
    log.info("training the single-task baseline: %s", " ".join(command))
    subprocess.run(command, check=True, env=_child_environment())
    return baseline.model_dir(version)


def run_gate(context: RunContext) -> dict:
    """Promote the evaluated candidate to `models/LATEST`, or keep the serving model."""
    from behaviorgpt.gate import run_gate as judge

    return judge(context.layout, context.config.quality_gate)


def run_score(context: RunContext) -> str:
    """Score users with the serving model (`models/LATEST`) and write the profiles.

    Incremental by default: only users with new events since their last profile are scored,
    unless `score.full_rescore` is set.
    """
    from behaviorgpt.scoring import (read_model_version, score_users, select_users_to_score,
                                     write_profiles)
    from behaviorgpt.tables import check_catalog_name
    from behaviorgpt.vocab_alignment import align_to_vocabulary, vocabulary_hash

    settings = context.config.score
    if settings.database:
        check_catalog_name(settings.database)  # fail before scoring, not after it

    spark = context.get_spark()
    layout = context.layout
    model_dir = layout.latest_model_dir()
    check_model_folder(model_dir)
    check_shard_files(layout, "shards")
    sequences = spark.read.parquet(str(layout.sequences_dir / "shards"))

    # After the gate kept an older model, tonight's token ids mean other items to that model.
    if vocabulary_hash(model_dir / "vocab") != vocabulary_hash(layout.vocab_dir):
        log.warning("serving model %s was trained with another vocabulary than tonight's "
                    "sequences: mapping their ids to the model's vocabulary", model_dir.name)
        sequences = align_to_vocabulary(spark, sequences, layout.vocab_dir, model_dir / "vocab")

    to_score = select_users_to_score(spark, sequences, layout,
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


def check_shard_files(layout: Layout, kind: str) -> None:
    """Raise CorruptFileError before a stage starts when a Parquet file it reads is damaged.

    `kind` is `shards` (the token sequences) or `examples` (the training examples). Checking
    on the driver turns a damaged file into one clear error, instead of a failure deep inside
    a torchrun child or a Spark task.
    """
    from behaviorgpt.errors import check_parquet_files

    check_parquet_files(sorted((layout.sequences_dir / kind).rglob("*.parquet")))


def check_model_folder(model_dir: Path) -> None:
    """Load the model once on the driver, so a damaged model folder fails before Spark tasks do."""
    from behaviorgpt.checkpoint import load_checkpoint

    load_checkpoint(model_dir)


def run_maintain(context: RunContext) -> dict:
    """Delete rows older than `retention.days` and VACUUM the tables (`behaviorgpt maintain`).

    Not part of `run`: the operator schedules it, for example weekly. Returns the rows
    deleted per table.
    """
    from behaviorgpt.retention import apply_retention

    return apply_retention(context.get_spark(), context.layout, context.run_date,
                           context.config.retention)


STAGE_FUNCTIONS = {
    "ingest": run_ingest,
    "sessionize": run_sessionize,
    "sequences": run_sequences,
    "train": run_train,
    "evaluate": run_evaluate,
    "gate": run_gate,
    "score": run_score,
    "maintain": run_maintain,
}


def run_stages(context: RunContext, stages: tuple[str, ...] | list[str],
               command: str | None = None) -> dict:
    """Run the named stages in pipeline order and return each stage's result.

    Whatever happens, one row describing this invocation (`command`, default the single stage's
    name) is written to `pipeline_runs`; a stage's exception is raised again after that.
    """
    from behaviorgpt.runs import RunRecorder

    recorder = RunRecorder(
        run_id=context.run_id, command=command or "+".join(stages), run_date=context.run_date,
        profile=context.profile, config=context.config.to_dict(),
        secret_values=_secret_values(context.config))
    try:
        for stage in stages:
            _run_one_stage(context, recorder, stage)
    except BaseException as error:
        _record(context, recorder, error)
        raise
    _record(context, recorder, None)
    return context.results


def _run_one_stage(context: RunContext, recorder, stage: str) -> None:
    reads, writes = STAGE_TABLES[stage]
    if reads:
        recorder.read(context.get_spark(), context.layout, stage, reads)

    started = dt.datetime.now(dt.timezone.utc)
    log.info("stage %s: started", stage)
    try:
        context.results[stage] = STAGE_FUNCTIONS[stage](context)
    except BaseException:
        recorder.stage_done(stage, started, "failed")
        raise
    recorder.stage_done(stage, started, "succeeded")
    log.info("stage %s: finished in %.1f s", stage, recorder.stages[-1]["seconds"])

    if stage == "gate":
        recorder.quality_gate = context.results[stage]["decision"]
    if writes:
        recorder.wrote(context.get_spark(), context.layout, stage, writes)


def _record(context: RunContext, recorder, error: BaseException | None) -> None:
    """Write the run's row; a failure to record never hides the stage's own error."""
    try:
        recorder.write(context.get_spark(), context.layout, error)
    except Exception:
        if error is None:
            raise
        log.exception("could not record the failed run %s in pipeline_runs", context.run_id)


def _secret_values(config: PipelineConfig) -> tuple[str, ...]:
    """Secrets this run can see, to be kept out of `pipeline_runs` even if pasted into config."""
    key = os.environ.get(config.privacy.key_env, "")
    return (key,) if key else ()


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
    """Return the plan and the resolved config as JSON text, for `--dry-run`."""
    plan = {"run_id": context.run_id, "run_date": context.run_date, "stages": list(stages),
            "root": str(context.layout.root), "config": context.config.to_dict()}
    return json.dumps(plan, indent=2)
