"""Where every table and artifact of the pipeline lives under the configured root.

This module is the one place that names paths; Spark-side and torch-side code both ask it, so
it imports neither pyspark nor torch. Delta tables sit under `<root>/delta/`, Parquet training
shards under `<root>/sequences/`, trained models under `<root>/models/<model_version>/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EVENTS_TABLE = "events"
QUARANTINE_TABLE = "quarantine"
SESSIONS_TABLE = "sessions"
PROFILES_TABLE = "user_interest_profiles"
PROFILES_HISTORY_TABLE = "user_interest_profiles_history"


@dataclass(frozen=True)
class Layout:
    """Absolute paths of the pipeline's tables and files below one root folder."""

    root: Path

    @classmethod
    def from_root(cls, root: str | Path) -> "Layout":
        return cls(Path(root).expanduser().resolve())

    def table(self, name: str) -> Path:
        """Path of the Delta table `name`."""
        return self.root / "delta" / name

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
    def models_dir(self) -> Path:
        return self.root / "models"

    def model_dir(self, model_version: str) -> Path:
        return self.models_dir / model_version

    @property
    def latest_model_file(self) -> Path:
        """Text file that holds the model version the scoring job uses by default."""
        return self.models_dir / "LATEST"

    def latest_model_dir(self) -> Path:
        """Return the folder of the model named in `LATEST`; raise if none was trained."""
        if not self.latest_model_file.is_file():
            raise FileNotFoundError(
                f"no trained model under {self.models_dir}: {self.latest_model_file} is missing. "
                f"Run `behaviorgpt train` first.")
        version = self.latest_model_file.read_text(encoding="utf-8").strip()
        return self.model_dir(version)
