"""Config loading: defaults, profiles, overrides and the errors a bad value raises."""

from pathlib import Path

import pytest

from behaviorgpt.config import ConfigError, load_config


def test_local_profile_overrides_base():
    config = load_config("local")

    assert config.spark.master == "local[2]"
    assert config.session.gap_minutes == 30.0
    assert config.train.task_weights == {"next_item": 1.0, "next_category": 0.5}


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

    with pytest.raises(ConfigError, match="config file not found") as error:
        load_config("cluster", conf_dir=tmp_path)

    assert str(tmp_path / "cluster.yaml") in str(error.value)
    assert "--profile" in str(error.value)


def test_missing_conf_folder_is_reported(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found") as error:
        load_config("local", conf_dir=tmp_path / "nowhere")

    assert str(tmp_path / "nowhere" / "base.yaml") in str(error.value)


def test_wrong_type_in_file_names_file_key_and_value(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: three\n")

    with pytest.raises(ConfigError) as error:
        load_config(None, conf_dir=tmp_path)

    message = str(error.value)
    assert message.startswith(str(tmp_path / "base.yaml"))
    assert "train.epochs = 'three'" in message
    assert "Fix: set train.epochs to a whole number" in message


def test_profile_value_out_of_range_names_profile_file(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("score:\n  top_k: 10\n")
    (tmp_path / "big.yaml").write_text("score:\n  top_k: 5000\n")

    with pytest.raises(ConfigError) as error:
        load_config("big", conf_dir=tmp_path)

    message = str(error.value)
    assert message.startswith(str(tmp_path / "big.yaml"))
    assert "score.top_k = 5000" in message
    assert "at most 1000" in message


def test_below_minimum_names_bound():
    with pytest.raises(ConfigError) as error:
        load_config("local", ["train.nproc=0"])

    assert "train.nproc = 0" in str(error.value)
    assert "at least 1" in str(error.value)


def test_bad_choice_lists_allowed_values():
    with pytest.raises(ConfigError) as error:
        load_config("local", ["ingest.format=parquet_dump"])

    assert "ingest.format = 'parquet_dump'" in str(error.value)
    assert "allowed values are taobao" in str(error.value)


def test_bool_is_not_an_integer():
    with pytest.raises(ConfigError, match="train.epochs = True is invalid: expected an integer"):
        load_config("local", ["train.epochs=true"])


def test_unknown_section_is_rejected():
    with pytest.raises(ConfigError) as error:
        load_config("local", ["trian.epochs=3"])

    assert "unknown key 'trian'" in str(error.value)
    assert "train" in str(error.value)


def test_cluster_profile_has_no_dev_key():
    config = load_config("cluster")

    assert config.spark.master == "yarn"
    assert config.privacy.allow_dev_key is False
    assert config.spark.resolve_delta_jars is False


def test_cluster_profile_refuses_to_start_without_key(monkeypatch):
    from behaviorgpt.privacy import MissingKeyError, pseudonymization_key

    config = load_config("cluster")
    monkeypatch.delenv(config.privacy.key_env, raising=False)

    with pytest.raises(MissingKeyError, match=config.privacy.key_env):
        pseudonymization_key(config.privacy)


def test_cli_bad_value_fails_before_any_stage(capsys):
    from behaviorgpt.cli import main

    status = main(["run", "--dry-run", "--set", "session.gap_minutes=-5"])

    assert status == 2
    assert "session.gap_minutes = -5" in capsys.readouterr().err


def test_cli_dry_run_prints_resolved_profile(capsys):
    import json

    from behaviorgpt.cli import main

    status = main(["run", "--dry-run", "--profile", "cluster", "--date", "2024-01-31",
                   "--set", "train.epochs=2"])

    plan = json.loads(capsys.readouterr().out)
    assert status == 0
    assert plan["run_date"] == "2024-01-31"
    assert plan["config"]["spark"]["master"] == "yarn"
    assert plan["config"]["train"]["epochs"] == 2


def test_yaml_is_loaded_safely(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("run_date: !!python/object/apply:os.system ['true']\n")

    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(None, conf_dir=tmp_path)


def test_max_steps_rejects_negative():
    with pytest.raises(ConfigError) as error:
        load_config("local", ["train.max_steps=-1"])

    assert "train.max_steps = -1" in str(error.value)
    assert "at least 0" in str(error.value)
