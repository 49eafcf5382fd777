"""Pseudonymization: Spark's HMAC equals Python's, and keys come only from the environment."""

import pytest
from pyspark.sql import functions as F

from behaviorgpt.config import PrivacyConfig
from behaviorgpt.privacy import (DEVELOPMENT_KEY, MissingKeyError, pseudonymization_key,
                                 pseudonymize, pseudonymize_column, redact_raw_line)


@pytest.mark.parametrize("key", [b"k", b"a-much-longer-secret-key-" * 4, b""])
def test_spark_hmac_matches_python(spark, key):
    values = ["100370", "1", "", "用户-42", "9" * 40]
    frame = spark.createDataFrame([(value,) for value in values], "user_id string")

    rows = frame.select("user_id", pseudonymize_column(F.col("user_id"), key).alias("hashed"))
    result = {row["user_id"]: row["hashed"] for row in rows.collect()}

    for value in values:
        assert result[value] == pseudonymize(value, key)


def test_null_user_id_stays_null(spark):
    frame = spark.createDataFrame([(None,)], "user_id string")

    row = frame.select(pseudonymize_column(F.col("user_id"), b"key").alias("hashed")).first()

    assert row["hashed"] is None


def test_key_read_from_environment(monkeypatch):
    monkeypatch.setenv("TEST_PSEUDONYM_KEY", "s3cret")

    key = pseudonymization_key(PrivacyConfig(key_env="TEST_PSEUDONYM_KEY", allow_dev_key=False))

    assert key == b"s3cret"


def test_missing_key_rejected_without_dev_key(monkeypatch):
    monkeypatch.delenv("TEST_PSEUDONYM_KEY", raising=False)

    with pytest.raises(MissingKeyError, match="TEST_PSEUDONYM_KEY"):
        pseudonymization_key(PrivacyConfig(key_env="TEST_PSEUDONYM_KEY", allow_dev_key=False))


def test_dev_key_used_locally(monkeypatch):
    monkeypatch.delenv("TEST_PSEUDONYM_KEY", raising=False)

    key = pseudonymization_key(PrivacyConfig(key_env="TEST_PSEUDONYM_KEY", allow_dev_key=True))

    assert key == DEVELOPMENT_KEY


def test_personal_columns_dropped(spark, tmp_path):
    from pathlib import Path

    from behaviorgpt.cli import main
    from behaviorgpt.layout import Layout
    from behaviorgpt.tables import read_table

    folder = Path(__file__).parent / "data" / "bad" / "personal"
    personal = ["Alice Example", "alice@example.com", "+49 30 1234567", "192.0.2.10",
                "Bob Example", "bob@example.com", "+1 555 0100", "198.51.100.7"]

    status = main(["ingest", "--root", str(tmp_path), "--input", str(folder / "export.csv"),
                   "--date", "2017-12-04", "--set", "ingest.format=generic",
                   "--set", f"ingest.mapping={folder / 'mapping.yaml'}"])

    assert status == 0
    layout = Layout.from_root(tmp_path)
    for table in ("events", "quarantine", "ingest_runs"):
        rows = read_table(spark, layout, table).toJSON().collect()
        assert rows, table
        for value in personal:
            assert not any(value in row for row in rows), (table, value)


@pytest.mark.parametrize(("line", "user", "session", "expected"), [
    ("7,70,1,pv", "7", None, "<U>,70,1,pv"),
    ("7,7,1,pv", "7", None, "<U>,<U>,1,pv"),  # an item equal to the user id is hidden too
    ("u.7,17,7.5,pv", "u.7", None, "<U>,17,7.5,pv"),
    ('"a\\Eb",x', "a\\Eb", None, '"<U>",x'),
    ('{"session":"s9","event":{"aid":"9"}}', "s9", "s9", '{"session":"<U>","event":{"aid":"9"}}'),
    ("1,10,pv,s-5", "1", "s-5", "<U>,10,pv,<S>"),
    (",1,pv", None, None, ",1,pv"),
])
def test_raw_line_ids_pseudonymized(spark, line, user, session, expected):
    key = b"k"
    frame = spark.createDataFrame([(line, user, session)], "line string, user string, "
                                  "session string")

    row = frame.select(redact_raw_line(F.col("line"), [F.col("user"), F.col("session")],
                                       parsed=F.lit(True), key=key).alias("kept")).first()

    if user:
        expected = expected.replace("<U>", pseudonymize(user, key))
    if session:
        expected = expected.replace("<S>", pseudonymize(session, key))
    assert row["kept"] == expected


def test_unparsed_line_kept_as_digest(spark):
    frame = spark.createDataFrame([("alice;1;pv",)], "line string")

    row = frame.select(redact_raw_line(F.col("line"), [F.lit(None).cast("string")],
                                       parsed=F.lit(False), key=b"k").alias("kept")).first()

    digest = pseudonymize("alice;1;pv", b"k")
    assert row["kept"] == f"<redacted line: 10 characters, HMAC-SHA256 {digest}>"
    assert "alice" not in row["kept"]
