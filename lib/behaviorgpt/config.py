"""Typed pipeline configuration, loaded from YAML and validated once.

A run's configuration is `conf/base.yaml`, then a profile such as `conf/local.yaml` merged over
it, then `--set section.key=value` overrides from the command line. The merged mapping is
checked against the dataclasses below: an unknown key, a value of the wrong type or a value
outside its allowed range raises `ConfigError` naming the key, the value, the file it came
from and the fix. Every stage receives the same frozen `PipelineConfig`.
"""

from __future__ import annotations

import dataclasses
import datetime
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
"""The repository's `conf/` folder; a deployment may pass another with `--conf`."""


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def _option(default: Any, help: str, *, choices: tuple | None = None, minimum: float | None = None,
            maximum: float | None = None) -> Any:
    metadata = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, kw_only=True)
class SparkConfig:
    master: str = _option("local[2]", "Spark master URL; spark-submit's --master wins when set.")
    app_name: str = _option("behaviorgpt", "Application name shown in the Spark UI.")
    shuffle_partitions: int = _option(4, "spark.sql.shuffle.partitions.", minimum=1)
    driver_memory: str = _option("4g", "spark.driver.memory for local mode.")
    resolve_delta_jars: bool = _option(
        True, "Resolve the Delta jars from Maven Central through spark.jars.packages.")
    # NOTE: the Python package is delta-spark 4.4.1, but the Maven repository that this
    # project's machines reach served no 4.4.1 jars for Spark 4.2 on 2026-12-04. The default
    # therefore takes the 4.4.0 jars, which the 4.4.1 Python API drives without change (tested).
    delta_package: str = _option(
        "io.delta:delta-spark_4.2_2.13:4.4.0", "Maven coordinate of the Delta jar for Spark 4.2.")
    ivy_cache: str | None = _option(
        None, "Folder for the Ivy cache of resolved jars (spark.jars.ivy); default ~/.ivy2.5.2.")
    jars: list = _option([], "Local jar paths passed as spark.jars, for offline use.")
    arrow_max_records_per_batch: int = _option(
        1024, "spark.sql.execution.arrow.maxRecordsPerBatch for the scoring UDF.", minimum=1)
    arrow_max_bytes_per_batch: int = _option(
        64 * 1024 * 1024, "spark.sql.execution.arrow.maxBytesPerBatch, in bytes: caps an Arrow "
        "batch of wide rows (long histories) sent to the scoring UDF.", minimum=1024,
        maximum=2**31 - 2)
    extra: dict = _option({}, "Any other Spark settings, passed through unchanged.")


@dataclass(frozen=True, kw_only=True)
class PathsConfig:
    root: str = _option("warehouse", "Folder for every table and artifact of the pipeline.")
    input: str | None = _option(
        None, "Input event log; empty means the embedded generator writes one under root.")


INPUT_FORMATS = ("taobao", "movielens", "otto", "rees46", "retailrocket", "yoochoose",
                 "diginetica", "generic")


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    format: str = _option(
        "taobao", "Input preset; `generic` reads the YAML mapping named by ingest.mapping.",
        choices=INPUT_FORMATS)
    mapping: str | None = _option(
        None, "YAML file that describes the input layout when ingest.format is generic.")
    event_type_map: dict = _option(
        {}, "Extra source event types mapped to canonical ones, e.g. {click: view}; "
        "unmapped types are quarantined.")
    drop_columns: list = _option(
        ["name", "first_name", "last_name", "full_name", "email", "phone", "phone_number",
         "ip", "ip_address"],
        "Source columns (case-insensitive) that never reach any table: personal data.")
    max_events_per_user_day: int = _option(
        20000, "Events above which a user's whole day is quarantined as a bot; 0 turns it off.",
        minimum=0)
    earliest_date: str = _option(
        "2000-01-01", "Events before this UTC date are quarantined as implausible.")
    future_tolerance_hours: float = _option(
        24.0, "Events more than this many hours after the run started are quarantined.",
        minimum=0.0)
    scope: str = _option(
        "all", "all: ingest and sessionize every date in the input; run_date: only the run "
        "date (incremental runs), replacing that date's partitions and continuing sessions "
        "open at midnight.", choices=("all", "run_date"))


