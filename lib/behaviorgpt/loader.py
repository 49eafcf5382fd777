"""Stream the example shards of one rank as length-bucketed, resumable training batches.

The sequence job writes `sequences/examples/<split>/part-<shard>.parquet` and lists them in
`sequences/examples/manifest.json`. Shard s belongs to rank s % world_size, so the ranks
read disjoint files and together read every example once. A rank may hold more examples
than another: the trainer runs under DDP's `Join` so the rank that runs out first keeps
answering the others' all-reduces instead of hanging, and no example is dropped.

Within a rank the read unit is one Parquet row group, opened through `pyarrow.dataset`, so
memory holds a few row groups and never a whole shard. Each epoch:

1. the rank's row groups are put in a random order seeded by (seed, epoch, rank) and dealt
   round-robin to `num_streams` streams, one per DataLoader worker (one stream without
   workers);
2. each stream reads its row groups in that order into a shuffle buffer of
   `shuffle_buffer` examples; whenever the buffer is full it is permuted and half of it
   moves on;
3. examples are pooled `bucket_batches` batches at a time, sorted by length and cut into
   batches, which leave in a random order. Rows of similar length share a batch, so less
   of it is padding. Every example of the stream ends up in exactly one batch; the last
   batch of a stream may be smaller.

The DataLoader takes one batch from each worker in turn (workers that have finished are
skipped), so the order of a rank's batches depends only on (seed, epoch, rank, num_streams).
`ExampleLoader.state_dict()` records how many batches each stream has delivered and which
stream is next; a loader restored from it skips exactly those batches and yields the rest
of the epoch in the same order as an uninterrupted run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from behaviorgpt.data import STREAMS, Batch, EventSequences
from behaviorgpt.errors import PARQUET_READ_ERRORS, corrupt_parquet
from behaviorgpt.tokens import PAD_ID

LABEL_COLUMNS = ("example_id", "user_key", *STREAMS, "length", "num_inputs",
                 "category_interest", "purchase_label", "return_label")
"""Columns the loader reads from the example shards."""


@dataclass(frozen=True)
class ExampleFile:
    """One example shard of a split, as listed in the manifest."""

    path: Path
    shard: int
    rows: int
    row_groups: int


def read_examples_manifest(sequences_dir: str | Path) -> dict:
    """Read `sequences_dir/examples/manifest.json`; raise FileNotFoundError if it is absent."""
    path = Path(sequences_dir) / "examples" / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"example manifest not found: {path}. Run the sequences stage "
                                f"of this version first; it writes the example shards.")
    return json.loads(path.read_text(encoding="utf-8"))


def rank_example_files(sequences_dir: str | Path, split: str, rank: int,
                       world_size: int) -> list[ExampleFile]:
    """Return the shards of `split` that belong to `rank` (shard s goes to s % world_size)."""
    manifest = read_examples_manifest(sequences_dir)
    entries = manifest["splits"].get(split, {"files": []})["files"]
    base = Path(sequences_dir) / "examples"
    return [ExampleFile(base / entry["file"], int(entry["shard"]), int(entry["rows"]),
                        int(entry["row_groups"]))
            for entry in entries if int(entry["shard"]) % world_size == rank]


@dataclass
class ExampleChunk:
    """Examples as fixed-width numpy arrays, so that any subset of rows is one indexing step."""

    example_ids: np.ndarray
    """[rows] object array of example id strings."""
    streams: dict[str, np.ndarray]
    """Stream name -> [rows, max_len + 1] int32, `PAD_ID` after each example's events."""
    lengths: np.ndarray
    """[rows] int64 events per example."""
    num_inputs: np.ndarray
    """[rows] int64 input positions per example."""
    category_interest: np.ndarray
    """[rows] object array of int64 arrays of category ids."""
    purchase_label: np.ndarray
    return_label: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    @classmethod
    def from_arrow(cls, table, max_len: int) -> "ExampleChunk":
        sequences = EventSequences.from_arrow(table, max_len)
        width = max_len + 1
        streams = {name: np.pad(array, ((0, 0), (0, width - array.shape[1])),
                                constant_values=PAD_ID)
                   for name, array in sequences.streams.items()}
        interest = table.column("category_interest").to_pylist()
        return cls(
            example_ids=table.column("example_id").to_numpy(zero_copy_only=False),
            streams=streams,
            lengths=sequences.lengths,
            num_inputs=table.column("num_inputs").to_numpy().astype(np.int64),
            category_interest=np.array([np.asarray(ids, dtype=np.int64) for ids in interest]
                                       + [None], dtype=object)[:-1],
            purchase_label=table.column("purchase_label").to_numpy().astype(np.int64),
            return_label=table.column("return_label").to_numpy().astype(np.int64),
        )

    def take(self, rows: np.ndarray) -> "ExampleChunk":
        return ExampleChunk(
            example_ids=self.example_ids[rows],
            streams={name: array[rows] for name, array in self.streams.items()},
            lengths=self.lengths[rows], num_inputs=self.num_inputs[rows],
            category_interest=self.category_interest[rows],
            purchase_label=self.purchase_label[rows], return_label=self.return_label[rows])

    @staticmethod
    def concat(chunks: list["ExampleChunk"]) -> "ExampleChunk":
        first = chunks[0]
        return ExampleChunk(
            example_ids=np.concatenate([chunk.example_ids for chunk in chunks]),
            streams={name: np.concatenate([chunk.streams[name] for chunk in chunks])
                     for name in first.streams},
            lengths=np.concatenate([chunk.lengths for chunk in chunks]),
            num_inputs=np.concatenate([chunk.num_inputs for chunk in chunks]),
            category_interest=np.concatenate([chunk.category_interest for chunk in chunks]),
            purchase_label=np.concatenate([chunk.purchase_label for chunk in chunks]),
            return_label=np.concatenate([chunk.return_label for chunk in chunks]))


