"""Config loading: defaults, profiles, overrides and the errors a bad value raises."""

from pathlib import Path

import pytest

from behaviorgpt.config import ConfigError, load_config


def test_local_profile_overrides_base():
    config = load_config("local")

    assert config.spark.master == "local[2]"
    assert config.session.gap_minutes == 30.0
    assert config.train.task_weights["next_item"] == 1.0
    assert config.train.task_weights["next_category"] == 0.5
    assert config.train.aggregation == "fixed"


def test_set_override_is_typed():
    config = load_config("local", ["train.epochs=3", "run_date=2024-01-31", "paths.input=/x.csv"])

    assert config.train.epochs == 3
    assert config.run_date == "2024-01-31"
    assert config.paths.input == "/x.csv"


def test_unknown_key_names_key_and_source():
    with pytest.raises(ConfigError) as error:
        load_config("local", ["train.epochz=3"])

    assert "train.epochz" in str(error.value)
    assert "--set" in str(error.value)
    assert "epochs" in str(error.value)


def test_wrong_type_names_value_and_fix():
    with pytest.raises(ConfigError) as error:
        load_config("local", ["train.batch_size=many"])

    message = str(error.value)
    assert "train.batch_size = 'many'" in message
    assert "expected an integer" in message


def test_out_of_range_names_bound():
    with pytest.raises(ConfigError) as error:
        load_config("local", ["model.dropout=1.5"])

    assert "model.dropout = 1.5" in str(error.value)
    assert "at most 0.9" in str(error.value)


def test_unknown_key_in_file_names_file(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("session:\n  gap_minutes: 30\n  gap_hours: 1\n")

    with pytest.raises(ConfigError) as error:
        load_config(None, conf_dir=tmp_path)

    assert str(tmp_path / "base.yaml") in str(error.value)
    assert "session.gap_hours" in str(error.value)


def test_missing_profile_file_is_reported(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("{}\n")

    with pytest.raises(ConfigError, match="config file not found"):
        load_config("cluster", conf_dir=tmp_path)


def test_yaml_is_loaded_safely(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("run_date: !!python/object/apply:os.system ['true']\n")

    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(None, conf_dir=tmp_path)