@dataclass(frozen=True, kw_only=True)
class SessionConfig:
    gap_minutes: float = _option(
        30.0, "Inactivity gap, in minutes, that starts a new session.", minimum=0.01)
    max_duration_minutes: float = _option(
        720.0, "A session is split into pieces of at most this many minutes (measured from "
        "the start of its inactivity-gap run); 0 turns the limit off.", minimum=0.0)
    max_events: int = _option(
        1000, "A session is split after this many events; 0 turns the limit off.", minimum=0)
    use_source_sessions: bool = _option(
        False, "Group events by the source's own session key (events.session_key) instead of "
        "the inactivity gap; events without a key fall back to the gap.")


@dataclass(frozen=True, kw_only=True)
class SequenceConfig:
    max_len: int = _option(
        50, "Events kept per user, the most recent ones (model context length).", minimum=2)
    min_item_count: int = _option(
        1, "Items seen fewer times than this in training map to the unknown-item id.", minimum=1)
    num_shards: int = _option(
        2, "Parquet shards written; a multiple of the training world size.", minimum=1)
    oov_buckets: int = _option(
        0, "Hashed ids for items and categories outside the vocabulary, placed after the "
        "vocabulary ids; 0 maps them all to the unknown id.", minimum=0)
    frozen_vocab_dir: str | None = _option(
        None, "Folder of a previous vocabulary (manifest.json plus Parquet) to reuse unchanged, "
        "so that no id shifts; new items and categories go to the hashed buckets.")


@dataclass(frozen=True, kw_only=True)
class ExamplesConfig:
    protocol: str = _option(
        "leave_one_out", "Split protocol: leave_one_out (per user, the last event is test and "
        "the one before is validation) or temporal (a global cutoff time).",
        choices=("leave_one_out", "temporal"))
    cutoff: str | None = _option(
        None, "Temporal protocol: first instant of the test period, ISO 8601 in UTC such as "
        "2017-12-03T00:00:00; empty means midnight UTC of the latest event's day.")
    stride: int | None = _option(
        None, "Events between the ends of two sliding training examples of one user; empty "
        "means max_len - 1, so each training event is a next-event target once.", minimum=1)
    max_windows_per_user: int = _option(
        8, "Sliding training examples kept per user, the most recent ones.", minimum=1)
    category_window_hours: float = _option(
        24.0, "Length, in hours, of the window of the category-interest label.", minimum=0.0)
    purchase_window_hours: float = _option(
        24.0, "Length, in hours, of the window of the purchase label.", minimum=0.0)
    return_days: float = _option(
        3.0, "The return label is 1 when a new session starts within this many days.",
        minimum=0.0)
    rows_per_row_group: int = _option(
        2048, "Examples per Parquet row group of the example shards (the loader's read unit).",
        minimum=1)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    d_model: int = _option(64, "Hidden size of the shared decoder.", minimum=8)
    n_layer: int = _option(2, "Decoder blocks.", minimum=1)
    n_head: int = _option(2, "Attention heads; must divide d_model.", minimum=1)
    dropout: float = _option(0.1, "Dropout probability.", minimum=0.0, maximum=0.9)
    tie_item_embeddings: bool = _option(
        True, "Use the input item embedding as the output matrix of the item softmax.")
    sampled_softmax_threshold: int = _option(
        100_000, "Real items above which training uses a sampled item softmax (in-batch and "
        "uniform negatives with log-Q correction) instead of the full one.", minimum=1)
    sampled_negatives: int = _option(
        1024, "Uniform negatives per step of the sampled item softmax.", minimum=1)