def make_example_batch(chunk: ExampleChunk) -> Batch:
    """Build the training batch of all rows of `chunk`.

    Input position t of a row carries the next-event targets of stream position t + 1 when
    t < num_inputs and t + 1 < length, else `PAD_ID`. `category_interest` is `[batch, k]`,
    padded with `PAD_ID`, where k is the largest set of the batch (at least 1).
    """
    width = int(chunk.num_inputs.max())
    positions = np.arange(width)
    is_input = positions < chunk.num_inputs[:, None]
    has_target = is_input & (positions + 1 < chunk.lengths[:, None])

    def inputs(name: str) -> torch.Tensor:
        values = chunk.streams[name][:, :width]
        return torch.from_numpy(np.where(is_input, values, PAD_ID).astype(np.int64))

    def targets(name: str) -> torch.Tensor:
        values = chunk.streams[name][:, 1:width + 1]
        return torch.from_numpy(np.where(has_target, values, PAD_ID).astype(np.int64))

    interest_width = max(1, max(len(ids) for ids in chunk.category_interest))
    interest = np.full((len(chunk), interest_width), PAD_ID, dtype=np.int64)
    for row, ids in enumerate(chunk.category_interest):
        interest[row, :len(ids)] = ids

    return Batch(item=inputs("item"), category=inputs("category"),
                 event_type=inputs("event_type"), time_gap=inputs("time_gap"),
                 session_start=inputs("session_start"),
                 lengths=torch.from_numpy(chunk.num_inputs.copy()),
                 target_item=targets("item"), target_category=targets("category"),
                 target_event_type=targets("event_type"),
                 category_interest=torch.from_numpy(interest),
                 purchase_label=torch.from_numpy(chunk.purchase_label.copy()),
                 return_label=torch.from_numpy(chunk.return_label.copy()),
                 example_ids=tuple(chunk.example_ids.tolist()))


