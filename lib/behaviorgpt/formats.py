"""Input formats: how each public event log maps onto the canonical event fields.

A format is a `SourceSpec`: which files of the input folder hold events, how their lines split
into named columns, which column is the user, the item, the time and so on, and optionally a
side file that maps items to categories. Built-in presets cover the public logs named in
`PRESETS`; any other log is described by the same fields in a YAML mapping (`format: generic`,
see `load_mapping`), so a new log needs configuration, not code.

`parse_source` turns the input into one row per source record with the columns listed in
`PARSED_COLUMNS`. It never drops a record: a record that cannot be split gets `malformed`
set, and a field that cannot be read is null, so that validation in `events` can give the
reason. The raw line is kept for the quarantine table.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

log = logging.getLogger(__name__)

TIME_UNITS = ("s", "ms", "s_fraction", "pattern", "day_plus_ms")
"""Time encodings: integer Unix seconds, integer Unix milliseconds, decimal Unix seconds, a
datetime pattern (Spark's `to_timestamp` syntax), or a day (`yyyy-MM-dd`) plus a millisecond
offset taken from `offset_column`."""

CANONICAL_FIELDS = ("user", "item", "category", "event_type", "time", "value", "session_key")

PARSED_COLUMNS = ("raw_line", "source_file", "malformed", "user_id", "item_id", "category_id",
                  "raw_event_type", "event_type", "time_us", "time_reason", "value",
                  "session_key", "extras")
"""Columns of `parse_source`'s output. `time_us` is Unix microseconds (UTC) or null, with
`time_reason` saying why when it is null or suspicious; `event_type` is null when the source
type is not in the type map."""

MAX_ID_LENGTH = 256
"""Ids longer than this many characters are treated as malformed (a runaway or binary line)."""

UNPARSEABLE_TIME = "unparseable_time"
TIME_IN_MILLISECONDS = "time_in_milliseconds"

# A delimiter outside double quotes: an even number of quotes follows it up to the line end.
_OUTSIDE_QUOTES = '(?=(?:[^"]*"[^"]*")*[^"]*$)'


class FormatError(ValueError):
    """An input format or mapping is invalid."""


@dataclass(frozen=True, kw_only=True)
class CategoryFile:
    """A side file that maps items to categories, read whole because it is small."""

    name_glob: str
    delimiter: str
    item_index: int
    category_index: int | None = None
    """Column with one category, or a list of categories split by `list_separator`."""
    list_separator: str | None = None
    flag_start: int | None = None
    """First of the 0/1 genre flag columns, as in MovieLens `u.item`; named by `flag_names`."""
    flag_names: tuple[str, ...] = ()
    header: bool = False
    encoding: str = "UTF-8"


@dataclass(frozen=True, kw_only=True)
class EventFile:
    """One kind of event file: how to find it, split its lines and read each canonical field.

    `fields` maps canonical fields (`CANONICAL_FIELDS`) to column names of `columns`. A value
    starting with `=` is a constant, for example `event_type: =rating`.
    """

    name_glob: str
    columns: tuple[str, ...]
    fields: dict
    delimiter: str = ","
    header: bool = False
    quoted: bool = False
    time_unit: str = "s"
    time_pattern: str | None = None
    time_zone: str = "UTC"
    offset_column: str | None = None
    user_fallback: str | None = None
    """Column whose value, prefixed, stands in for a missing user id (sessions as users)."""
    missing_values: tuple[str, ...] = ("",)
    extras: tuple[str, ...] | None = None
    """Columns kept in the `extras` map; None keeps every column not used by `fields`."""


@dataclass(frozen=True, kw_only=True)
class SourceSpec:
    """A complete input format: its event files, type map and optional category file."""

    name: str
    event_files: tuple[EventFile, ...]
    type_map: dict = field(default_factory=dict)
    category_file: CategoryFile | None = None
    json_sessions: bool = False
    """JSON lines with one session per line and nested events (the OTTO layout)."""


MOVIELENS_100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western")
"""The 19 genre flags of MovieLens 100K `u.item`, in column order (as listed in `u.genre`)."""

_RATING_FIELDS = {"user": "user_id", "item": "item_id", "event_type": "=rating",
                  "time": "timestamp", "value": "rating"}

PRESETS: dict[str, SourceSpec] = {
    "taobao": SourceSpec(
        name="taobao",
        event_files=(EventFile(
            name_glob="*",
            columns=("user_id", "item_id", "category_id", "behavior_type", "timestamp"),
            fields={"user": "user_id", "item": "item_id", "category": "category_id",
                    "event_type": "behavior_type", "time": "timestamp"}),),
        type_map={"pv": "view", "cart": "cart", "fav": "fav", "buy": "purchase"}),
    "movielens": SourceSpec(
        name="movielens",
        event_files=(
            EventFile(name_glob="u.data", delimiter="\t",
                      columns=("user_id", "item_id", "rating", "timestamp"),
                      fields=_RATING_FIELDS),
            EventFile(name_glob="ratings.dat", delimiter="::",
                      columns=("user_id", "item_id", "rating", "timestamp"),
                      fields=_RATING_FIELDS)),
        type_map={"rating": "rating"},
        category_file=None),  # chosen per folder by `_movielens_categories`
    "otto": SourceSpec(
        name="otto",
        event_files=(EventFile(name_glob="*.jsonl", columns=("session", "aid", "ts", "type"),
                               fields={"user": "session", "item": "aid", "event_type": "type",
                                       "time": "ts", "session_key": "session"},
                               time_unit="ms"),),
        type_map={"clicks": "view", "carts": "cart", "orders": "purchase"},
        json_sessions=True),
    "rees46": SourceSpec(
        name="rees46",
        event_files=(EventFile(
            name_glob="*.csv", header=True, quoted=True,
            columns=("event_time", "event_type", "product_id", "category_id", "category_code",
                     "brand", "price", "user_id", "user_session"),
            fields={"user": "user_id", "item": "product_id", "category": "category_id",
                    "event_type": "event_type", "time": "event_time", "value": "price",
                    "session_key": "user_session"},
            time_unit="pattern", time_pattern="yyyy-MM-dd HH:mm:ss VV"),),
        type_map={"view": "view", "cart": "cart", "remove_from_cart": "remove_from_cart",
                  "purchase": "purchase"}),
    "retailrocket": SourceSpec(
        name="retailrocket",
        event_files=(EventFile(
            name_glob="events*.csv", header=True,
            columns=("timestamp", "visitorid", "event", "itemid", "transactionid"),
            fields={"user": "visitorid", "item": "itemid", "event_type": "event",
                    "time": "timestamp"},
            time_unit="ms"),),
        type_map={"view": "view", "addtocart": "cart", "transaction": "purchase"}),
    "yoochoose": SourceSpec(
        name="yoochoose",
        event_files=(
            # The original clicks file: CSV without header, ISO-8601 times in UTC.
            EventFile(name_glob="*clicks*.dat", columns=("session_id", "timestamp", "item_id",
                                                         "category"),
                      fields={"user": "session_id", "item": "item_id", "category": "category",
                              "event_type": "=view", "time": "timestamp",
                              "session_key": "session_id"},
                      time_unit="pattern", time_pattern="yyyy-MM-dd'T'HH:mm:ss[.SSS]X",
                      missing_values=("", "0")),
            # The common preprocessed form: tab-separated with header, decimal Unix seconds.
            EventFile(name_glob="*.txt", delimiter="\t", header=True,
                      columns=("SessionId", "ItemId", "Time"),
                      fields={"user": "SessionId", "item": "ItemId", "event_type": "=view",
                              "time": "Time", "session_key": "SessionId"},
                      time_unit="s_fraction")),
        type_map={"view": "view"}),
    "diginetica": SourceSpec(
        name="diginetica",
        event_files=(
            EventFile(name_glob="*view*.csv", delimiter=";", header=True,
                      columns=("sessionId", "userId", "itemId", "timeframe", "eventdate"),
                      fields={"user": "userId", "item": "itemId", "event_type": "=view",
                              "time": "eventdate", "session_key": "sessionId"},
                      time_unit="day_plus_ms", offset_column="timeframe",
                      user_fallback="sessionId", missing_values=("", "NA")),
            EventFile(name_glob="*purchase*.csv", delimiter=";", header=True,
                      columns=("sessionId", "userId", "timeframe", "eventdate", "ordernumber",
                               "itemId"),
                      fields={"user": "userId", "item": "itemId", "event_type": "=purchase",
                              "time": "eventdate", "session_key": "sessionId"},
                      time_unit="day_plus_ms", offset_column="timeframe",
                      user_fallback="sessionId", missing_values=("", "NA"))),
        type_map={"view": "view", "purchase": "purchase"},
        category_file=CategoryFile(name_glob="*categor*.csv", delimiter=";", header=True,
                                   item_index=0, category_index=1)),
}

MOVIELENS_CATEGORY_FILES = (
    CategoryFile(name_glob="u.item", delimiter="|", item_index=0, flag_start=5,
                 flag_names=MOVIELENS_100K_GENRES, encoding="ISO-8859-1"),
    CategoryFile(name_glob="movies.dat", delimiter="::", item_index=0, category_index=2,
                 list_separator="|", encoding="ISO-8859-1"),
)

FALLBACK_USER_PREFIX = "session:"
"""Prefix of a user id made from a session id, so it cannot equal a real user id."""


def source_spec(name: str, mapping_path: str | None = None) -> SourceSpec:
    """Return the preset `name`, or the spec read from `mapping_path` when name is `generic`."""
    if name == "generic":
        if not mapping_path:
            raise FormatError("ingest.format = 'generic' needs ingest.mapping, the path of a "
                              "YAML mapping file. Fix: --set ingest.mapping=conf/my_log.yaml")
        return load_mapping(mapping_path)
    if name not in PRESETS:
        raise FormatError(f"unknown input format {name!r}; known: "
                          f"{', '.join([*PRESETS, 'generic'])}")
    return PRESETS[name]


def load_mapping(path: str | Path) -> SourceSpec:
    """Read a generic mapping from YAML and validate it.

    Keys: `name`, `type_map` (source value: canonical type), optional `category_file`, and
    `files`, a list of event files with the fields of `EventFile`.
    """
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("files"), list) or not raw["files"]:
        raise FormatError(f"{path}: a mapping needs a non-empty list `files`. Fix: see the "
                          f"generic mapping section of docs/tables.md")

    unknown = set(raw) - {"name", "files", "type_map", "category_file"}
    if unknown:
        raise FormatError(f"{path}: unknown keys {sorted(unknown)}; allowed: name, files, "
                          f"type_map, category_file")
    files = tuple(_event_file_from_mapping(path, entry) for entry in raw["files"])
    category_file = None
    if raw.get("category_file"):
        category_file = _build_dataclass(CategoryFile, raw["category_file"], f"{path}: "
                                         "category_file")
    return SourceSpec(name=str(raw.get("name", Path(path).stem)), event_files=files,
                      type_map=dict(raw.get("type_map") or {}), category_file=category_file)


def _event_file_from_mapping(path, entry: Any) -> EventFile:
    where = f"{path}: files entry {entry!r}"
    if not isinstance(entry, dict):
        raise FormatError(f"{where} must be a mapping")
    event_file = _build_dataclass(EventFile, entry, where)
    validate_event_file(event_file, where)
    return event_file


def _build_dataclass(cls, values: dict, where: str):
    names = {item.name for item in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise FormatError(f"{where}: unknown keys {sorted(unknown)}; allowed: "
                          f"{', '.join(sorted(names))}")
    converted = {key: tuple(value) if isinstance(value, list) else value
                 for key, value in values.items()}
    try:
        return cls(**converted)
    except TypeError as error:
        raise FormatError(f"{where}: {error}") from None


def validate_event_file(event_file: EventFile, where: str) -> None:
    """Raise `FormatError` when a file layout names unknown columns, fields or units."""
    if event_file.time_unit not in TIME_UNITS:
        raise FormatError(f"{where}: time_unit {event_file.time_unit!r} is invalid; allowed: "
                          f"{', '.join(TIME_UNITS)}")
    if event_file.time_unit == "pattern" and not event_file.time_pattern:
        raise FormatError(f"{where}: time_unit 'pattern' needs time_pattern, for example "
                          f"'yyyy-MM-dd HH:mm:ss'")
    unknown_fields = set(event_file.fields) - set(CANONICAL_FIELDS)
    if unknown_fields:
        raise FormatError(f"{where}: unknown canonical fields {sorted(unknown_fields)}; "
                          f"allowed: {', '.join(CANONICAL_FIELDS)}")
    for required in ("user", "item", "event_type", "time"):
        if required not in event_file.fields:
            raise FormatError(f"{where}: fields.{required} is missing")
    for name, column in event_file.fields.items():
        if not str(column).startswith("=") and column not in event_file.columns:
            raise FormatError(f"{where}: fields.{name} = {column!r} is not one of the columns "
                              f"{list(event_file.columns)}")


def parse_source(spark: SparkSession, spec: SourceSpec, input_path: str, *,
                 type_map: dict, drop_columns: list[str]) -> DataFrame:
    """Read every event file of `spec` under `input_path` into `PARSED_COLUMNS`.

    `type_map` (source type: canonical type) is applied after the spec's own map, so config
    can map extra source types. Columns named in `drop_columns` (case-insensitive) are never
    read into any output, and their values are blanked in the kept raw line.
    """
    folder, single_file = _split_input(spark, input_path)
    types = {**spec.type_map, **type_map}
    dropped = {name.lower() for name in drop_columns}

    parsed = []
    for event_file in spec.event_files:
        lines = _read_lines(spark, folder, single_file, event_file.name_glob)
        if lines is None:
            continue
        if spec.json_sessions:
            parsed.append(_parse_json_sessions(lines, event_file, types))
        else:
            parsed.append(_parse_delimited(lines, event_file, types, dropped))
    if not parsed:
        globs = ", ".join(event_file.name_glob for event_file in spec.event_files)
        raise FileNotFoundError(f"no event file of format {spec.name!r} in {input_path}: "
                                f"expected file names matching {globs}. Fix: point --input "
                                f"at such a file or folder, or set ingest.format")
    events = parsed[0]
    for other in parsed[1:]:
        events = events.unionByName(other)

    category_file = spec.category_file
    if spec.name == "movielens":
        category_file = _movielens_categories(spark, folder)
    if category_file is not None:
        events = _join_categories(spark, events, folder, category_file)
    return events


def _split_input(spark: SparkSession, input_path: str) -> tuple[str, str | None]:
    """Return the folder to read and the single file name, when the input is one file."""
    path = _hadoop_path(spark, input_path)
    filesystem = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if filesystem.exists(path) and filesystem.getFileStatus(path).isFile():
        return str(path.getParent().toString()), path.getName()
    return input_path, None


def _hadoop_path(spark: SparkSession, path: str):
    return spark.sparkContext._jvm.org.apache.hadoop.fs.Path(path)


def list_files(spark: SparkSession, folder: str, name_glob: str) -> list[str]:
    """Return the files directly in `folder` whose names match `name_glob`, sorted.

    Hadoop's file system API does the listing, so local, HDFS and object-store paths work
    alike. Hidden files (names starting with `.` or `_`) are skipped as Spark itself does.
    """
    pattern = _hadoop_path(spark, folder.rstrip("/") + "/" + name_glob)
    filesystem = pattern.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    statuses = filesystem.globStatus(pattern) or []
    names = [status.getPath().toString() for status in statuses
             if status.isFile() and not status.getPath().getName().startswith((".", "_"))]
    return sorted(names)


def _read_lines(spark: SparkSession, folder: str, single_file: str | None,
                name_glob: str) -> DataFrame | None:
    """Read the lines of the files matching `name_glob` (or the one given file) as text.

    Return None when no file matches."""
    if single_file:
        # The one given file is read whatever its name, unless the preset has several kinds
        # of event file and this is not the kind asked for.
        files = [f"{folder}/{single_file}"] if fnmatch.fnmatch(single_file, name_glob) else []
    else:
        files = list_files(spark, folder, name_glob)
    if not files:
        return None
    return (spark.read.text(files)
            .select(F.col("value").alias("raw_line"),
                    F.col("_metadata.file_path").alias("source_file")))


def _clean_line(raw: Column) -> Column:
    """Strip a byte-order mark at the start and a carriage return at the end of a line."""
    return F.regexp_replace(F.regexp_replace(raw, "^\uFEFF", ""), "\r$", "")


def _parse_delimited(lines: DataFrame, event_file: EventFile, types: dict,
                     dropped: set[str]) -> DataFrame:
    line = _clean_line(F.col("raw_line"))
    pattern = re.escape(event_file.delimiter)
    if event_file.quoted:
        pattern += _OUTSIDE_QUOTES
    parts = F.split(line, pattern, -1)

    # Header lines (first field equal to the first column name) are not data: they are
    # removed here and counted by the caller from the difference.
    if event_file.header:
        first = F.lower(F.trim(F.regexp_replace(F.try_element_at(parts, F.lit(1)), '"', "")))
        lines = lines.where(first != event_file.columns[0].lower())

    def column(name: str) -> Column:
        index = event_file.columns.index(name)
        value = F.trim(F.try_element_at(parts, F.lit(index + 1)))
        if event_file.quoted:
            value = F.regexp_replace(F.regexp_replace(value, '^"(.*)"$', "$1"), '""', '"')
        return F.when(value.isin(*event_file.missing_values), None).otherwise(value)

    def canonical(name: str) -> Column:
        source = event_file.fields.get(name)
        if source is None:
            return F.lit(None).cast("string")
        if str(source).startswith("="):
            return F.lit(str(source)[1:])
        return column(source)

    user = canonical("user")
    if event_file.user_fallback:
        fallback = column(event_file.user_fallback)
        user = F.coalesce(user, F.concat(F.lit(FALLBACK_USER_PREFIX), fallback))
    time_us, time_reason = _parse_time(event_file, canonical("time"), column)

    used = {value for value in event_file.fields.values() if not str(value).startswith("=")}
    extra_names = event_file.extras if event_file.extras is not None else [
        name for name in event_file.columns if name not in used]
    extra_names = [name for name in extra_names if name.lower() not in dropped]

    wrong_count = F.size(parts) != len(event_file.columns)
    raw_kept = _redact(parts, event_file, dropped)
    raw_type = canonical("event_type")
    return lines.select(
        raw_kept.alias("raw_line"),
        "source_file",
        wrong_count.alias("malformed"),
        user.alias("user_id"),
        canonical("item").alias("item_id"),
        canonical("category").alias("category_id"),
        raw_type.alias("raw_event_type"),
        _map_type(raw_type, types).alias("event_type"),
        time_us.alias("time_us"),
        time_reason.alias("time_reason"),
        canonical("value").try_cast("double").alias("value"),
        canonical("session_key").alias("session_key"),
        _extras_map({name: column(name) for name in extra_names}).alias("extras"),
    )


def _redact(parts: Column, event_file: EventFile, dropped: set[str]) -> Column:
    """The raw line to keep, with the values of dropped columns blanked.

    Fields are blanked by position even when the line has the wrong number of fields, and
    e-mail addresses, IPv4 addresses and phone numbers in international form are blanked
    by pattern too, for lines whose fields are shifted.
    NOTE: a personal value in a shifted field that matches no pattern (a name) is kept.
    """
    positions = [index for index, name in enumerate(event_file.columns) if name.lower() in dropped]
    if not positions:
        return F.col("raw_line")
    blanked = F.transform(parts, lambda value, index: F.when(
        index.isin(*positions), F.lit("")).otherwise(value))
    line = F.array_join(blanked, event_file.delimiter)
    for pattern in (r"[^\s,;|\t]+@[^\s,;|\t]+", r"\b\d{1,3}(\.\d{1,3}){3}\b",
                    r"\+\d[\d ().-]{5,}\d"):
        line = F.regexp_replace(line, pattern, "")
    return line


def _map_type(raw_type: Column, types: dict) -> Column:
    if not types:
        return F.lit(None).cast("string")
    lookup = F.create_map(*[F.lit(item) for pair in types.items() for item in pair])
    return F.try_element_at(lookup, raw_type)


def _extras_map(columns: dict) -> Column:
    if not columns:
        return F.create_map().cast("map<string,string>")
    pairs = [item for name, value in columns.items() for item in (F.lit(name), value)]
    return F.map_filter(F.create_map(*pairs), lambda key, value: value.isNotNull())


def _parse_time(event_file: EventFile, raw: Column, column) -> tuple[Column, Column]:
    """Return (Unix microseconds or null, reason) for the time field of one file layout."""
    unit = event_file.time_unit
    integer = F.when(raw.rlike(r"^-?[0-9]{1,18}$"), raw.try_cast("long"))

    if unit == "s":
        time_us = integer * 1_000_000
        # Milliseconds in a seconds column: the value is 1000x a plausible Unix time.
        looks_like_ms = (integer >= 100_000_000_000) & (integer < 100_000_000_000_000)
        reason = (F.when(time_us.isNull(), F.lit(UNPARSEABLE_TIME))
                  .when(looks_like_ms, F.lit(TIME_IN_MILLISECONDS)))
        return F.when(~looks_like_ms, time_us), reason
    if unit == "ms":
        time_us = integer * 1000
    elif unit == "s_fraction":
        decimal = F.when(raw.rlike(r"^-?[0-9]{1,12}(\.[0-9]{1,9})?$"),
                         raw.try_cast("decimal(24,9)"))
        time_us = (decimal * 1_000_000).cast("long")
    elif unit == "pattern":
        text, pattern = raw, event_file.time_pattern
        # A pattern without a zone is read in the source's zone, never the session's.
        if not re.search(r"[XxVZzO]", pattern.replace("'T'", "")):
            text, pattern = F.concat(raw, F.lit(" " + event_file.time_zone)), pattern + " VV"
        time_us = F.unix_micros(F.try_to_timestamp(text, F.lit(pattern)))
    else:  # day_plus_ms
        day = F.try_to_date(raw, "yyyy-MM-dd")
        offset = column(event_file.offset_column)
        offset_ms = F.when(offset.rlike(r"^[0-9]{1,12}$"), offset.try_cast("long"))
        time_us = F.unix_date(day).cast("long") * 86_400_000_000 + offset_ms * 1000
    return time_us, F.when(time_us.isNull(), F.lit(UNPARSEABLE_TIME))


def _parse_json_sessions(lines: DataFrame, event_file: EventFile, types: dict) -> DataFrame:
    """Explode OTTO-style lines, `{"session": s, "events": [{"aid", "ts", "type"}, ...]}`.

    A line that is not valid JSON of that shape is one malformed record; otherwise every
    nested event is one record, whose raw text is the line's session plus that event.
    """
    schema = "session string, events array<struct<aid:string, ts:string, type:string>>"
    parsed = lines.select("raw_line", "source_file",
                          F.from_json(_clean_line(F.col("raw_line")), schema).alias("record"))
    valid = F.col("record.events").isNotNull()

    exploded = parsed.select(
        "raw_line", "source_file", valid.alias("valid"), F.col("record.session").alias("session"),
        F.explode_outer(F.when(valid, F.col("record.events"))).alias("event"))
    record_text = F.to_json(F.struct(F.col("session"), F.col("event").alias("event")))

    event_type = F.col("event.type")
    ts = F.col("event.ts")
    time_us = F.when(ts.rlike(r"^-?[0-9]{1,18}$"), ts.try_cast("long")) * 1000
    return exploded.select(
        F.when(F.col("valid"), record_text).otherwise(F.col("raw_line")).alias("raw_line"),
        "source_file",
        (~F.col("valid") | F.col("event").isNull()).alias("malformed"),
        F.col("session").alias("user_id"),
        F.col("event.aid").alias("item_id"),
        F.lit(None).cast("string").alias("category_id"),
        event_type.alias("raw_event_type"),
        _map_type(event_type, types).alias("event_type"),
        time_us.alias("time_us"),
        F.when(time_us.isNull(), F.lit(UNPARSEABLE_TIME)).alias("time_reason"),
        F.lit(None).cast("double").alias("value"),
        F.col("session").alias("session_key"),
        F.create_map().cast("map<string,string>").alias("extras"),
    )


def _movielens_categories(spark: SparkSession, folder: str) -> CategoryFile | None:
    """Pick `u.item` (100K) or `movies.dat` (1M) by which one the folder holds."""
    for candidate in MOVIELENS_CATEGORY_FILES:
        if list_files(spark, folder, candidate.name_glob):
            return candidate
    return None


def _join_categories(spark: SparkSession, events: DataFrame, folder: str,
                     category_file: CategoryFile) -> DataFrame:
    """Fill `category_id` (the first category) and `extras['categories']` (all, `|`-joined)."""
    files = list_files(spark, folder, category_file.name_glob)
    if not files:
        log.warning("no category file %s in %s: events keep the category of the event file",
                    category_file.name_glob, folder)
        return events
    raw = (spark.read.option("encoding", category_file.encoding)
           .option("sep", "\u0001")  # one column per line; split below with the real delimiter
           .option("quote", "")
           .schema("line string").csv(files))
    parts = F.split(_clean_line(F.col("line")), re.escape(category_file.delimiter), -1)
    item = F.trim(F.try_element_at(parts, F.lit(category_file.item_index + 1)))

    if category_file.flag_start is not None:
        start = category_file.flag_start + 1
        flags = [F.when(F.try_element_at(parts, F.lit(start + index)) == "1", F.lit(name))
                 for index, name in enumerate(category_file.flag_names)]
        categories = F.filter(F.array(*flags), lambda value: value.isNotNull())
    else:
        value = F.trim(F.try_element_at(parts, F.lit(category_file.category_index + 1)))
        categories = (F.split(value, re.escape(category_file.list_separator), -1)
                      if category_file.list_separator else F.array(value))

    table = raw.select(item.alias("category_item"), categories.alias("categories"))
    if category_file.header:
        table = table.where(F.col("category_item").rlike(r"^[0-9A-Za-z_-]+$")
                            & ~F.lower("category_item").isin("itemid", "item_id", "item"))
    # One row per item even if the file repeats an item, so the join cannot duplicate events.
    table = table.groupBy("category_item").agg(F.first("categories").alias("categories"))

    joined = events.join(F.broadcast(table), events["item_id"] == table["category_item"], "left")
    all_categories = F.array_join(F.col("categories"), "|")
    extras = F.when(F.size("categories") > 0, F.map_concat(
        "extras", F.create_map(F.lit("categories"), all_categories))).otherwise(F.col("extras"))
    return joined.select(
        *[F.coalesce("category_id", F.try_element_at(F.col("categories"), F.lit(1))).alias(name)
          if name == "category_id" else (extras.alias(name) if name == "extras" else name)
          for name in PARSED_COLUMNS])
