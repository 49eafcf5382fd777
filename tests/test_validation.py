"""Names and paths that reach SQL text or the file system are checked first.

Each rejection is a ConfigError whose message names the key, the value and the fix.
"""

import os

import pytest

from behaviorgpt.config import ConfigError
from behaviorgpt.layout import Layout
from behaviorgpt.validation import quote_identifier, sql_date, sql_path, sql_string


def assert_names(error: pytest.ExceptionInfo, key: str, value: str) -> None:
    message = str(error.value)
    assert f"{key} = {value!r} is invalid" in message
    assert "Fix:" in message


@pytest.mark.parametrize("value", ["2017-12-04' OR '1'='1", "2017-12-4", "yesterday"])
def test_sql_date_rejects(value):
    with pytest.raises(ConfigError) as error:
        sql_date(value, "run_date")

    assert_names(error, "run_date", value)


def test_sql_date_accepts():
    assert sql_date("2017-12-04", "run_date") == "DATE'2017-12-04'"


@pytest.mark.parametrize("value", ["x' OR '1'='1", "a\\'b", "", "x" * 201])
def test_sql_string_rejects(value):
    with pytest.raises(ConfigError) as error:
        sql_string(value, "--run-id")

    assert_names(error, "--run-id", value)


def test_sql_string_accepts_airflow_run_id():
    run_id = "scheduled__2017-12-02T00:00:00+00:00"

    assert sql_string(run_id, "--run-id") == f"'{run_id}'"


@pytest.mark.parametrize("value", ["events; DROP TABLE x", "1events", "a`b", "../events"])
def test_identifier_rejects(value, tmp_path):
    with pytest.raises(ConfigError) as quoted:
        quote_identifier(value, "merge key")
    with pytest.raises(ConfigError) as table:
        Layout.from_root(tmp_path).table(value)

    assert_names(quoted, "merge key", value)
    assert_names(table, "table name", value)


@pytest.mark.parametrize("path", ["/data/it's", "C:\\data"])
def test_sql_path_rejects(path):
    with pytest.raises(ConfigError) as error:
        sql_path(path, "paths.root")

    assert_names(error, "paths.root", path)


@pytest.mark.parametrize("version", ["../outside", "..", ".hidden", "a/b", "v1 ; rm"])
def test_model_version_rejects(version, tmp_path):
    layout = Layout.from_root(tmp_path)

    with pytest.raises(ConfigError) as error:
        layout.model_dir(version)

    assert_names(error, "model version", version)


def test_model_symlink_out_rejected(tmp_path):
    layout = Layout.from_root(tmp_path / "root")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    layout.models_dir.mkdir(parents=True)
    os.symlink(outside, layout.models_dir / "v1")

    with pytest.raises(ConfigError, match="outside") as error:
        layout.model_dir("v1")

    assert "model version v1" in str(error.value)
    assert "Fix:" in str(error.value)


def test_pointer_traversal_rejected(tmp_path):
    layout = Layout.from_root(tmp_path)
    layout.models_dir.mkdir(parents=True)
    layout.latest_model_file.write_text("../../etc\n", encoding="utf-8")

    with pytest.raises(ConfigError) as error:
        layout.latest_model_dir()

    assert_names(error, str(layout.latest_model_file), "../../etc")


def test_cli_rejects_bad_database(spark, tmp_path, capsys):
    from behaviorgpt.cli import main

    layout = Layout.from_root(tmp_path)
    layout.models_dir.mkdir(parents=True)

    status = main(["score", "--root", str(tmp_path), "--date", "2017-12-04",
                   "--set", "score.database=bad-name"])

    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 1
    assert message.startswith("behaviorgpt: error: score.database = 'bad-name' is invalid")
    assert "Fix:" in message
