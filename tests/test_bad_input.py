"""Bad input corpus: every hand-written bad file either parses or lands in quarantine with the
right reason, the ingest job exits 0, and the run's counts reconcile."""

import shutil
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from behaviorgpt.cli import main
from behaviorgpt.layout import EVENTS_TABLE, QUARANTINE_TABLE, Layout
from behaviorgpt.tables import read_table

BAD_DIR = Path(__file__).parent / "data" / "bad"
DAILY_CAP = 5

# case file: (format, item ids in the file, item ids accepted, quarantine reasons, duplicates)
CASES = {
    "wrong_delimiter.csv": ("taobao", ["101"], [], ["malformed_row"], 0),
    "extra_and_missing_columns.csv": (
        "taobao", ["201", "202", "203"], ["203"], ["malformed_row"] * 2, 0),
    "non_utf8.csv": ("taobao", ["301", "302", "303"], ["302"], ["malformed_row"] * 2, 0),
    "bom.csv": ("taobao", ["401", "402"], ["401", "402"], [], 0),
    "crlf.csv": ("taobao", ["501", "502"], ["501", "502"], [], 0),
    "negative_timestamp.csv": ("taobao", ["601"], [], ["time_out_of_range"], 0),
    "milliseconds_timestamp.csv": ("taobao", ["701"], [], ["time_in_milliseconds"], 0),
    "big_ids.csv": ("taobao", ["801", "18446744073709551616"],
                    ["801", "18446744073709551616"], [], 0),
    "id_with_spaces.csv": ("taobao", ["901", "9 02"], [], ["malformed_row"] * 2, 0),
    "empty.csv": ("taobao", [], [], [], 0),
    "huge_line.csv": ("taobao", ["1101"], ["1101"], ["malformed_row"] * 2, 0),
    "bot.csv": ("taobao", [str(item) for item in range(1201, 1207)], [],
                ["user_daily_cap_exceeded"] * 6, 1),
    "bad_values.csv": ("taobao", ["1301", "1302", "1303", "1304"], [],
                       ["missing_id", "time_out_of_range", "unknown_event_type",
                        "unparseable_time"], 0),
    "quoted_fields.csv": ("rees46", ["1401", "1402"], ["1401"], ["malformed_row"] * 2, 0),
    "header_only.csv": ("rees46", [], [], [], 0),
}


def write_huge_lines(folder: Path) -> None:
    """Two 1 MB lines (too large to keep in the repository) next to one normal line."""
    with open(folder / "huge_line.csv", "w", encoding="ascii") as handle:
        handle.write("111," + "9" * 1_000_000 + ",1,pv,1511658000\n")
        handle.write("," * 1_000_000 + "\n")
        handle.write("111,1101,1,pv,1511658000\n")


@pytest.fixture(scope="module")
def ingested(spark, tmp_path_factory):
    """Run the ingest job once per format over the corpus; return each format's layout."""
    work = tmp_path_factory.mktemp("bad")
    layouts = {}
    for format_name in ("taobao", "rees46"):
        folder = work / "input" / format_name
        shutil.copytree(BAD_DIR / format_name, folder)
        if format_name == "taobao":
            write_huge_lines(folder)
        root = work / "warehouse" / format_name
        status = main(["ingest", "--root", str(root), "--input", str(folder),
                       "--date", "2017-12-04", "--set", f"ingest.format={format_name}",
                       "--set", f"ingest.max_events_per_user_day={DAILY_CAP}"])
        assert status == 0
        layouts[format_name] = Layout.from_root(root)
    return layouts


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(spark, ingested, case):
    format_name, items, accepted, reasons, _ = CASES[case]
    layout = ingested[format_name]

    events = read_table(spark, layout, EVENTS_TABLE)
    kept = [row["item_id"] for row in events.where(F.col("item_id").isin(items))
            .select("item_id").collect()] if items else []
    quarantined = (read_table(spark, layout, QUARANTINE_TABLE)
                   .where(F.col("source_file").endswith("/" + case)).select("reason").collect())

    assert sorted(kept) == sorted(accepted)
    assert sorted(row["reason"] for row in quarantined) == sorted(reasons)


@pytest.mark.slow
@pytest.mark.parametrize("format_name", ["taobao", "rees46"])
def test_bad_input_reconciles(spark, ingested, format_name):
    layout = ingested[format_name]
    cases = [case for case in CASES.values() if case[0] == format_name]

    run = read_table(spark, layout, "ingest_runs").first()

    assert run["accepted"] == sum(len(case[2]) for case in cases)
    assert run["quarantined"] == sum(len(case[3]) for case in cases)
    assert run["duplicates"] == sum(case[4] for case in cases)
    assert run["lines_read"] == run["accepted"] + run["quarantined"] + run["duplicates"]
    assert read_table(spark, layout, EVENTS_TABLE).count() == run["accepted"]
