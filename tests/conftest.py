"""Shared fixtures: one local SparkSession with Delta for the whole test session, and the
folder of real public logs that some tests read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

DATA_DIR_SETTING = "BEHAVIORGPT_DATA_DIR"
"""Environment variable naming the folder of real public logs; default ../shared/data."""


def real_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_SETTING, REPO_ROOT.parent / "shared" / "data")).resolve()


def real_data_file(relative: str) -> Path:
    """Return a file under the real-data folder, or skip the test naming the setting."""
    path = real_data_dir() / relative
    if not path.is_file():
        pytest.skip(f"real data file {path} not found; set {DATA_DIR_SETTING} to the folder "
                    f"that holds the public behaviour logs")
    return path


@pytest.fixture(scope="session")
def spark_config():
    from behaviorgpt.config import load_config

    # Small tables: two shuffle partitions and one Delta snapshot partition keep test jobs
    # from spending their time scheduling empty tasks.
    return load_config("local", [
        "spark.shuffle_partitions=2",
        "spark.driver_memory=2g",
        "spark.extra={'spark.ui.enabled': 'false', "
        "'spark.databricks.delta.snapshotPartitions': '1', "
        "'spark.sql.sources.parallelPartitionDiscovery.parallelism': '2', "
        "'spark.default.parallelism': '2'}",
    ])


@pytest.fixture(scope="session")
def spark(spark_config):
    from behaviorgpt.spark import build_spark_session

    session = build_spark_session(spark_config)
    yield session
    session.stop()


def run_pipeline(root: Path, *extra: str) -> "Layout":
    """Run every stage through the CLI into `root` and return the run's layout."""
    from behaviorgpt.cli import main
    from behaviorgpt.layout import Layout

    status = main(["run", "--root", str(root), "--date", "2017-12-04", *extra])
    assert status == 0
    return Layout.from_root(root)


@pytest.fixture(scope="session")
def real_pipeline(spark, tmp_path_factory):
    """A full run on the real Taobao slice, with fewer epochs than the default to save time."""
    source = real_data_file("taobao_userbehavior/user_sorted_head_Haohanblue-mydeep/UserBehavior.csv")
    return run_pipeline(tmp_path_factory.mktemp("real"), "--input", str(source),
                        "--set", "train.epochs=3")


@pytest.fixture(scope="session")
def default_pipeline(spark, tmp_path_factory):
    """A full run with the demo's own settings on the embedded generator's log."""
    return run_pipeline(tmp_path_factory.mktemp("default"))
