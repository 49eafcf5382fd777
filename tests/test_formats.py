"""Input presets: each parses its real sample or hand-written rows in its documented layout."""

from pathlib import Path

import pytest
from pyspark.sql import functions as F

from behaviorgpt.events import classify
from behaviorgpt.formats import FormatError, load_mapping, parse_source, source_spec
from behaviorgpt.privacy import pseudonymize

from conftest import real_data_file

KEY = b"test-key"
FORMATS_DIR = Path(__file__).parent / "data" / "formats"
EARLIEST_US = 631_152_000 * 1_000_000  # 1990-01-01, before MovieLens 100K (1997)
LATEST_US = 1_800_000_000 * 1_000_000  # 2027-01-15
DROP = ["email", "phone", "ip"]


def canonical(spark, format_name, path, *, mapping=None):
    """Parse and classify `path` as `format_name`; return the DataFrame."""
    spec = source_spec(format_name, mapping)
    parsed = parse_source(spark, spec, str(path), type_map={}, drop_columns=DROP)
    return classify(parsed, key=KEY, earliest_us=EARLIEST_US, latest_us=LATEST_US)


def rows_by_item(spark, format_name, path, **kwargs):
    rows = canonical(spark, format_name, path, **kwargs).collect()
    return rows, {(row["item_id"], row["event_type"]): row for row in rows}


def micros(row):
    return int(row["event_time"].timestamp() * 1_000_000 + 0.5)


def test_taobao_real_sample(spark):
    source = real_data_file("taobao_userbehavior/time_sorted_prefix_jason-wang1-UserBehaviorAnalysis/UserBehavior.csv")

    counts = canonical(spark, "taobao", source).groupBy("reason").count().collect()

    by_reason = {row["reason"]: row["count"] for row in counts}
    assert by_reason == {None: 110_300}


def test_movielens_100k(spark):
    folder = real_data_file("movielens_100k/u.data").parent

    events = canonical(spark, "movielens", folder)
    summary = events.agg(F.count(F.lit(1)).alias("rows"), F.count("reason").alias("bad"),
                         F.count("category_id").alias("with_category")).first()
    first = events.where((F.col("item_id") == "242")
                         & (F.col("event_ts") == 881250949)).first()

    assert summary["rows"] == 100_000
    assert summary["bad"] == 0
    assert summary["with_category"] == 100_000
    assert first["event_type"] == "rating"
    assert first["value"] == 3.0
    assert first["user_key"] == pseudonymize("196", KEY)
    assert first["category_id"] == "Comedy"
    assert first["extras"]["categories"] == "Comedy"


def test_movielens_1m(spark):
    folder = real_data_file("movielens_1m_partial/ratings.dat").parent

    events = canonical(spark, "movielens", folder)
    summary = events.agg(F.count(F.lit(1)).alias("rows"),
                         F.count("reason").alias("bad")).first()
    toy_story = events.where(F.col("item_id") == "1").select("category_id", "extras").first()

    assert summary["rows"] == 487_650
    assert summary["bad"] == 0
    assert toy_story["category_id"] == "Animation"
    assert toy_story["extras"]["categories"] == "Animation|Children's|Comedy"


def test_otto_real_sample(spark):
    source = real_data_file("otto_fixture/train.jsonl")

    events = canonical(spark, "otto", source)
    summary = events.agg(F.count(F.lit(1)).alias("rows"), F.count("reason").alias("bad"),
                         F.count_distinct("user_key").alias("users")).first()
    first = events.where((F.col("item_id") == "1517085")
                         & (F.col("user_key") == pseudonymize("0", KEY))).first()

    assert summary["rows"] == 862
    assert summary["bad"] == 0
    assert summary["users"] == 20
    assert first["event_type"] == "view"
    assert micros(first) == 1_659_304_800_025_000
    assert first["event_ts"] == 1_659_304_800
    assert first["session_key"] == pseudonymize("0", KEY)


