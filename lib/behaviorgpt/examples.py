"""Cut one user's tokenized history into training and evaluation examples with task labels.

This module imports neither pyspark nor torch: the sequence job calls it inside `mapInArrow`
on each user's full history, and tests call it on hand-built histories.

An example is a contiguous run of one user's events (at most `max_len`), oldest first, with
these columns (see `docs/tables.md` for the table layout):

- the id streams `item`, `category`, `event_type`, `time_gap`, `session_start` and the
  `event_time` array (Unix seconds);
- `num_inputs`: the model reads positions 0 .. num_inputs-1. Input position t has the
  next-event target at stream position t + 1 when t + 1 < length. Every example has
  num_inputs = length - 1 except a temporal test example of a user with no event after the
  cutoff, which has num_inputs = length and no next event at its last position;
- `anchor_time`: time of the last input event;
- `label_start_time`: start of the label windows, the anchor time, or the cutoff for a
  temporal test example;
- the window labels. They count the label events: the events after the last input event
  that the split may see (see below) and whose time is before `label_start_time + window`.
  `category_interest` is the sorted set of their category ids (unknown id excluded),
  `purchase_label` is 1 if one of them is a purchase, and `return_label` is 1 if one of them
  starts a new session;
- `observed_until`: the events a split may see end before this time (Unix seconds), or
  null when the split sees every event. A label window that ends later may be incomplete.

Splits per protocol, for a user with events e_0 .. e_{N-1}:

- leave-one-out: e_{N-1} is the test event and e_{N-2} the validation event. Training
  examples, their targets and their labels use only e_0 .. e_{N-3}. The validation example
  ends at e_{N-2} and the test example at e_{N-1};
- temporal: events before `cutoff` are history. Training examples, targets and labels use
  only them. The test example is the last history events plus the first event at or after
  the cutoff, with labels from the window that starts at the cutoff.

Long training periods give several sliding examples that end `stride` events apart, the
latest first, at most `max_windows_per_user` of them. With the default stride of
`max_len - 1` every training event is a next-event target of exactly one example.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from behaviorgpt import tokens

PROTOCOLS = ("leave_one_out", "temporal")
SPLITS = ("train", "validation", "test")

STREAM_COLUMNS = ("item", "category", "event_type", "time_gap", "session_start")
"""`array<int32>` id streams of an example, one entry per event."""

PURCHASE_ID = tokens.EVENT_TYPE_IDS["purchase"]

EXAMPLES_FORMAT_VERSION = 1

_IDS = pa.list_(pa.int32())
EXAMPLE_SCHEMA = pa.schema([
    ("example_id", pa.string()), ("user_key", pa.string()), ("split", pa.string()),
    *[(name, _IDS) for name in STREAM_COLUMNS],
    ("event_time", pa.list_(pa.int64())), ("length", pa.int32()), ("num_inputs", pa.int32()),
    ("anchor_time", pa.int64()), ("label_start_time", pa.int64()),
    ("observed_until", pa.int64()), ("category_interest", _IDS),
    ("purchase_label", pa.int32()), ("return_label", pa.int32()),
])
"""Columns of the example shards; `docs/tables.md` gives each one's meaning."""


@dataclass(frozen=True)
class ExampleSettings:
    """Settings that turn histories into examples. All times are Unix seconds."""

    protocol: str
    max_len: int
    cutoff: int | None = None
    """Temporal protocol only: the first second of the test period."""
    stride: int | None = None
    """Events between the ends of two sliding examples; None means `max_len - 1`."""
    max_windows_per_user: int = 8
    category_window_seconds: float = 86_400.0
    purchase_window_seconds: float = 86_400.0
    return_window_seconds: float = 3 * 86_400.0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r} is invalid: expected one of "
                             f"{', '.join(PROTOCOLS)}")
        if self.protocol == "temporal" and self.cutoff is None:
            raise ValueError("the temporal protocol needs a cutoff time")
        if self.max_len < 2:
            raise ValueError(f"max_len={self.max_len} is invalid: an example needs >= 2 events")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride={self.stride} is invalid: expected >= 1")

    @property
    def window_stride(self) -> int:
        return self.stride if self.stride is not None else self.max_len - 1


def user_examples(user_key: str, history: dict, settings: ExampleSettings) -> list[dict]:
    """Return the examples of one user (possibly none), training examples first.

    `history` maps each of `STREAM_COLUMNS` and `event_time` to the user's whole history in
    time order (sequences of equal length).
    """
    times = np.asarray(history["event_time"], dtype=np.int64)
    count = len(times)
    for name in STREAM_COLUMNS:
        if len(history[name]) != count:
            raise ValueError(f"user {user_key!r}: stream {name!r} has {len(history[name])} "
                             f"events but event_time has {count}")
    arrays = {name: np.asarray(history[name], dtype=np.int32) for name in STREAM_COLUMNS}
    arrays["event_time"] = times

    if settings.protocol == "leave_one_out":
        training_end = count - 2
        observed_until = int(times[count - 2]) if count >= 2 else None
    else:
        training_end = int(np.searchsorted(times, settings.cutoff, side="left"))
        observed_until = settings.cutoff

    examples = []
    for end in _window_ends(training_end, settings):
        examples.append(_example(user_key, "train", arrays, end=end, visible=training_end,
                                 label_start=None, observed_until=observed_until,
                                 settings=settings))

    if settings.protocol == "leave_one_out":
        if count >= 3:
            examples.append(_example(user_key, "validation", arrays, end=count - 1,
                                     visible=count - 1, label_start=None,
                                     observed_until=int(times[count - 1]), settings=settings))
        if count >= 2:
            examples.append(_example(user_key, "test", arrays, end=count, visible=count,
                                     label_start=None, observed_until=None, settings=settings))
    elif training_end >= 1:
        # One event past the cutoff (when there is one) is the next-event target.
        end = min(training_end + 1, count)
        examples.append(_example(user_key, "test", arrays, end=end, visible=count,
                                 label_start=settings.cutoff, observed_until=None,
                                 settings=settings, num_history=training_end))
    return examples


