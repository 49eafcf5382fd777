"""The `pipeline_runs` table: versions read and written, stage times, failures, secrets kept out."""

from __future__ import annotations

import json
import re

import pytest
from pyspark.sql import functions as F

from behaviorgpt.config import load_config
from behaviorgpt.layout import EVENTS_TABLE, PIPELINE_RUNS_TABLE, SESSIONS_TABLE, Layout
from behaviorgpt.pipeline import RunContext, run_stages
from behaviorgpt.runs import REDACTED, RunRecorder, check_run_id, git_commit, redact
from behaviorgpt.tables import read_table, table_version, write_table

SECRET_SETTING = "spark.hadoop.fs.s3a.secret.key"


def context_for(root, *overrides: str, run_id: str) -> RunContext:
    config = load_config("local", [f"paths.root={root}", "run_date=2017-12-02", *overrides])
    return RunContext.create(config, profile="local", conf_dir=None, overrides=list(overrides),
                             run_id=run_id)


def runs_of(spark, layout: Layout, run_id: str) -> list:
    return read_table(spark, layout, PIPELINE_RUNS_TABLE).where(F.col("run_id") == run_id) \
        .collect()


def test_record_names_versions_and_times(spark, tmp_path):
    layout = Layout.from_root(tmp_path)
    events = spark.createDataFrame([("u1", 1)], "user_key string, event_ts long")
    write_table(events, layout, EVENTS_TABLE)
    write_table(events, layout, EVENTS_TABLE)
    recorder = RunRecorder(run_id="r1", command="sessionize", run_date="2017-12-02",
                           profile="local", config={"session": {"gap_minutes": 30.0}})

    recorder.read(spark, layout, "sessionize", (EVENTS_TABLE,))
    write_table(events, layout, SESSIONS_TABLE)
    recorder.wrote(spark, layout, "sessionize", (SESSIONS_TABLE,))
    recorder.stage_done("sessionize", recorder.started_at, "succeeded")
    recorder.write(spark, layout)

    [row] = runs_of(spark, layout, "r1")
    assert row["status"] == "succeeded"
    assert row["flagged"] is False
    assert [(t["table"], t["version"]) for t in row["tables_read"]] == [(EVENTS_TABLE, 1)]
    assert [(t["table"], t["version"]) for t in row["tables_written"]] == [(SESSIONS_TABLE, 0)]
    assert row["stages"][0]["stage"] == "sessionize"
    assert row["stages"][0]["seconds"] >= 0.0
    assert json.loads(row["config_json"]) == {"session": {"gap_minutes": 30.0}}
    assert row["model_serving"] is None


def test_failed_stage_is_recorded_then_raised(spark, tmp_path):
    context = context_for(tmp_path, run_id="failing")

    # No events table yet: sessionize fails, and pipeline_runs records the failure.
    with pytest.raises(FileNotFoundError, match="events"):
        run_stages(context, ["sessionize"])

    [row] = runs_of(spark, context.layout, "failing")
    assert row["status"] == "failed"
    assert row["flagged"] is True
    assert row["error"].startswith("FileNotFoundError: Delta table 'events' not found")
    assert [(s["stage"], s["status"]) for s in row["stages"]] == [("sessionize", "failed")]
    assert [(t["table"], t["version"]) for t in row["tables_read"]] == [(EVENTS_TABLE, None)]


def test_retry_replaces_row_of_same_task(spark, tmp_path):
    context = context_for(tmp_path, run_id="retried")
    for _ in range(2):
        with pytest.raises(FileNotFoundError):
            run_stages(context, ["sessionize"], command="sessionize")
    with pytest.raises(FileNotFoundError):
        run_stages(context, ["sequences"], command="sequences")

    commands = sorted(row["command"] for row in runs_of(spark, context.layout, "retried"))

    assert commands == ["sequences", "sessionize"]
    assert table_version(spark, context.layout, PIPELINE_RUNS_TABLE) == 2


def test_secrets_stay_out(spark, tmp_path, monkeypatch):
    monkeypatch.setenv("BEHAVIORGPT_PSEUDONYM_KEY", "pepper-1234567890")
    context = context_for(
        tmp_path, f"spark.extra={{'{SECRET_SETTING}': 'hunter2'}}",
        "paths.input=s3a://reader:hunter3@bucket/logs/pepper-1234567890.csv", run_id="secret")

    with pytest.raises(FileNotFoundError):
        run_stages(context, ["sessionize"])

    row = runs_of(spark, context.layout, "secret")[0].asDict(recursive=True)
    text = json.dumps(row, default=str)
    for secret in ("hunter2", "hunter3", "pepper-1234567890"):
        assert secret not in text
    config = json.loads(row["config_json"])
    assert config["spark"]["extra"][SECRET_SETTING] == REDACTED
    assert config["paths"]["input"] == f"s3a://{REDACTED}@bucket/logs/{REDACTED}.csv"
    assert config["privacy"]["key_env"] == "BEHAVIORGPT_PSEUDONYM_KEY"


def test_redact_keeps_ordinary_values():
    settings = {"spark": {"extra": {"spark.sql.shuffle.partitions": "4",
                                    "spark.hadoop.fs.azure.account.auth.type": "OAuth",
                                    "spark.jdbc.password": "x"}},
                "paths": {"input": "hdfs:///logs/2017-12-02"}}

    cleaned = redact(settings)

    assert cleaned["spark"]["extra"]["spark.sql.shuffle.partitions"] == "4"
    assert cleaned["spark"]["extra"]["spark.jdbc.password"] == REDACTED
    assert cleaned["spark"]["extra"]["spark.hadoop.fs.azure.account.auth.type"] == REDACTED
    assert cleaned["paths"]["input"] == "hdfs:///logs/2017-12-02"


def test_git_commit_inside_and_outside_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv("BEHAVIORGPT_GIT_COMMIT", raising=False)

    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", git_commit())
    assert git_commit(tmp_path) is None
    monkeypatch.setenv("BEHAVIORGPT_GIT_COMMIT", "abc123")
    assert git_commit(tmp_path) == "abc123"


def test_run_id_rejects_quotes():
    assert check_run_id("scheduled__2017-12-02T00:00:00+00:00")
    with pytest.raises(ValueError, match="--run-id"):
        check_run_id("x' OR '1'='1")
