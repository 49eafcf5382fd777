"""No raw user id of the input reaches any table or file that a pipeline run writes.

Both end-to-end runs of the suite (the generated log and the real Taobao slice, fixtures in
`conftest.py`) are scanned. The scan reads every Parquet file under the run's root: Delta
data and checkpoint files of every version, and the sequence, example and vocabulary shards.
It also reads every Delta commit file and every JSON or text file of the model folders. The input itself is skipped:
`generated/` contains the generator's event log and planted interests.

A raw id counts as found when it is a whole token of a string value: tokens are runs of
letters, digits, `_`, `.` and `-`, as in `privacy.redact_raw_line`. A string that contains JSON
(`pipeline_runs.config_json`, Delta statistics) is parsed and its strings are scanned.
Numeric columns are not scanned, because counts, times and token ids are numbers that equal
small user ids by chance, and so are Delta's commit metrics and Spark's expression ids, which
are such numbers stored as strings. Instead, no output column may carry a user column's
source name.
Raw ids that the input also uses as item, category or time values are skipped, because an
output legitimately contains those.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import real_data_file

TOKEN_SEPARATOR = re.compile(r"[^\w.-]+")

USER_COLUMN_NAMES = {"user_id", "userid", "visitorid", "session", "sessionid", "user_session",
                     "raw_user_id"}
"""Source names of user and session columns in the supported formats (lower case).
`session_id` is left out: in `sessions` it is the pipeline's own id, a SHA-256 of the
pseudonym and the first event id."""

TEXT_SUFFIXES = {".json", ".jsonl", ".crc", ".txt", ""}

SKIPPED_JSON_KEYS = {"operationMetrics"}
"""Delta commit metrics: row counts, byte sizes and timings, which Delta stores as strings."""

EXPRESSION_ID = re.compile(r"#\d+")
"""Spark expression ids in the predicates of Delta commits, such as `run_date#123`."""

EXAMPLE_INDEX = re.compile(r"^([0-9a-f]{64}/(?:train|validation|test)/)\d+$")
"""The index at the end of an example id `<user_key>/<split>/<index>`: a count, not an id."""


def input_ids(path: Path) -> tuple[set[str], set[str]]:
    """Return (user ids, every other field value) of a Taobao-format CSV log."""
    users, others = set(), set()
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            fields = line.rstrip("\r\n").split(",")
            users.add(fields[0].strip())
            others.update(field.strip() for field in fields[1:])
    users.discard("")
    return users, others


def string_tokens(text: str) -> Iterator[str]:
    """Yield the tokens of a string, or of the strings inside it when it contains JSON."""
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            yield from json_tokens(json.loads(stripped))
            return
        except ValueError:
            pass
    text = EXAMPLE_INDEX.sub(r"\1", EXPRESSION_ID.sub("", text))
    yield from (token for token in TOKEN_SEPARATOR.split(text) if token)


def json_tokens(value) -> Iterator[str]:
    """Yield the tokens of every key and string of a parsed JSON value (numbers skipped)."""
    if isinstance(value, str):
        yield from string_tokens(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from string_tokens(key)
            if key not in SKIPPED_JSON_KEYS:
                yield from json_tokens(item)
    elif isinstance(value, list):
        for item in value:
            yield from json_tokens(item)


def string_values(array: pa.Array) -> Iterator[str]:
    """Yield the distinct string leaves of an Arrow array of any nesting."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        yield from string_values(array.dictionary_decode())
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        yield from (value for value in pc.unique(array).to_pylist() if value)
    elif pa.types.is_map(kind):
        yield from string_values(array.keys)
        yield from string_values(array.items)
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        yield from string_values(array.flatten())
    elif pa.types.is_struct(kind):
        for index in range(kind.num_fields):
            yield from string_values(array.field(index))


def column_names(schema: pa.Schema) -> Iterator[str]:
    def walk(field: pa.Field) -> Iterator[str]:
        yield field.name
        kind = field.type
        if pa.types.is_struct(kind):
            for index in range(kind.num_fields):
                yield from walk(kind.field(index))
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            yield from walk(kind.value_field)

    for field in schema:
        yield from walk(field)


def output_files(root: Path) -> list[Path]:
    """Return the files a run wrote, without its input and without Hadoop's binary checksum
    files (`.<name>.crc`). Delta's own `.crc` files in `_delta_log` are JSON and are kept."""
    return sorted(path for path in root.rglob("*")
                  if path.is_file() and path.relative_to(root).parts[0] != "generated"
                  and not (path.name.startswith(".") and path.name.endswith(".crc")))


def scan_outputs(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]], int]:
    """Return (tokens per file, user-like column names per file, files scanned)."""
    tokens: dict[str, set[str]] = {}
    user_columns: dict[str, set[str]] = {}
    scanned = 0
    for path in output_files(root):
        name = str(path.relative_to(root))
        found: set[str] = set()
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for column in table.columns:
                for value in string_values(column.combine_chunks()):
                    found.update(string_tokens(value))
            names = {column.lower() for column in column_names(table.schema)}
            if names & USER_COLUMN_NAMES:
                user_columns[name] = names & USER_COLUMN_NAMES
        elif path.suffix in TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8", errors="replace")
            try:
                found.update(json_tokens(json.loads(text)))
            except ValueError:  # JSON lines (Delta commits, diagnostics) or plain text
                for line in text.splitlines():
                    found.update(string_tokens(line))
        else:
            continue
        scanned += 1
        tokens[name] = found
    return tokens, user_columns, scanned


@pytest.mark.parametrize("pipeline", ["default_pipeline", "real_pipeline"])
def test_outputs_hold_no_raw_user_id(request, pipeline):
    layout = request.getfixturevalue(pipeline)
    if pipeline == "real_pipeline":
        source = real_data_file(
            "taobao_userbehavior/user_sorted_head_Haohanblue-mydeep/UserBehavior.csv")
    else:
        source = layout.generated_input_dir / "events.csv"
    users, other_values = input_ids(source)
    checked = users - other_values

    tokens, user_columns, scanned = scan_outputs(layout.root)
    leaks = {name: sorted(found & checked)[:5] for name, found in tokens.items()
             if found & checked}

    assert len(checked) > 0.9 * len(users)
    assert scanned > 20
    assert any(name.startswith("delta/quarantine/") for name in tokens)
    assert leaks == {}
    assert user_columns == {}


def test_scan_finds_planted_ids(tmp_path):
    nested = pa.table({
        "line": ["u-77,10,1,pv"],
        "profile": [{"items": ["10"], "note": "user 4242"}],
        "extras": pa.array([[("k", "9001")]], pa.map_(pa.string(), pa.string())),
        "config_json": ['{"input": "ids 31337", "count": 555}'],
    })
    pq.write_table(nested, tmp_path / "part-0.parquet")
    (tmp_path / "model_config.json").write_text('{\n  "owner": "7777",\n  "steps": 8888\n}')

    tokens, _, scanned = scan_outputs(tmp_path)
    found = set().union(*tokens.values())

    assert scanned == 2
    assert {"u-77", "4242", "9001", "31337", "7777"} <= found
    assert not {"555", "8888", "77"} & found