class ExampleStream(IterableDataset):
    """One rank's examples of a split as an iterable of `(stream, index, Batch)` tuples.

    `stream` is the logical stream (0 .. num_streams-1) that made the batch and `index` its
    position in that stream. Call `set_epoch` before each epoch; `ExampleLoader` does.
    """

    def __init__(self, sequences_dir: str | Path, *, rank: int, world_size: int,
                 batch_size: int, seed: int, max_len: int, split: str = "train",
                 shuffle: bool = True, shuffle_buffer: int = 4096, bucket_batches: int = 8,
                 num_streams: int = 1) -> None:
        if batch_size < 1 or shuffle_buffer < 1 or bucket_batches < 1 or num_streams < 1:
            raise ValueError(f"batch_size={batch_size}, shuffle_buffer={shuffle_buffer}, "
                             f"bucket_batches={bucket_batches} and num_streams={num_streams} "
                             f"must all be >= 1")
        self.files = rank_example_files(sequences_dir, split, rank, world_size)
        self.rank = rank
        self.batch_size = batch_size
        self.seed = seed
        self.max_len = max_len
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.bucket_batches = bucket_batches
        self.num_streams = num_streams
        self.epoch = 0
        self.skip_batches = [0] * num_streams
        self.first_stream = 0

    @property
    def num_examples(self) -> int:
        return sum(entry.rows for entry in self.files)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_resume(self, skip_batches: list[int], first_stream: int) -> None:
        """Skip the batches already delivered by each stream; start the rotation at
        `first_stream`."""
        if len(skip_batches) != self.num_streams:
            raise ValueError(f"the saved state has {len(skip_batches)} streams but this loader "
                             f"has {self.num_streams}; resume with the same loader_workers")
        self.skip_batches = list(skip_batches)
        self.first_stream = first_stream % self.num_streams

    def units(self) -> list[tuple[int, int]]:
        """All (file index, row group) pairs of this rank in this epoch's order."""
        units = [(index, group) for index, entry in enumerate(self.files)
                 for group in range(entry.row_groups)]
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, self.rank]).permutation(
                len(units))
            units = [units[i] for i in order]
        return units

    def __iter__(self) -> Iterator[tuple[int, int, Batch]]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        workers = 1 if info is None else info.num_workers
        if workers != self.num_streams:
            raise RuntimeError(f"ExampleStream made for {self.num_streams} streams runs under "
                               f"{workers} DataLoader workers")
        stream = (worker + self.first_stream) % self.num_streams
        skip = self.skip_batches[stream]
        for index, chunk in enumerate(self.stream_chunks(stream)):
            if index >= skip:
                yield stream, index, make_example_batch(chunk)

    def stream_chunks(self, stream: int) -> Iterator[ExampleChunk]:
        """Yield the batches of one stream as example chunks (before tensor conversion)."""
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, stream, 1])
        mine = self.units()[stream::self.num_streams]
        pool_size = self.batch_size * self.bucket_batches
        pool: list[ExampleChunk] = []
        pooled = 0
        for examples in self._shuffled(mine, rng):
            pool.append(examples)
            pooled += len(examples)
            if pooled >= pool_size:
                merged = ExampleChunk.concat(pool)
                start = 0
                while len(merged) - start >= pool_size:
                    yield from self._bucket(merged.take(np.arange(start, start + pool_size)), rng)
                    start += pool_size
                pool = [merged.take(np.arange(start, len(merged)))]
                pooled = len(pool[0])
        if pooled:
            yield from self._bucket(ExampleChunk.concat(pool), rng)

    def _shuffled(self, units: list[tuple[int, int]],
                  rng: np.random.Generator) -> Iterator[ExampleChunk]:
        """Read the row groups through the shuffle buffer."""
        buffer: list[ExampleChunk] = []
        buffered = 0
        for chunk in self._read(units):
            buffer.append(chunk)
            buffered += len(chunk)
            if buffered >= self.shuffle_buffer:
                merged = ExampleChunk.concat(buffer)
                order = rng.permutation(len(merged)) if self.shuffle else np.arange(len(merged))
                half = len(merged) // 2 or len(merged)
                yield merged.take(order[:half])
                buffer = [merged.take(order[half:])]
                buffered = len(buffer[0])
        if buffered:
            merged = ExampleChunk.concat(buffer)
            yield merged.take(rng.permutation(len(merged)) if self.shuffle
                              else np.arange(len(merged)))

    def _read(self, units: list[tuple[int, int]]) -> Iterator[ExampleChunk]:
        datasets: dict[int, list] = {}
        for file_index, group in units:
            path = self.files[file_index].path
            try:
                if file_index not in datasets:
                    dataset = ds.dataset(str(path), format="parquet")
                    fragment = next(iter(dataset.get_fragments()))
                    datasets[file_index] = fragment.split_by_row_group()
                row_group = datasets[file_index][group]
                table = row_group.to_table(columns=list(LABEL_COLUMNS))
            except (*PARQUET_READ_ERRORS, IndexError) as error:
                # IndexError: the file has fewer row groups than the manifest lists.
                raise corrupt_parquet(path, error) from None
            if table.num_rows:
                yield ExampleChunk.from_arrow(table, self.max_len)

    def _bucket(self, examples: ExampleChunk, rng: np.random.Generator) -> Iterator[ExampleChunk]:
        """Sort by length, cut into batches and yield them in a random order."""
        order = np.argsort(examples.num_inputs, kind="stable")
        batches = [order[start:start + self.batch_size]
                   for start in range(0, len(order), self.batch_size)]
        sequence = rng.permutation(len(batches)) if self.shuffle else np.arange(len(batches))
        for index in sequence:
            yield examples.take(batches[index])


