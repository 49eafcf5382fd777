"""Errors about the files the pipeline reads, shared by the Spark side and the torch side.

This module imports neither pyspark nor torch, so every stage can raise and catch its errors.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


class CorruptFileError(ValueError):
    """A file the pipeline reads is truncated, garbled or not of the expected kind.

    The message names the file, what is wrong with it and the fix; the CLI prints it as one
    line. `path` is the offending file.
    """

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {problem}. Fix: {fix}")


PARQUET_READ_ERRORS = (pa.ArrowException, OSError)
"""Exceptions that pyarrow raises on a truncated or garbled Parquet file (ArrowInvalid,
ArrowIOError)."""

MODEL_FIX = ("retrain with `behaviorgpt train`, or point models/LATEST at an intact model "
             "folder")

UNSAFE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
"""Weight files in pickle-based formats, which loading rejects: unpickling can run code."""

SHARD_FIX = "rerun `behaviorgpt sequences` for this date to rewrite the shards"


def corrupt_parquet(path: str | Path, error: BaseException) -> CorruptFileError:
    """Return the error for a Parquet shard that pyarrow could not read."""
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    return CorruptFileError(path, f"not a readable Parquet file ({detail})", SHARD_FIX)


def check_parquet_files(paths: Iterable[str | Path]) -> None:
    """Read the footer of every Parquet file and raise `CorruptFileError` on the first bad one.

    A footer read is cheap (it reads only the file's last bytes), and it catches a truncated
    file or a file that is not Parquet at all. NOTE: garbled bytes inside a data page leave the
    footer intact, so such a file passes here and fails only when its pages are read.
    """
    for path in paths:
        if not Path(path).is_file():
            raise CorruptFileError(path, "the file is missing", SHARD_FIX)
        try:
            pq.read_metadata(str(path))
        except PARQUET_READ_ERRORS as error:
            raise corrupt_parquet(path, error) from None
