"""Pseudonymization: Spark's HMAC equals Python's, and keys come only from the environment."""

import pytest
from pyspark.sql import functions as F

from behaviorgpt.config import PrivacyConfig
from behaviorgpt.privacy import (DEVELOPMENT_KEY, MissingKeyError, pseudonymization_key,
                                 pseudonymize, pseudonymize_column)


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
