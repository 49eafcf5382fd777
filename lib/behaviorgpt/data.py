"""Read token sequence shards and build padded model batches from them.

The Spark side writes Parquet shards plus `sequences_dir/manifest.json`, which lists them.
Each row is one user with the id streams `item`, `category`, `event_type`, `time_gap`,
`session_start` (`array<int32>`, oldest event first) and `length`. Shard i belongs to
training rank i % world_size.

Leave-one-out views of a sequence of `length` events (0-based event indices):

- train: inputs are events 0 .. length-4 and the target of position t is event t + 1, so the
  targets stop at event length-3 and training never sees the last two events;
- validation: inputs are events 0 .. length-3, the target is event length-2;
- test: inputs are events 0 .. length-2, the target is event length-1;
- score: inputs are all events, there is no target.

Batches are right-padded with `PAD_ID` to the longest row of the batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from behaviorgpt.errors import PARQUET_READ_ERRORS, corrupt_parquet
from behaviorgpt.tokens import PAD_ID

STREAMS = ("item", "category", "event_type", "time_gap", "session_start")
"""Id streams fed to the model, one `array<int32>` column each."""

VIEWS = ("train", "validation", "test", "score")

MIN_LENGTH = {"train": 4, "validation": 3, "test": 2, "score": 1}
"""Minimum events a sequence needs for at least one input and one target in each view."""

_HELD_OUT_EVENTS = {"train": 3, "validation": 2, "test": 1, "score": 0}
"""Events at the end of a sequence that are not inputs of a view."""


@dataclass(frozen=True)
class SequenceManifest:
    """Contents of `sequences_dir/manifest.json`."""

    num_shards: int
    max_len: int
    shard_files: tuple[str, ...]
    shard_rows: tuple[int, ...]


def read_manifest(sequences_dir: str | Path) -> SequenceManifest:
    """Read and check the shard manifest; raise FileNotFoundError or ValueError if unusable."""
    path = Path(sequences_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"sequence manifest not found: {path}. Run the sequence "
                                f"building job first, or pass the folder that contains it.")
    data = json.loads(path.read_text(encoding="utf-8"))
    shards = data.get("shards", [])
    if data.get("num_shards") != len(shards) or not shards:
        raise ValueError(f"{path}: num_shards={data.get('num_shards')!r} does not match the "
                         f"{len(shards)} entries of 'shards'")
    return SequenceManifest(num_shards=len(shards), max_len=int(data["max_len"]),
                            shard_files=tuple(shard["file"] for shard in shards),
                            shard_rows=tuple(int(shard["rows"]) for shard in shards))


def read_vocab_manifest(vocab_dir: str | Path) -> dict:
    """Read `vocab/manifest.json`, which contains `num_items` and `num_categories` (reserved
    ids included) and the sizes of the fixed id spaces."""
    path = Path(vocab_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary manifest not found: {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def rank_shard_paths(sequences_dir: str | Path, manifest: SequenceManifest, rank: int,
                     world_size: int) -> list[Path]:
    """Return the shard files of one rank: shard i goes to rank i % world_size."""
    return [Path(sequences_dir) / name for index, name in enumerate(manifest.shard_files)
            if index % world_size == rank]


@dataclass
class EventSequences:
    """Id streams of a set of users as right-padded numpy arrays."""

    user_keys: np.ndarray
    """[users] object array of user key strings."""
    streams: dict[str, np.ndarray]
    """Stream name -> [users, width] int32, `PAD_ID` after each user's last event."""
    lengths: np.ndarray
    """[users] int64 number of events kept per user."""

    def __len__(self) -> int:
        return len(self.lengths)

    @classmethod
    def from_arrow(cls, table: pa.Table | pa.RecordBatch, max_len: int) -> "EventSequences":
        """Convert shard rows to padded arrays, keeping each user's last `max_len` events.

        Raises ValueError when a row's streams differ in length, a row is empty, or the
        `length` column (when present) disagrees with the streams.
        """
        user_keys = table.column("user_key").to_numpy(zero_copy_only=False)
        lengths = None
        streams = {}
        for name in STREAMS:
            column = table.column(name)
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            if column.null_count:
                raise ValueError(f"column {name!r} has {column.null_count} null rows; every "
                                 f"row needs a list of ids")
            stream_lengths = column.value_lengths().to_numpy().astype(np.int64)
            if lengths is None:
                lengths = stream_lengths
            elif not np.array_equal(lengths, stream_lengths):
                row = int(np.flatnonzero(lengths != stream_lengths)[0])
                raise ValueError(f"user {user_keys[row]!r}: stream {name!r} has "
                                 f"{stream_lengths[row]} events but 'item' has {lengths[row]}")
            streams[name] = column.flatten().to_numpy(zero_copy_only=False)

        if len(lengths) and lengths.min() < 1:
            row = int(np.argmin(lengths))
            raise ValueError(f"user {user_keys[row]!r} has no events; sequences need >= 1")
        if "length" in table.column_names:
            declared = table.column("length").to_numpy(zero_copy_only=False).astype(np.int64)
            if not np.array_equal(declared, lengths):
                row = int(np.flatnonzero(declared != lengths)[0])
                raise ValueError(f"user {user_keys[row]!r}: length={declared[row]} but the "
                                 f"streams have {lengths[row]} events")

        # Scatter the flat values into [users, width]; longer rows lose their oldest events.
        kept_lengths = np.minimum(lengths, max_len)
        width = int(kept_lengths.max()) if len(kept_lengths) else 1
        rows = np.repeat(np.arange(len(lengths)), lengths)
        starts = np.cumsum(lengths) - lengths
        columns = np.arange(int(lengths.sum())) - np.repeat(starts + lengths - kept_lengths,
                                                             lengths)
        keep = columns >= 0
        padded = {}
        for name, values in streams.items():
            array = np.full((len(lengths), width), PAD_ID, dtype=np.int32)
            array[rows[keep], columns[keep]] = values[keep]
            padded[name] = array
        return cls(user_keys=user_keys, streams=padded, lengths=kept_lengths)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, max_len: int) -> "EventSequences":
        """Convert a pandas DataFrame with the shard columns (lists or arrays of ids)."""
        missing = [name for name in ("user_key", *STREAMS) if name not in frame.columns]
        if missing:
            raise ValueError(f"input frame lacks the columns {missing}; it needs user_key and "
                             f"the id streams {list(STREAMS)}")
        columns = {"user_key": pa.array(frame["user_key"].astype(str).to_numpy())}
        for name in STREAMS:
            columns[name] = pa.array(list(frame[name]), type=pa.list_(pa.int32()))
        if "length" in frame.columns:
            columns["length"] = pa.array(frame["length"].to_numpy(dtype=np.int64))
        return cls.from_arrow(pa.table(columns), max_len)

    def take(self, rows: np.ndarray) -> "EventSequences":
        return EventSequences(user_keys=self.user_keys[rows],
                              streams={name: array[rows] for name, array in self.streams.items()},
                              lengths=self.lengths[rows])