def test_rees46_rows(spark):
    rows, by_item = rows_by_item(spark, "rees46", FORMATS_DIR / "rees46")

    assert len(rows) == 4
    assert all(row["reason"] is None for row in rows)
    viewed = by_item[("1000001", "view")]
    assert viewed["event_ts"] == 1_569_888_000
    assert viewed["value"] == 35.79
    assert viewed["category_id"] == "2100000000000000001"
    assert viewed["extras"]["brand"] == "acme"
    assert "category_code" not in viewed["extras"]  # empty is allowed and left out
    assert by_item[("1000002", "remove_from_cart")]["event_ts"] == 1_569_888_009
    sofa = by_item[("1000003", "purchase")]
    assert sofa["extras"]["category_code"] == "furniture.living_room,sofa"
    assert sofa["session_key"] == pseudonymize("0b7d1c2e-0000-4000-8000-000000000003", KEY)


def test_retailrocket_rows(spark):
    rows, by_item = rows_by_item(spark, "retailrocket", FORMATS_DIR / "retailrocket")

    assert len(rows) == 3
    assert {row["event_type"] for row in rows} == {"view", "cart", "purchase"}
    assert micros(by_item[("355000", "view")]) == 1_433_221_332_117_000
    assert by_item[("248000", "purchase")]["extras"]["transactionid"] == "4000"
    assert by_item[("248000", "cart")]["user_key"] == pseudonymize("992000", KEY)


def test_yoochoose_clicks(spark):
    rows, by_item = rows_by_item(spark, "yoochoose", FORMATS_DIR / "yoochoose_clicks")

    assert len(rows) == 3
    assert all(row["reason"] is None for row in rows)
    first = by_item[("214536502", "view")]
    assert micros(first) == 1_396_867_869_277_000
    assert first["category_id"] is None  # "0" means no category
    assert by_item[("214662742", "view")]["category_id"] == "S"
    assert first["session_key"] == pseudonymize("1", KEY)


def test_yoochoose_preprocessed(spark):
    rows, by_item = rows_by_item(spark, "yoochoose", FORMATS_DIR / "yoochoose_preprocessed")

    assert len(rows) == 2  # the header line is not a record
    assert micros(by_item[("214536502", "view")]) == 1_396_867_869_277_000
    assert micros(by_item[("214536500", "view")]) == 1_396_868_049_868_000


def test_diginetica_rows(spark):
    rows, by_item = rows_by_item(spark, "diginetica", FORMATS_DIR / "diginetica")

    assert len(rows) == 4
    assert all(row["reason"] is None for row in rows)
    anonymous = by_item[("81766", "view")]
    assert anonymous["user_key"] == pseudonymize("session:1", KEY)
    assert micros(anonymous) == (1_462_752_000 * 1000 + 526_309) * 1000  # 2016-05-09 + offset
    assert anonymous["category_id"] == "1096"
    bought = by_item[("4243", "purchase")]
    assert bought["user_key"] == pseudonymize("278", KEY)
    assert bought["category_id"] == "330"
    assert bought["extras"]["ordernumber"] == "1001"
    assert by_item[("31331", "view")]["category_id"] is None


def test_generic_mapping(spark):
    folder = FORMATS_DIR / "generic"

    rows, by_item = rows_by_item(spark, "generic", folder, mapping=str(folder / "mapping.yaml"))

    assert len(rows) == 3
    clicked = by_item[("sku-1", "view")]
    assert clicked["event_ts"] == 1_614_585_600  # 09:00 in Berlin is 08:00 UTC
    assert by_item[("sku-1", "cart")]["value"] == 19.99
    assert all("email" not in (row["extras"] or {}) for row in rows)
    rejected = [row for row in rows if row["reason"]]
    assert [row["reason"] for row in rejected] == ["unknown_event_type"]
    assert "bob@example.com" not in rejected[0]["raw_line"]


def test_mapping_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("files:\n  - name_glob: '*.csv'\n    columns: [a, b]\n"
                   "    fields: {user: a, item: b, event_type: '=view', time: c}\n")

    with pytest.raises(FormatError, match="fields.time = 'c'"):
        load_mapping(bad)
    with pytest.raises(FormatError, match="ingest.mapping"):
        source_spec("generic")
