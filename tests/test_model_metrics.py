"""Spark side of evaluation: the co-occurrence table and the `model_metrics` Delta table."""

from __future__ import annotations

import datetime as dt

import pytest

from behaviorgpt.baselines import CooccurrenceTable
from behaviorgpt.cooccurrence import write_cooccurrence
from behaviorgpt.layout import MODEL_METRICS_COLUMNS, MODEL_METRICS_TABLE, Layout
from behaviorgpt.tables import read_table, write_model_metrics
from behaviorgpt.tokens import UNKNOWN_ID
from shards_helper import make_user, write_dataset

EVALUATED_AT = dt.datetime(2017, 12, 4, 3, 0, tzinfo=dt.timezone.utc)


def test_cooccurrence_counts_training_pairs(spark, tmp_path):
    users = [make_user([10, 11, 12, 10, 11], [4] * 5, key="a"),
             make_user([10, 11, 13, 14], [4] * 4, key="b"),
             make_user([UNKNOWN_ID, 10, 12, 15, 16, 17], [4] * 6, key="c"),
             make_user([30, 31, 32], [4] * 3, key="d")]
    write_dataset(tmp_path, users, [2, 2], 16, 40, 12)
    layout = Layout.from_root(tmp_path)

    write_cooccurrence(spark, layout, neighbours=5)
    table = CooccurrenceTable.read(layout.cooccurrence_dir)

    # Training pairs end at event length-3: a gives 10>11, 11>12; b gives 10>11; c gives
    # 10>12, 12>15 (its unknown first item is skipped); d is too short for any pair.
    assert table.neighbours(10).tolist() == [11, 12]
    assert table.neighbours(11).tolist() == [12]
    assert table.neighbours(12).tolist() == [15]
    assert table.neighbours(15).tolist() == []
    assert table.neighbours(30).tolist() == []


def metric_row(metric: str, value: float, baseline: str | None = None) -> dict:
    return {"model_version": "v1", "task": "next_item", "metric": metric, "segment": "all",
            "k": 10, "value": value, "is_baseline": baseline is not None, "baseline": baseline}


def test_model_metrics_rerun_replaces_rows(spark, tmp_path):
    layout = Layout.from_root(tmp_path)
    first = [metric_row("hr", 0.2), metric_row("ndcg", 0.1),
             metric_row("ndcg", 0.05, baseline="recent_items")]
    other_run = [metric_row("hr", 0.3)]

    write_model_metrics(spark, layout, first, run_id="r1", run_date="2017-12-03",
                        evaluated_at=EVALUATED_AT)
    write_model_metrics(spark, layout, other_run, run_id="r2", run_date="2017-12-04",
                        evaluated_at=EVALUATED_AT)
    rerun = [{**row, "value": row["value"] + 1.0} for row in first]
    write_model_metrics(spark, layout, rerun, run_id="r1", run_date="2017-12-03",
                        evaluated_at=EVALUATED_AT)

    table = read_table(spark, layout, MODEL_METRICS_TABLE)
    rows = {(row["run_id"], row["metric"], row["baseline"]): row for row in table.collect()}
    assert table.columns == [name for name, _ in MODEL_METRICS_COLUMNS]
    assert table.count() == 4
    assert rows[("r1", "hr", None)]["value"] == pytest.approx(1.2)
    assert rows[("r1", "ndcg", "recent_items")]["value"] == pytest.approx(1.05)
    assert rows[("r1", "ndcg", "recent_items")]["is_baseline"] is True
    assert rows[("r2", "hr", None)]["value"] == pytest.approx(0.3)
    assert rows[("r1", "hr", None)]["run_date"] == dt.date(2017, 12, 3)