def _window_ends(training_end: int, settings: ExampleSettings) -> list[int]:
    """Exclusive end indices of the sliding training examples, latest first."""
    ends = []
    end = training_end
    while end >= 2 and len(ends) < settings.max_windows_per_user:
        ends.append(end)
        if end - settings.max_len <= 0:
            break
        end -= settings.window_stride
    return ends


def _example(user_key: str, split: str, arrays: dict, *, end: int, visible: int,
             label_start: int | None, observed_until: int | None, settings: ExampleSettings,
             num_history: int | None = None) -> dict:
    """Build the example of events [end - max_len, end) with labels over events < `visible`.

    `num_history`, when given, is the number of events before the cutoff: positions from
    it on are targets only, never inputs.
    """
    start = max(0, end - settings.max_len)
    length = end - start
    if num_history is None:
        num_inputs = length - 1
        anchor = end - 2
    else:
        num_inputs = num_history - start
        anchor = num_history - 1

    times = arrays["event_time"]
    anchor_time = int(times[anchor])
    window_start = anchor_time if label_start is None else int(label_start)

    def window(seconds: float) -> slice:
        # Events after the anchor, visible to this split, and before the window's end.
        last = int(np.searchsorted(times[:visible], window_start + seconds, side="left"))
        return slice(anchor + 1, max(anchor + 1, last))

    categories = arrays["category"][window(settings.category_window_seconds)]
    purchases = arrays["event_type"][window(settings.purchase_window_seconds)]
    session_starts = arrays["session_start"][window(settings.return_window_seconds)]

    example = {
        "example_id": f"{user_key}/{split}/{end}",
        "user_key": user_key,
        "split": split,
        **{name: arrays[name][start:end].tolist() for name in STREAM_COLUMNS},
        "event_time": times[start:end].tolist(),
        "length": length,
        "num_inputs": num_inputs,
        "anchor_time": anchor_time,
        "label_start_time": window_start,
        "observed_until": observed_until,
        "category_interest": sorted({int(c) for c in categories if c != tokens.UNKNOWN_ID
                                     and c != tokens.PAD_ID}),
        "purchase_label": int(np.any(purchases == PURCHASE_ID)),
        "return_label": int(np.any(session_starts == 1)),
    }
    return example


def write_examples_manifest(examples_dir: Path, files: list[dict], *, settings: ExampleSettings,
                            num_shards: int, rows_per_row_group: int,
                            vocab_manifest: dict) -> dict:
    """Write `examples_dir/manifest.json`: the files of each split with row counts."""
    splits: dict[str, dict] = {}
    for entry in files:
        split = splits.setdefault(entry["split"], {"rows": 0, "files": []})
        split["rows"] += entry["rows"]
        split["files"].append({key: entry[key] for key in ("file", "shard", "rows", "row_groups")})
    manifest = {
        "format_version": EXAMPLES_FORMAT_VERSION,
        "protocol": settings.protocol,
        "cutoff": settings.cutoff,
        "max_len": settings.max_len,
        "stride": settings.window_stride,
        "max_windows_per_user": settings.max_windows_per_user,
        "label_windows_seconds": {"category_interest": settings.category_window_seconds,
                                  "purchase": settings.purchase_window_seconds,
                                  "return": settings.return_window_seconds},
        "num_shards": num_shards,
        "rows_per_row_group": rows_per_row_group,
        "vocab_hash": vocab_manifest["hash"],
        "splits": splits,
    }
    (examples_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n",
                                                encoding="utf-8")
    return manifest


class RowGroupWriter:
    """Buffer rows of one Parquet file and write them in row groups of a fixed size."""

    def __init__(self, path: Path, schema: pa.Schema, rows_per_row_group: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(str(path), schema)
        self.schema = schema
        self.rows_per_row_group = rows_per_row_group
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.rows = 0
        self.row_groups = 0

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= self.rows_per_row_group:
            buffered = pa.concat_tables(self.pending)
            self._flush(buffered.slice(0, self.rows_per_row_group))
            rest = buffered.slice(self.rows_per_row_group)
            self.pending, self.pending_rows = [rest], rest.num_rows

    def close(self) -> None:
        if self.pending_rows:
            self._flush(pa.concat_tables(self.pending))
        self.writer.close()

    def _flush(self, table: pa.Table) -> None:
        self.writer.write_table(table.cast(self.schema), row_group_size=table.num_rows)
        self.rows += table.num_rows
        self.row_groups += 1
