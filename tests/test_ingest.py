"""Taobao ingestion: valid rows become canonical events, bad rows land in quarantine."""

import re
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from behaviorgpt.events import ingest_taobao
from behaviorgpt.layout import EVENTS_TABLE, QUARANTINE_TABLE, Layout
from behaviorgpt.privacy import pseudonymize
from behaviorgpt.tables import read_table

from conftest import real_data_file

KEY = b"test-key"
NOW_TS = 1_700_000_000  # 2023-11-14, the "current time" of these ingest runs

LINES = {
    "1,10,100,pv,1511658000": None,
    "1,11,100,buy,1511658060": None,
    "2,10,,cart,1511658000\r": None,  # CRLF line ending, missing category is allowed
    "1,10,100,pv,1511658000 ": "duplicate",  # same fields as the first line after trimming
    "3,10,100,pv": "malformed_row",
    "": "malformed_row",  # a blank line inside the file
    "3,10,100,pv,1511658000,extra": "malformed_row",
    ",10,100,pv,1511658000": "missing_id",
    "4 4,10,100,pv,1511658000": "malformed_row",
    "5,10,100,click,1511658000": "unknown_event_type",
    "6,10,100,pv,yesterday": "unparseable_time",
    "7,10,100,pv,1511658000000": "time_in_milliseconds",
    "8,10,100,pv,0": "time_out_of_range",
    "9,10,100,pv,-5": "time_out_of_range",
    "10,10,100,pv,4102444800": "time_out_of_range",  # 2100-01-01
}


@pytest.fixture()
def layout(tmp_path: Path) -> Layout:
    return Layout.from_root(tmp_path / "warehouse")


def redacted(line: str) -> str:
    """The quarantine form of a line of `LINES`: each whole-token user id pseudonymized, or a
    digest when the line has no user field."""
    user = line.split(",")[0].strip()
    if not user:
        if "," in line:  # a missing id: the line has nothing to hide
            return line
        return f"<redacted line: {len(line)} characters, HMAC-SHA256 {pseudonymize(line, KEY)}>"
    return re.sub(rf"(?<![\w.-]){re.escape(user)}(?![\w.-])", pseudonymize(user, KEY), line)


def write_log(path: Path, lines) -> str:
    path.write_bytes("\n".join(lines).encode("utf-8"))
    return str(path)


def test_reasons_and_reconciliation(spark, tmp_path, layout):
    source = write_log(tmp_path / "log.csv", LINES)

    stats = ingest_taobao(spark, source, layout, key=KEY, run_id="r1", run_date="2023-11-14",
                          now_ts=NOW_TS)

    expected_bad = [reason for reason in LINES.values() if reason not in (None, "duplicate")]
    assert stats.lines_read == len(LINES)
    assert stats.accepted == 3
    assert stats.duplicates == 1
    assert stats.quarantined == len(expected_bad)
    assert stats.lines_read == stats.accepted + stats.quarantined + stats.duplicates

    quarantine = read_table(spark, layout, QUARANTINE_TABLE).collect()
    found = {row["raw_line"]: row["reason"] for row in quarantine}
    for line, reason in LINES.items():
        if reason not in (None, "duplicate"):
            assert found[redacted(line)] == reason, line
    assert all(row["source_file"].endswith("log.csv") for row in quarantine)


def test_canonical_columns(spark, tmp_path, layout):
    source = write_log(tmp_path / "log.csv", ["1,10,100,buy,1511658000", "2,11,,pv,1511658001"])

    ingest_taobao(spark, source, layout, key=KEY, run_id="r1", run_date="2023-11-14",
                  now_ts=NOW_TS)

    rows = {row["item_id"]: row for row in read_table(spark, layout, EVENTS_TABLE).collect()}
    bought = rows["10"]
    assert bought["user_key"] == pseudonymize("1", KEY)
    assert bought["event_type"] == "purchase"
    assert bought["event_ts"] == 1511658000
    assert str(bought["event_date"]) == "2017-11-26"
    assert bought["category_id"] == "100"
    assert rows["11"]["category_id"] is None
    assert rows["11"]["event_type"] == "view"


def test_rerun_same_date_is_idempotent(spark, tmp_path, layout):
    source = write_log(tmp_path / "log.csv", LINES)

    for _ in range(2):
        ingest_taobao(spark, source, layout, key=KEY, run_id="r1", run_date="2023-11-14",
                      now_ts=NOW_TS)

    assert read_table(spark, layout, EVENTS_TABLE).count() == 3
    assert read_table(spark, layout, QUARANTINE_TABLE).count() == 11


def test_real_taobao_slice_reconciles(spark, tmp_path, layout):
    source = real_data_file(
        "taobao_userbehavior/user_sorted_head_Haohanblue-mydeep/UserBehavior.csv")

    stats = ingest_taobao(spark, str(source), layout, key=KEY, run_id="r1",
                          run_date="2017-12-04")

    assert stats.lines_read == 84_476
    assert stats.quarantined == 1
    assert stats.lines_read == stats.accepted + stats.quarantined + stats.duplicates
    events = read_table(spark, layout, EVENTS_TABLE)
    assert events.count() == stats.accepted
    assert events.select(F.count_distinct("user_key")).first()[0] == 815

    cut_off = read_table(spark, layout, QUARANTINE_TABLE).first()
    assert cut_off["raw_line"] == pseudonymize("100370", KEY) + ",1968385,1875258,pv"
    assert cut_off["reason"] == "malformed_row"
