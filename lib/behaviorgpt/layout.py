"""Where every table and artifact of the pipeline lives under the configured root.

This module is the one place that names paths; Spark-side and torch-side code both ask it, so
it imports neither pyspark nor torch. Delta tables sit under `<root>/delta/`, Parquet training
shards under `<root>/sequences/`, trained models under `<root>/models/<model_version>/` and
their training-state checkpoints under `<root>/checkpoints/<model_version>/`.
Two pointer files there name model versions: `CANDIDATE` the newest trained model, `LATEST`
the model that scoring uses (the quality gate moves `LATEST` to the candidate or keeps it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from behaviorgpt.validation import check_identifier, check_inside, check_name

EVENTS_TABLE = "events"
QUARANTINE_TABLE = "quarantine"
SESSIONS_TABLE = "sessions"
PROFILES_TABLE = "user_interest_profiles"
PIPELINE_RUNS_TABLE = "pipeline_runs"
PROFILES_HISTORY_TABLE = "user_interest_profiles_history"
MODEL_METRICS_TABLE = "model_metrics"

MODEL_METRICS_COLUMNS = (
    ("run_id", "string"), ("run_date", "date"), ("model_version", "string"),
    ("task", "string"), ("metric", "string"), ("segment", "string"), ("k", "int"),
    ("value", "double"), ("is_baseline", "boolean"), ("baseline", "string"),
    ("evaluated_at", "timestamp"),
)
"""(column, Spark SQL type) of `model_metrics`, one row per run, method, metric, segment and
cutoff; documented in docs/tables.md. `tables.write_model_metrics` builds the schema."""


@dataclass(frozen=True)
class Layout:
    """Absolute paths of the pipeline's tables and files below one root folder."""

    root: Path

    @classmethod
    def from_root(cls, root: str | Path) -> "Layout":
        return cls(Path(root).expanduser().resolve())

    def table(self, name: str) -> Path:
        """Path of the Delta table `name`; raise ConfigError if `name` is no SQL identifier."""
        return self.root / "delta" / check_identifier(name, "table name")

    def catalog_database_dir(self, database: str) -> Path:
        """Folder given as LOCATION to a Spark catalog database (it holds no table data:
        the registered tables point at their paths under `delta/`)."""
        return self.root / "catalog" / f"{database}.db"

    @property
    def generated_input_dir(self) -> Path:
        """Folder of the embedded generator's event log and planted interests."""
        return self.root / "generated"

    @property
    def sequences_dir(self) -> Path:
        """Parquet shards of token sequences plus `manifest.json`."""
        return self.root / "sequences"

    @property
    def vocab_dir(self) -> Path:
        """Vocabulary Parquet files plus `manifest.json`, written beside the sequences."""
        return self.root / "sequences" / "vocab"

    @property
    def cooccurrence_dir(self) -> Path:
        """Parquet folder of the co-occurrence baseline's neighbour counts, rebuilt by each
        evaluation from the current sequences' training positions."""
        return self.root / "evaluation" / "cooccurrence"

    @property
    def baseline_models_dir(self) -> Path:
        """Root of the single-task baseline's own layout: its `models/` folder and pointers
        stay apart from the served ones, and `sequences` links to the run's sequences."""
        return self.root / "evaluation" / "baseline"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def model_dir(self, model_version: str) -> Path:
        """Folder of one model version; raise ConfigError if the name could leave `models/`.

        The version comes from the command line or a pointer file, so it is checked against
        `validation.NAME`, and the folder must resolve inside `models/` (no symlink out).
        """
        folder = self.models_dir / check_name(model_version, "model version")
        check_inside(folder, self.models_dir, f"model version {model_version}")
        return folder

    def training_checkpoints_dir(self, model_version: str) -> Path:
        """Folder of the training-state checkpoints (`step-<n>/`) of one model version, which
        `behaviorgpt.train --resume` continues from."""
        return self.root / "checkpoints" / model_version

    @property
    def latest_model_file(self) -> Path:
        """Text file that contains the model version the scoring job uses by default."""
        return self.models_dir / "LATEST"

    @property
    def candidate_model_file(self) -> Path:
        """Text file that names the newest trained model, before the quality gate judges it."""
        return self.models_dir / "CANDIDATE"

    def pointed_version(self, pointer: Path) -> str | None:
        """Model version named in a pointer file (`LATEST`, `CANDIDATE`), or None if absent."""
        if not pointer.is_file():
            return None
        version = pointer.read_text(encoding="utf-8").strip()
        return check_name(version, str(pointer)) if version else None

    def point(self, pointer: Path, model_version: str) -> None:
        """Make a pointer file name `model_version`, atomically (write aside, then rename)."""
        pointer.parent.mkdir(parents=True, exist_ok=True)
        temporary = pointer.with_name(f".{pointer.name}.tmp")
        temporary.write_text(model_version + "\n", encoding="utf-8")
        os.replace(temporary, pointer)

    def latest_model_dir(self) -> Path:
        """Return the folder of the serving model (named in `LATEST`); raise if there is none."""
        return self._pointed_model_dir(self.latest_model_file, "serving",
                                       "`behaviorgpt train`, `evaluate` and `gate`")

    def candidate_model_dir(self) -> Path:
        """Return the folder of the newest trained model (named in `CANDIDATE`); raise if none."""
        return self._pointed_model_dir(self.candidate_model_file, "trained", "`behaviorgpt train`")

    def _pointed_model_dir(self, pointer: Path, kind: str, commands: str) -> Path:
        version = self.pointed_version(pointer)
        if version is None:
            raise FileNotFoundError(f"no {kind} model under {self.models_dir}: {pointer} is "
                                    f"missing. Run {commands} first.")
        return self.model_dir(version)