AGGREGATION_STRATEGIES = ("fixed", "uncertainty", "dwa", "famo", "pcgrad", "cagrad", "upgrad",
                          "mgda", "dualproj", "imtlg", "aligned_mtl", "mean")
"""Names of `behaviorgpt.aggregation.STRATEGIES`, repeated here so config imports no torch."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    nproc: int = _option(2, "Training processes started by torchrun on this machine.", minimum=1)
    epochs: int = _option(8, "Passes over the training sequences.", minimum=1)
    batch_size: int = _option(32, "Sequences per rank per step.", minimum=1)
    max_steps: int = _option(
        0, "Optimizer steps per rank per epoch at most; 0 means a full pass over the rank's "
        "sequences. Benchmarks set it to time a fixed amount of training.", minimum=0)
    learning_rate: float = _option(3e-3, "AdamW learning rate.", minimum=0.0)
    weight_decay: float = _option(0.01, "AdamW weight decay.", minimum=0.0)
    seed: int = _option(0, "Seed for weights, dropout and data order.")
    task_weights: dict = _option(
        {"next_item": 1.0, "next_category": 0.5, "next_event_type": 0.25,
         "category_interest": 0.2, "purchase": 0.5, "return": 0.5},
        "Loss weight per task (next_item, next_category, next_event_type, category_interest, "
        "purchase, return). 0 turns a task off; the fixed strategy uses the weights as they "
        "are, the other strategies only read which tasks are on.")
    aggregation: str = _option(
        "fixed", "How the task gradients are combined each step.",
        choices=AGGREGATION_STRATEGIES)
    dwa_temperature: float = _option(
        2.0, "Temperature of the dwa strategy (higher gives more even weights).", minimum=0.01)
    cagrad_c: float = _option(
        0.5, "Radius scale c of the cagrad strategy (0 gives the mean gradient).", minimum=0.0)
    diagnostics_every: int = _option(
        50, "Steps between gradient diagnostics (per-task loss, gradient norm, cosine, "
        "weights) written to diagnostics.jsonl in the model folder; 0 turns them off.",
        minimum=0)
    window_events: int = _option(
        5, "Events after a cutoff that form the next window of the category_interest and "
        "purchase tasks.", minimum=1)
    return_days: float = _option(
        1.0, "Days within which the user's next session must start for the return label.",
        minimum=0.0)
    num_threads: int = _option(1, "torch intra-op threads per training process.", minimum=1)
    grad_clip_norm: float = _option(
        1.0, "Clip the global gradient norm to this value; 0 turns clipping off.", minimum=0.0)
    warm_start: bool = _option(
        False, "Start from the serving model's weights (models/LATEST) instead of random ones; "
        "the nightly DAG sets it on every day but the full-retrain weekday.")
    loader_workers: int = _option(
        1, "DataLoader worker processes per rank that read example shards; 0 reads in the "
        "training process.", minimum=0)
    shuffle_buffer: int = _option(
        4096, "Examples held by each loader worker's shuffle buffer.", minimum=1)
    bucket_batches: int = _option(
        8, "Batches' worth of examples sorted by length together, to limit padding; 1 turns "
        "length bucketing off.", minimum=1)
    dist_timeout_minutes: float = _option(
        10.0, "Timeout, in minutes, of every collective call of the training process group "
        "(a rank that waits longer for the others fails).", minimum=0.1)
    checkpoint_every: int = _option(
        500, "Optimizer steps between training-state checkpoints under "
        "<root>/checkpoints/<model_version>/; 0 writes them only at the end of each epoch "
        "(which always gets one).", minimum=0)
    keep_checkpoints: int = _option(
        2, "Newest training-state checkpoints kept per model version; older ones are "
        "deleted.", minimum=1)
    max_restarts: int = _option(
        1, "Times torchrun restarts the whole process group after a rank fails; the restarted "
        "ranks resume from the newest checkpoint. 0 fails the stage on the first error.",
        minimum=0)
    warmup_steps: int = _option(
        20, "Optimizer steps of linear learning-rate warm-up from 0 to train.learning_rate; "
        "0 starts at the full rate.", minimum=0)
    min_learning_rate_ratio: float = _option(
        0.1, "Learning rate at the end of the cosine decay, as a fraction of "
        "train.learning_rate; 1.0 keeps the rate constant after warm-up.",
        minimum=0.0, maximum=1.0)
    precision: str = _option(
        "fp32", "Arithmetic of the forward passes: fp32, or bf16 under torch.autocast with "
        "float32 master weights and optimizer state.", choices=("fp32", "bf16"))
    early_stopping_patience: int = _option(
        0, "Stop after this many epochs without a better validation HR@10; 0 runs every "
        "epoch. The best epoch's weights are saved either way.", minimum=0)
    log_every: int = _option(
        50, "Optimizer steps between progress lines (examples/s, tokens/s, MFU) and step "
        "records in metrics.jsonl; 0 logs epochs only.", minimum=0)
    launcher: str = _option(
        "torchrun", "How `behaviorgpt train` starts the ranks: torchrun on this machine, or "
        "spark (pyspark's TorchDistributor, one rank per Spark task).",
        choices=("torchrun", "spark"))


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    exclude_seen: bool = _option(
        False, "Drop each user's already-seen items from every method's ranking; a target the "
        "user has seen then counts as a miss. Off by default because re-engaging with seen "
        "items is a large share of next events in shop logs, which the copy head predicts.")
    single_task_baseline: bool = _option(
        False, "Also train a next_item-only model (same config otherwise) and score it as the "
        "single_task baseline; doubles the training time of a run.")
    nproc: int = _option(
        1, "Evaluation processes started by torchrun (gloo); each scores its own shards.",
        minimum=1)
    batch_size: int = _option(256, "Users per model forward pass.", minimum=1)
    num_threads: int = _option(1, "torch intra-op threads per evaluation process.", minimum=1)
    calibration_bins: int = _option(
        10, "Equal-width probability bins of the calibration tables of the purchase and "
        "return heads.", minimum=2, maximum=100)
    cooccurrence_neighbours: int = _option(
        100, "Most frequent next items kept per previous item in the co-occurrence baseline "
        "table; lists are filled up with the most popular items.", minimum=1, maximum=10000)


@dataclass(frozen=True, kw_only=True)
class QualityGateConfig:
    enabled: bool = _option(
        True, "Judge each new model before scoring uses it; false promotes every new model.")
    max_ndcg_drop: float = _option(
        0.01, "Largest drop of next-item NDCG@10 (absolute, from the serving model's "
        "metrics.json to the new model's) that still promotes the new model.",
        minimum=0.0, maximum=1.0)


@dataclass(frozen=True, kw_only=True)
class ScoreConfig:
    top_k: int = _option(10, "Categories and items kept per profile.", minimum=1, maximum=1000)
    batch_size: int = _option(256, "Users per model forward pass inside the UDF.", minimum=1)
    num_threads: int = _option(1, "torch threads per Python worker.", minimum=1)
    evidence_categories: int = _option(
        3, "Top categories per user that get evidence events; 0 turns evidence off.",
        minimum=0, maximum=100)
    evidence_events: int = _option(
        3, "Past events cited per explained category, the strongest first.", minimum=1,
        maximum=50)
    full_rescore: bool = _option(
        False, "Score every user; false scores only users with new events or a new model.")
    database: str | None = _option(
        "behaviorgpt", "Spark catalog database that the profile tables are registered in "
        "(letters, digits and underscores); empty skips registration.")
    commit_attempts: int = _option(
        5, "Attempts of a Delta commit that conflicts with a concurrent writer.", minimum=1,
        maximum=50)
    commit_backoff_seconds: float = _option(
        1.0, "Wait before the first retry of a conflicting commit, in seconds; it doubles on "
        "each further retry, plus up to 100% random jitter.", minimum=0.0)


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    key_env: str = _option(
        "BEHAVIORGPT_PSEUDONYM_KEY", "Environment variable that holds the pseudonymization key.")
    allow_dev_key: bool = _option(
        True, "Fall back to a fixed, public development key when the variable is unset.")


DELTA_VACUUM_SAFETY_HOURS = 168.0
"""Delta's default retention for VACUUM (`delta.deletedFileRetentionDuration`, 7 days): a
shorter VACUUM fails unless `spark.databricks.delta.retentionDurationCheck.enabled` is false."""


@dataclass(frozen=True, kw_only=True)
class RetentionConfig:
    days: int = _option(
        0, "Events older than this many days before the run date are left out of the "
        "training sequences, and `behaviorgpt maintain` deletes them from the tables; 0 "
        "keeps everything.", minimum=0)
    vacuum_hours: float = _option(
        DELTA_VACUUM_SAFETY_HOURS, "After deleting, `behaviorgpt maintain` runs Delta VACUUM, "
        "which removes data files unreferenced for longer than this many hours. Below 168 "
        "(Delta's 7-day safety window) Delta's check is turned off for that VACUUM, and a "
        "reader or writer running longer than the window may fail.", minimum=0.0)


@dataclass(frozen=True, kw_only=True)
class GeneratorConfig:
    users: int = _option(2000, "Users in the generated log.", minimum=1)
    items: int = _option(20000, "Items in the generated catalogue.", minimum=10)
    categories: int = _option(200, "Categories in the generated catalogue.", minimum=2)
    days: int = _option(9, "Days covered by the generated log.", minimum=1)
    start_date: str = _option("2017-11-25", "First day of the generated log (UTC).")
    mean_events_per_user: float = _option(
        60.0, "Average events per user (heavy-tailed around it).", minimum=1.0)
    interest_share: float = _option(
        0.7, "Share of each user's newly drawn items that come from their planted categories. "
        "The rest follow global popularity.", minimum=0.0, maximum=1.0)
    revisit_share: float = _option(
        0.06, "Probability that a page view returns to an item the user saw earlier.",
        minimum=0.0, maximum=1.0)
    seed: int = _option(7, "Seed of the generator.", minimum=0)


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    run_date: str | None = _option(None, "Run date YYYY-MM-DD; default today (UTC).")
    spark: SparkConfig = field(default_factory=SparkConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    sequences: SequenceConfig = field(default_factory=SequenceConfig)
    examples: ExamplesConfig = field(default_factory=ExamplesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    quality_gate: QualityGateConfig = field(default_factory=QualityGateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(profile: str | None = "local", overrides: list[str] | tuple[str, ...] = (),
                conf_dir: str | Path | None = None) -> PipelineConfig:
    """Load `base.yaml`, merge the profile and the `key=value` overrides, and validate.

    Raises `ConfigError` for a missing file, unknown key, wrong type or out-of-range value.
    """
    conf_dir = Path(conf_dir) if conf_dir is not None else CONF_DIR
    merged: dict = {}
    sources: dict[str, str] = {}

    files = [conf_dir / "base.yaml"]
    if profile:
        files.append(conf_dir / f"{profile}.yaml")
    for path in files:
        _merge(merged, _read_yaml(path), sources, str(path), prefix="")

    for override in overrides:
        key, value = _parse_override(override)
        nested: dict = {}
        cursor = nested
        parts = key.split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
        _merge(merged, nested, sources, "--set", prefix="")

    return _build(PipelineConfig, merged, sources, prefix="")


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}. Fix: pass an existing --conf folder "
                          f"or a --profile that has a YAML file there.")
    with path.open(encoding="utf-8") as handle:
        try:
            data = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: invalid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, "
                          f"got {type(data).__name__}")
    return data


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"invalid override {text!r}: expected section.key=value, "
                          f"for example --set train.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _merge(target: dict, update: dict, sources: dict, source: str, prefix: str) -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(target.get(key), dict) and _is_section(dotted):
            _merge(target[key], value, sources, source, prefix=f"{dotted}.")
        else:
            target[key] = value
            sources[dotted] = source
            if isinstance(value, dict):
                for inner in _dotted_keys(value, f"{dotted}."):
                    sources[inner] = source


def _is_section(dotted: str) -> bool:
    """Return whether a dotted key names a nested config section (as opposed to a dict value)."""
    cls: Any = PipelineConfig
    for part in dotted.split("."):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            return False
        cls = typing.get_type_hints(cls)[part]
        if not dataclasses.is_dataclass(cls):
            return False
    return True


def _dotted_keys(mapping: dict, prefix: str) -> list[str]:
    keys = []
    for key, value in mapping.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys.extend(_dotted_keys(value, f"{prefix}{key}."))
    return keys


def _build(cls: type, data: Any, sources: dict, prefix: str) -> Any:
    where = sources.get(prefix.rstrip("."), "the defaults")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.')} must be a mapping, got {data!r}")

    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            dotted = f"{prefix}{key}"
            raise ConfigError(f"{sources.get(dotted, 'config')}: unknown key {dotted!r}. "
                              f"Allowed keys here: {', '.join(sorted(known))}")

    hints = typing.get_type_hints(cls)
    values = {}
    for name, spec in known.items():
        if name not in data:
            continue
        dotted = f"{prefix}{name}"
        expected = hints[name]
        if dataclasses.is_dataclass(expected):
            values[name] = _build(expected, data[name], sources, f"{dotted}.")
        else:
            values[name] = _check_value(dotted, data[name], expected, spec.metadata,
                                        sources.get(dotted, "config"))
    return cls(**values)


def _check_value(key: str, value: Any, expected: Any, metadata: Any, source: str) -> Any:
    optional = False
    if isinstance(expected, types.UnionType) or typing.get_origin(expected) is typing.Union:
        members = [t for t in typing.get_args(expected) if t is not type(None)]
        optional = len(members) < len(typing.get_args(expected))
        expected = members[0]

    def fail(reason: str, fix: str) -> ConfigError:
        return ConfigError(f"{source}: {key} = {value!r} is invalid: {reason}. Fix: {fix}")

    if value is None:
        if optional:
            return None
        raise fail("a value is required", f"set {key} to a {expected.__name__}")

    if expected is bool:
        if not isinstance(value, bool):
            raise fail("expected true or false", f"set {key} to true or false")
    elif expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("expected an integer", f"set {key} to a whole number")
    elif expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("expected a number", f"set {key} to a number")
        value = float(value)
    elif expected is str:
        # YAML reads an unquoted 2024-01-31 as a date; dates are kept as ISO strings.
        if isinstance(value, datetime.date):
            value = value.isoformat()
        if not isinstance(value, str):
            raise fail("expected a string", f"quote the value of {key}")
    elif expected is list:
        if not isinstance(value, list):
            raise fail("expected a list", f"write {key} as a YAML list, for example [a, b]")
        value = list(value)
    elif expected is dict:
        if not isinstance(value, dict):
            raise fail("expected a mapping", f"write {key} as a YAML mapping of key: value")
        value = dict(value)

    choices = metadata.get("choices")
    if choices and value not in choices:
        raise fail(f"allowed values are {', '.join(map(str, choices))}",
                   f"set {key} to one of them")
    minimum, maximum = metadata.get("minimum"), metadata.get("maximum")
    if minimum is not None and value < minimum:
        raise fail(f"must be at least {minimum}", f"set {key} to a value >= {minimum}")
    if maximum is not None and value > maximum:
        raise fail(f"must be at most {maximum}", f"set {key} to a value <= {maximum}")
    return value