def read_rank_sequences(sequences_dir: str | Path, rank: int, world_size: int) -> EventSequences:
    """Load all shards of one rank into memory.

    NOTE: training keeps its rank's shards in memory (about 20 bytes per event: five int32
    streams) so that it can shuffle across them each epoch. A rank whose shards do not fit
    needs more shards per run or a streaming shuffle buffer.
    """
    manifest = read_manifest(sequences_dir)
    paths = rank_shard_paths(sequences_dir, manifest, rank, world_size)
    if not paths:
        return EventSequences.from_arrow(_empty_shard_table(), manifest.max_len)
    table = pa.concat_tables(_read_shard(path) for path in paths)
    return EventSequences.from_arrow(table, manifest.max_len)


def _read_shard(path: Path) -> pa.Table:
    """Read one shard's model columns; raise CorruptFileError naming it if it is unreadable."""
    try:
        return pq.read_table(path, columns=["user_key", *STREAMS, "length"])
    except PARQUET_READ_ERRORS as error:
        raise corrupt_parquet(path, error) from None


def iter_shard_sequences(paths: Sequence[str | Path], max_len: int,
                         rows_per_chunk: int = 4096) -> Iterator[EventSequences]:
    """Stream shards chunk by chunk, so memory is bounded by `rows_per_chunk` users."""
    for path in paths:
        try:
            batches = pq.ParquetFile(path).iter_batches(
                batch_size=rows_per_chunk, columns=["user_key", *STREAMS, "length"])
        except PARQUET_READ_ERRORS as error:
            raise corrupt_parquet(path, error) from None
        while True:
            # A garbled page fails only when its batch is decoded, so each step is checked.
            try:
                record_batch = next(batches)
            except StopIteration:
                break
            except PARQUET_READ_ERRORS as error:
                raise corrupt_parquet(path, error) from None
            yield EventSequences.from_arrow(record_batch, max_len)


