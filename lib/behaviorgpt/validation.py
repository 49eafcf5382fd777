"""Checks for names and paths that reach SQL text or the file system.

Spark SQL and Delta take some values as text: a `replaceWhere` predicate, a MERGE condition,
a CREATE TABLE statement. Every such value passes through one function here, which either
returns its SQL form or raises `ConfigError` naming the key, the value and the fix, so no
caller splices raw text into SQL. This module imports neither pyspark nor torch, so that
`layout` can use it.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from behaviorgpt.config import ConfigError

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
"""Database, table and column names: letters, digits and underscores, not starting with a
digit, at most 128 characters."""

SQL_TEXT = re.compile(r"[A-Za-z0-9._:+-]{1,200}")
"""Values spliced into SQL string literals (run ids, commands): no quote or backslash, so a
value cannot end the literal. Airflow's run ids, such as
`scheduled__2017-12-02T00:00:00+00:00`, qualify."""

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,199}")
"""Model versions, from the command line or a pointer file: no quote, slash, backslash or
space, and no leading dot, so a name is neither SQL syntax nor a relative path such as `..`."""


def _invalid(key: str, value: object, reason: str, fix: str) -> ConfigError:
    return ConfigError(f"{key} = {value!r} is invalid: {reason}. Fix: {fix}")


def check_identifier(value: str, key: str) -> str:
    """Return `value` if it is a safe SQL identifier (`IDENTIFIER`); raise ConfigError if not."""
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        raise _invalid(key, value, "expected letters, digits and underscores, starting with a "
                       "letter or underscore (at most 128 characters)",
                       f"set {key} to a name such as behaviorgpt")
    return value


def quote_identifier(value: str, key: str) -> str:
    """Return the identifier in backquotes, after `check_identifier`."""
    return f"`{check_identifier(value, key)}`"


def check_name(value: str, key: str) -> str:
    """Return `value` if it is a safe model version (`NAME`); raise ConfigError if not."""
    if not isinstance(value, str) or not NAME.fullmatch(value) or ".." in value:
        raise _invalid(key, value, "expected letters, digits and . _ : + - (no '..', no "
                       "leading dot, at most 200 characters)",
                       f"set {key} to a name such as 2017-12-04-020000")
    return value


def sql_string(value: str, key: str) -> str:
    """Return `value` as a SQL string literal; raise ConfigError unless it matches `SQL_TEXT`."""
    if not isinstance(value, str) or not SQL_TEXT.fullmatch(value):
        raise _invalid(key, value, "expected 1-200 letters, digits and . _ : + -",
                       f"pass another {key}")
    return f"'{value}'"


def sql_date(value: str, key: str) -> str:
    """Return a YYYY-MM-DD date as a SQL DATE literal; raise ConfigError for anything else."""
    try:
        day = dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise _invalid(key, value, "expected a date YYYY-MM-DD",
                       "pass --date 2024-01-31") from None
    if value != day.isoformat():
        raise _invalid(key, value, "expected a date YYYY-MM-DD", "pass --date 2024-01-31")
    return f"DATE'{day.isoformat()}'"


def sql_path(path: str | Path, key: str) -> str:
    """Return a path as a SQL string literal; raise ConfigError if it has a quote or backslash.

    Such a path cannot be written safely inside a LOCATION clause.
    """
    text = str(path)
    if "'" in text or "\\" in text:
        raise _invalid(key, text, "the path contains a quote or backslash, which cannot be "
                       "written into SQL safely", f"choose another {key}")
    return f"'{text}'"


def check_inside(path: Path, root: Path, key: str) -> Path:
    """Return `path` resolved, if it lies inside `root` after resolving `..` and symlinks.

    A name from a pointer file or the command line that escapes its folder (`../x`, or a
    symlink to elsewhere) is rejected, so a model folder name cannot make the pipeline read
    or write outside `paths.root`.
    """
    resolved = Path(path).resolve()
    base = Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise _invalid(key, str(path), f"it resolves to {resolved}, outside {base}",
                       f"use a name inside {base}; replace a symlink by the folder itself")
    return resolved
