"""Three nights of the nightly flow against one full run over the same three days.

Night 1 runs every stage on day 1's log, nights 2 and 3 on their own day's log only
(`behaviorgpt run --date D --input <day D>`). After night 3 the sessions and the sequences
must equal those of one run over the three days together, including a session that crosses
midnight, and every user seen in any night must have a profile.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import functions as F

from behaviorgpt.cli import main
from behaviorgpt.config import load_config
from behaviorgpt.generator import generate_event_log
from behaviorgpt.layout import PROFILES_TABLE, SESSIONS_TABLE, Layout
from behaviorgpt.privacy import DEVELOPMENT_KEY, pseudonymize
from behaviorgpt.tables import read_table

DAYS = ["2017-11-25", "2017-11-26", "2017-11-27"]
TAOBAO_COLUMNS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]

# Tiny but complete nights: one training process, one epoch, a small model.
NIGHT_SETTINGS = ["--set", "train.nproc=1", "--set", "train.epochs=1", "--set", "model.d_model=16",
                  "--set", "model.n_layer=1", "--set", "sequences.num_shards=1",
                  "--set", "spark.shuffle_partitions=2"]

# Nights after the first ingest and sessionize only their own day, continuing sessions that
# cross midnight from the previous day's tail.
INCREMENTAL = ["--set", "ingest.scope=run_date"]

MIDNIGHT_USER = "99999001"
"""A user whose session runs from 23:50 on day 1 to 00:10 on day 2."""


def day_logs(folder: Path) -> list[Path]:
    """Generate three days of events and split them into one Taobao CSV per UTC day."""
    settings = load_config("local", ["generator.users=60", "generator.items=300",
                                     "generator.categories=12", "generator.days=3",
                                     f"generator.start_date={DAYS[0]}",
                                     "generator.mean_events_per_user=25"]).generator
    generated = generate_event_log(folder / "generated", settings)
    events = pd.read_csv(generated.events_path, header=None, names=TAOBAO_COLUMNS)

    midnight = int(dt.datetime.fromisoformat(f"{DAYS[1]}T00:00:00+00:00").timestamp())
    crossing = pd.DataFrame({"user_id": int(MIDNIGHT_USER), "item_id": [11, 12, 13, 14],
                             "category_id": 5, "behavior_type": "pv",
                             "timestamp": [midnight - 600, midnight - 300, midnight + 120,
                                           midnight + 600]})
    events = pd.concat([events, crossing], ignore_index=True)

    day = pd.to_datetime(events["timestamp"], unit="s", utc=True).dt.strftime("%Y-%m-%d")
    paths = []
    for name in DAYS:
        path = folder / f"{name}.csv"
        events[day == name].to_csv(path, header=False, index=False)
        paths.append(path)
    assert sum(len(events[day == name]) for name in DAYS) == len(events)

    full = folder / "all-days.csv"
    events.to_csv(full, header=False, index=False)
    return paths + [full]


@pytest.fixture(scope="module")
def nights(spark, tmp_path_factory):
    """Layouts of the three-night root and of the one full run; the logs' user ids."""
    folder = tmp_path_factory.mktemp("nightly")
    *per_day, full = day_logs(folder)
    nightly, reference = folder / "nightly", folder / "full"

    for night, (name, log) in enumerate(zip(DAYS, per_day)):
        scope = INCREMENTAL if night > 0 else []
        assert main(["run", "--root", str(nightly), "--date", name, "--input", str(log),
                     "--run-id", f"night-{name}", *NIGHT_SETTINGS, *scope]) == 0
    for stage in ("ingest", "sessionize", "sequences"):
        assert main([stage, "--root", str(reference), "--date", DAYS[-1], "--input", str(full),
                     *NIGHT_SETTINGS]) == 0

    users = pd.read_csv(full, header=None, names=TAOBAO_COLUMNS)["user_id"].astype(str).unique()
    return Layout.from_root(nightly), Layout.from_root(reference), users


def assert_same_rows(left, right) -> None:
    assert left.count() == right.count()
    assert left.exceptAll(right).count() == 0
    assert right.exceptAll(left).count() == 0


@pytest.mark.slow
def test_nights_equal_full_run_sessions(spark, nights):
    nightly, reference, _ = nights

    assert_same_rows(read_table(spark, nightly, SESSIONS_TABLE),
                     read_table(spark, reference, SESSIONS_TABLE))
    crossing = pseudonymize(MIDNIGHT_USER, DEVELOPMENT_KEY)
    stitched = read_table(spark, nightly, SESSIONS_TABLE).where(F.col("user_key") == crossing)
    assert [row["event_count"] for row in stitched.collect()] == [4]


@pytest.mark.slow
def test_nights_equal_full_run_sequences(spark, nights):
    nightly, reference, _ = nights

    for part in ("shards", "vocab/items.parquet", "vocab/categories.parquet"):
        assert_same_rows(spark.read.parquet(str(nightly.sequences_dir / part)),
                         spark.read.parquet(str(reference.sequences_dir / part)))


@pytest.mark.slow
def test_every_user_seen_has_profile(spark, nights):
    nightly, _, users = nights
    expected = {pseudonymize(user, DEVELOPMENT_KEY) for user in users}

    profiled = {row["user_key"] for row in
                read_table(spark, nightly, PROFILES_TABLE).select("user_key").collect()}

    assert profiled == expected


@pytest.mark.slow
def test_every_night_is_recorded(spark, nights):
    nightly, _, _ = nights

    runs = read_table(spark, nightly, "pipeline_runs").where(F.col("command") == "run") \
        .orderBy("run_date").collect()

    assert [row["run_id"] for row in runs] == [f"night-{name}" for name in DAYS]
    assert all(row["status"] == "succeeded" for row in runs)
    assert runs[0]["quality_gate"] == "first_model"