@dataclass
class Batch:
    """Padded id streams of one batch of users, as int64 tensors on one device.

    Training batches carry targets `[batch, seq]`: the next event's ids, `PAD_ID` where a
    position has no target. Validation and test batches carry targets `[batch]`, the held-out
    event. Scoring batches carry none.
    """

    item: Tensor
    """[batch, seq] item ids."""
    category: Tensor
    """[batch, seq] category ids."""
    event_type: Tensor
    """[batch, seq] event type ids."""
    time_gap: Tensor
    """[batch, seq] time gap bucket ids."""
    session_start: Tensor
    """[batch, seq] 1 where the event starts a session, else 0."""
    lengths: Tensor
    """[batch] number of input events per row (>= 1)."""
    target_item: Tensor | None = None
    target_category: Tensor | None = None
    target_event_type: Tensor | None = None
    """[batch, seq] next event's type id, `PAD_ID` where a position has no target (example
    batches of `behaviorgpt.loader` only)."""
    category_interest: Tensor | None = None
    """[batch, k] category ids engaged in the label window, `PAD_ID`-padded (example batches)."""
    purchase_label: Tensor | None = None
    """[batch] 1 if the user purchases in the label window, else 0 (example batches)."""
    return_label: Tensor | None = None
    """[batch] 1 if a new session starts within the return window, else 0 (example batches)."""
    example_ids: tuple[str, ...] | None = None
    """Example id of each row (example batches); stays on the host."""

    @property
    def last_positions(self) -> Tensor:
        """[batch] position of each row's last input event."""
        return self.lengths - 1

    def to(self, device: torch.device | str) -> "Batch":
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = value.to(device, non_blocking=True) if isinstance(value, Tensor) \
                else value
        return Batch(**moved)


def eligible_rows(sequences: EventSequences, view: str) -> np.ndarray:
    """Return the indices of the users long enough for `view` (see `MIN_LENGTH`)."""
    _check_view(view)
    return np.flatnonzero(sequences.lengths >= MIN_LENGTH[view])


def make_batch(sequences: EventSequences, rows: np.ndarray, view: str) -> Batch:
    """Build the batch of `view` for the users `rows` (all must be eligible for the view)."""
    _check_view(view)
    num_inputs = sequences.lengths[rows] - _HELD_OUT_EVENTS[view]
    if len(rows) == 0 or num_inputs.min() < 1:
        raise ValueError(f"the {view} view needs rows with >= {MIN_LENGTH[view]} events; "
                         f"select them with eligible_rows()")
    width = int(num_inputs.max())
    is_input = np.arange(width) < num_inputs[:, None]

    def inputs(name: str) -> Tensor:
        values = sequences.streams[name][rows, :width]
        return torch.from_numpy(np.where(is_input, values, PAD_ID).astype(np.int64))

    batch = Batch(item=inputs("item"), category=inputs("category"),
                  event_type=inputs("event_type"), time_gap=inputs("time_gap"),
                  session_start=inputs("session_start"),
                  lengths=torch.from_numpy(num_inputs.astype(np.int64)))

    if view == "train":
        # Position t predicts event t + 1; positions past the inputs have no target.
        def shifted(name: str) -> Tensor:
            values = sequences.streams[name][rows, 1:width + 1]
            return torch.from_numpy(np.where(is_input, values, PAD_ID).astype(np.int64))

        batch.target_item = shifted("item")
        batch.target_category = shifted("category")
    elif view in ("validation", "test"):
        batch.target_item = torch.from_numpy(
            sequences.streams["item"][rows, num_inputs].astype(np.int64))
        batch.target_category = torch.from_numpy(
            sequences.streams["category"][rows, num_inputs].astype(np.int64))
    return batch


def training_batches(sequences: EventSequences, batch_size: int, seed: int, epoch: int,
                     rank: int) -> Iterator[Batch]:
    """Yield one epoch of shuffled training batches; the last batch may be smaller.

    The order depends only on (seed, epoch, rank), so a rerun gets the same batches.
    """
    rows = eligible_rows(sequences, "train")
    order = np.random.default_rng([seed, epoch, rank]).permutation(rows)
    for start in range(0, len(order), batch_size):
        yield make_batch(sequences, order[start:start + batch_size], "train")


def ordered_batches(sequences: EventSequences, view: str, batch_size: int) -> Iterator[Batch]:
    """Yield the batches of a prediction view over the eligible users, in row order."""
    rows = eligible_rows(sequences, view)
    for start in range(0, len(rows), batch_size):
        yield make_batch(sequences, rows[start:start + batch_size], view)


def _check_view(view: str) -> None:
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {', '.join(VIEWS)}")


def _empty_shard_table() -> pa.Table:
    ids = pa.list_(pa.int32())
    return pa.table({"user_key": pa.array([], pa.string()),
                     **{name: pa.array([], ids) for name in STREAMS},
                     "length": pa.array([], pa.int32())})
