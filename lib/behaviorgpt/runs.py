"""The `pipeline_runs` table: one row per CLI invocation, written whether it succeeds or fails.

A row records what ran (`run_id`, `command`, stages), from which code (`git_commit`) and with which
settings (`config_json`, secrets removed), what it read and wrote (Delta table versions), which
model it trained and which one serves, what the quality gate decided, and how long each stage
took. Rows are keyed by (`run_id`, `command`): a retry of the same task under the same run id
replaces the row of the failed attempt, so the table holds the last attempt of each task.

| column | type | meaning |
|---|---|---|
| run_id | string | `--run-id`, default `<run_date>-<HHMMSS>` (UTC start time) |
| command | string | CLI subcommand: `run` or one stage |
| run_date | date | the date the run processes (`--date`) |
| status | string | `succeeded` or `failed` |
| error | string | exception type and message of a failed run, else null |
| started_at, finished_at | timestamp | wall-clock bounds of the invocation (UTC) |
| git_commit | string | commit of the code, `-dirty` when the checkout has changes; null outside git |
| profile | string | config profile |
| config_json | string | resolved config as JSON, secrets replaced by `<redacted>` |
| stages | array<struct> | per stage: `stage`, `started_at`, `seconds` (wall time), `status` |
| tables_read | array<struct> | per Delta table read: `stage`, `table`, `version` before the stage |
| tables_written | array<struct> | per Delta table written: `stage`, `table`, `version` after the stage |
| model_candidate | string | version named by `models/CANDIDATE` at the end, else null |
| model_serving | string | version named by `models/LATEST` at the end, else null |
| quality_gate | string | the gate's decision when it ran (`promoted`, `first_model`, `rejected`, ...) |
| flagged | boolean | true when the gate rejected the new model or the run failed |
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import types as T

from behaviorgpt.layout import PIPELINE_RUNS_TABLE, Layout
from behaviorgpt.tables import table_version, write_table
from behaviorgpt.validation import sql_string

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]

GIT_COMMIT_ENV = "BEHAVIORGPT_GIT_COMMIT"
"""Set by a deployment that ships the code without its `.git` folder (a wheel, an image)."""

REDACTED = "<redacted>"

# Setting names that hold credentials, e.g. spark.hadoop.fs.s3a.secret.key or a JDBC password.
_SECRET_NAME = re.compile(r"secret|passw|token|credential|access\.?key|private|auth", re.IGNORECASE)
# user:password@ in a URL such as s3a://user:pass@bucket/path.
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:+-]{1,200}$")

_STAGE = T.StructType([
    T.StructField("stage", T.StringType(), False),
    T.StructField("started_at", T.TimestampType(), False),
    T.StructField("seconds", T.DoubleType(), False),
    T.StructField("status", T.StringType(), False),
])
_TABLE_VERSION = T.StructType([
    T.StructField("stage", T.StringType(), False),
    T.StructField("table", T.StringType(), False),
    T.StructField("version", T.LongType(), True),
])
SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("command", T.StringType(), False),
    T.StructField("run_date", T.DateType(), False),
    T.StructField("status", T.StringType(), False),
    T.StructField("error", T.StringType(), True),
    T.StructField("started_at", T.TimestampType(), False),
    T.StructField("finished_at", T.TimestampType(), False),
    T.StructField("git_commit", T.StringType(), True),
    T.StructField("profile", T.StringType(), True),
    T.StructField("config_json", T.StringType(), False),
    T.StructField("stages", T.ArrayType(_STAGE, False), False),
    T.StructField("tables_read", T.ArrayType(_TABLE_VERSION, False), False),
    T.StructField("tables_written", T.ArrayType(_TABLE_VERSION, False), False),
    T.StructField("model_candidate", T.StringType(), True),
    T.StructField("model_serving", T.StringType(), True),
    T.StructField("quality_gate", T.StringType(), True),
    T.StructField("flagged", T.BooleanType(), False),
])


def check_run_id(run_id: str) -> str:
    """Return `run_id` if it is safe in a file name and a SQL string literal; raise otherwise."""
    if not RUN_ID_PATTERN.match(run_id):
        raise ValueError(f"run id {run_id!r} is invalid: use 1-200 letters, digits and . _ : + - "
                         f"(Airflow's run ids qualify). Fix: pass another --run-id")
    return run_id


def git_commit(repo_root: Path = REPO_ROOT) -> str | None:
    """Commit of the running code, `-dirty` appended for local changes; None when unknown.

    Never raises: a run from an installed wheel or an image without git records null.
    """
    if os.environ.get(GIT_COMMIT_ENV):
        return os.environ[GIT_COMMIT_ENV]
    try:
        head = subprocess.run(["git", "-C", str(repo_root), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo_root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return f"{commit}-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else commit


def redact(value, secret_values: tuple[str, ...] = (), name: str = ""):
    """Copy of a config value with credentials replaced by `<redacted>`.

    A setting is redacted when its name looks like a credential (`..secret.key`, `..password`).
    In other strings, user:password@ of a URL and every occurrence of a value in
    `secret_values` are replaced. That covers the pseudonymization key read from the
    environment, should someone paste it into a config file.
    """
    if isinstance(value, dict):
        return {key: redact(inner, secret_values, str(key)) for key, inner in value.items()}
    if isinstance(value, list):
        return [redact(inner, secret_values, name) for inner in value]
    if isinstance(value, str):
        if _SECRET_NAME.search(name):
            return REDACTED
        for secret in secret_values:
            value = value.replace(secret, REDACTED)
        return _URL_USERINFO.sub(f"{REDACTED}@", value)
    return value


@dataclass
class RunRecorder:
    """Collects what one invocation did and writes it to `pipeline_runs` at the end."""

    run_id: str
    command: str
    run_date: str
    profile: str | None
    config: dict
    secret_values: tuple[str, ...] = ()
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    stages: list[dict] = field(default_factory=list)
    tables_read: list[dict] = field(default_factory=list)
    tables_written: list[dict] = field(default_factory=list)
    quality_gate: str | None = None

    def read(self, spark: SparkSession, layout: Layout, stage: str, tables: tuple[str, ...]):
        """Note the current version of each Delta table the stage is about to read."""
        for name in tables:
            self.tables_read.append({"stage": stage, "table": name,
                                     "version": table_version(spark, layout, name)})

    def wrote(self, spark: SparkSession, layout: Layout, stage: str, tables: tuple[str, ...]):
        """Note the version of each Delta table the stage has just written."""
        for name in tables:
            self.tables_written.append({"stage": stage, "table": name,
                                        "version": table_version(spark, layout, name)})

    def stage_done(self, stage: str, started_at: dt.datetime, status: str) -> None:
        seconds = (dt.datetime.now(dt.timezone.utc) - started_at).total_seconds()
        self.stages.append({"stage": stage, "started_at": started_at, "seconds": seconds,
                            "status": status})

    def row(self, layout: Layout, error: BaseException | None = None) -> dict:
        """Build the table row of this invocation; `error` is the exception that ended it, if any."""
        config_json = json.dumps(redact(self.config, self.secret_values), sort_keys=True)
        message = None
        if error is not None:
            message = redact(f"{type(error).__name__}: {error}", self.secret_values)[:2000]
        return {
            "run_id": self.run_id,
            "command": self.command,
            "run_date": dt.date.fromisoformat(self.run_date),
            "status": "failed" if error is not None else "succeeded",
            "error": message,
            "started_at": self.started_at,
            "finished_at": dt.datetime.now(dt.timezone.utc),
            "git_commit": git_commit(),
            "profile": self.profile,
            "config_json": config_json,
            "stages": self.stages,
            "tables_read": self.tables_read,
            "tables_written": self.tables_written,
            "model_candidate": layout.pointed_version(layout.candidate_model_file),
            "model_serving": layout.pointed_version(layout.latest_model_file),
            "quality_gate": self.quality_gate,
            "flagged": error is not None or self.quality_gate == "rejected",
        }

    def write(self, spark: SparkSession, layout: Layout, error: BaseException | None = None):
        """Write this invocation's row, replacing an earlier attempt with the same key."""
        frame = spark.createDataFrame([self.row(layout, error)], SCHEMA)
        write_table(frame, layout, PIPELINE_RUNS_TABLE, partition_by=["run_date"],
                    replace_where=(f"run_id = {sql_string(self.run_id, '--run-id')} AND "
                                   f"command = {sql_string(self.command, 'command')}"))
        log.info("recorded run %s (%s) in %s", self.run_id, self.command, PIPELINE_RUNS_TABLE)