def _keep_batch(item):
    return item


class ExampleLoader:
    """Resumable iterator of one rank's training batches over `ExampleStream`.

    Iterating yields `Batch` objects for the current epoch; `state_dict()` taken between two
    batches and passed to `load_state_dict()` of a fresh loader (same settings) continues with
    the next batch.
    """

    def __init__(self, dataset: ExampleStream, num_workers: int = 0,
                 prefetch_factor: int = 2) -> None:
        if max(1, num_workers) != dataset.num_streams:
            raise ValueError(f"num_workers={num_workers} needs a dataset with "
                             f"{max(1, num_workers)} streams, not {dataset.num_streams}")
        self.dataset = dataset
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.epoch = 0
        self.delivered = [0] * dataset.num_streams
        self.next_stream = 0
        self.wait_seconds = 0.0
        """Seconds spent waiting for batches since the last `reset_wait()`."""

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch (unless a loaded state resumes it)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.delivered = [0] * self.dataset.num_streams
            self.next_stream = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "delivered": list(self.delivered),
                "next_stream": self.next_stream, "num_streams": self.dataset.num_streams,
                "seed": self.dataset.seed, "rank": self.dataset.rank}

    def load_state_dict(self, state: dict) -> None:
        if state["num_streams"] != self.dataset.num_streams or state["seed"] != self.dataset.seed:
            raise ValueError(f"loader state for {state['num_streams']} streams and seed "
                             f"{state['seed']} does not fit this loader ({self.dataset.num_streams} "
                             f"streams, seed {self.dataset.seed})")
        self.epoch = int(state["epoch"])
        self.delivered = list(state["delivered"])
        self.next_stream = int(state["next_stream"])

    def __iter__(self) -> Iterator[Batch]:
        import time

        self.dataset.set_epoch(self.epoch)
        self.dataset.set_resume(self.delivered, self.next_stream)
        if self.num_workers:
            # The DataLoader draws its workers' base seed from the generator it is given, or
            # else from torch's global one. A private generator keeps the global state (which
            # drives dropout) independent of when an epoch's iterator is made, so a run
            # resumed mid-epoch draws the same dropout masks. The workers use no torch
            # randomness: their order comes from numpy generators seeded per epoch.
            source = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                                collate_fn=_keep_batch, prefetch_factor=self.prefetch_factor,
                                generator=torch.Generator().manual_seed(self.dataset.seed))
        else:
            source = self.dataset
        iterator = iter(source)
        while True:
            started = time.perf_counter()
            try:
                stream, index, batch = next(iterator)
            except StopIteration:
                break
            finally:
                self.wait_seconds += time.perf_counter() - started
            self.delivered[stream] = index + 1
            self.next_stream = (stream + 1) % self.dataset.num_streams
            yield batch
        # A finished epoch leaves a state that starts the next one from its beginning.
        self.set_epoch(self.epoch + 1)

    def reset_wait(self) -> float:
        """Return the seconds spent waiting for batches and start counting again."""
        seconds, self.wait_seconds = self.wait_seconds, 0.0
        return seconds
