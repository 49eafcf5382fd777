"""Leave-one-out evaluation of the model against baselines, ranked by the same code.

Every user with at least two events contributes its last event (the test target), predicted
from all events before it. Each method ranks ALL real items of the vocabulary (no sampled
negatives); the ranking metrics are HR@k, NDCG@k and MRR@k for k in `KS` (see
`metrics.RankSums`). The methods are the model, the non-learned baselines of
`behaviorgpt.baselines` (most popular, recent items, co-occurrence) and, when given, a second
model trained on next_item alone (the single-task baseline). A target outside the vocabulary
(the unknown-item id) counts as a miss for every method.

The model's other heads are scored at one cutoff per user (see `losses.window_labels`):
purchase and return by AUC, log loss and a calibration table with its expected calibration
error (ECE), category interest by mAP and recall@k.

Breakdowns ("segments") of the ranking metrics:

- `all`: every evaluated user;
- `history_1_4`, `history_5_19`, `history_20_plus`: by the number of input events before
  the target (after truncation to the model's max_len);
- `returning_user` / `new_user`: a user is returning when the session of the test target is
  not the user's first session in the sequences, that is when the user had events in an
  earlier session (a session that started before the target's session). Otherwise every
  input event lies in the target's own session and the user is new. Sessions are those of the
  `session_start` stream that the sessionize stage wrote.

With `exclude_seen`, every method drops the user's input items from its ranking. A target
that is itself in the history can then not be ranked and counts as a miss, so the option
measures the discovery of new items. It is off by default because re-engaging with items
already seen is a large share of next events in e-commerce logs (on the Taobao slice the
recent-items list alone finds 20% of test targets in its top 10), and the copy head exists to
predict them. MovieLens users rate each movie once, so there the two settings agree on the
targets and the option only removes impossible candidates.

Distributed evaluation: shard i belongs to rank i % world_size (as in training). Each rank
scores its own users shard by shard; the per-shard sums and score arrays are gathered and
merged in shard order, so every world size gives bit-identical totals.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from behaviorgpt.baselines import (CooccurrenceTable, cooccurrence_lists, count_training_items,
                                   drop_seen, most_popular_items, recent_distinct_items)
from behaviorgpt.config import EvaluateConfig, load_config
from behaviorgpt.data import (EventSequences, eligible_rows, iter_shard_sequences, make_batch,
                              read_manifest)
from behaviorgpt.inference import LoadedModel, load_model, top_real_ids
from behaviorgpt.layout import Layout
from behaviorgpt.losses import window_labels
from behaviorgpt.metrics import (RankSums, average_precisions, binary_auc, binary_head_metrics,
                                 mean_average_precision, recall_at_k, target_ranks)
from behaviorgpt.model import BehaviorGPT
from behaviorgpt.tokens import NUM_RESERVED_IDS, PAD_ID

__all__ = ["RankingTotals", "binary_auc", "count_training_items", "evaluate_leave_one_out",
           "mean_average_precision", "metric_rows", "model_top_items", "most_popular_items",
           "recent_distinct_items", "window_task_metrics"]

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"

KS = (10, 50)
"""Cutoffs of the ranking metrics and of the category-interest recall."""

MODEL = "model"
SINGLE_TASK = "single_task"
NON_LEARNED_BASELINES = ("most_popular", "recent_items", "cooccurrence")

ALL_USERS = "all"
HISTORY_BUCKETS = ((1, 4, "history_1_4"), (5, 19, "history_5_19"),
                   (20, None, "history_20_plus"))
"""(first, last, segment name) of the history-length buckets, in input events."""
NEW_USER = "new_user"
RETURNING_USER = "returning_user"


@dataclass
class RankingTotals:
    """Running sums of hits and NDCG gains over users, for one method."""

    hits: float = 0.0
    ndcg: float = 0.0
    users: int = 0

    def add(self, top_ids: np.ndarray, targets: np.ndarray) -> None:
        """Add users with ranked lists `[users, k]` (`PAD_ID` fills short lists) and targets."""
        matches = (top_ids == targets[:, None]) & (targets[:, None] >= NUM_RESERVED_IDS)
        hit_rows, hit_ranks = np.nonzero(matches)
        self.hits += float(len(hit_rows))
        self.ndcg += float(np.sum(1.0 / np.log2(hit_ranks + 2.0)))
        self.users += len(targets)

    def merge(self, other: "RankingTotals") -> None:
        self.hits += other.hits
        self.ndcg += other.ndcg
        self.users += other.users

    def as_dict(self, k: int) -> dict[str, float]:
        users = max(self.users, 1)
        return {f"hr@{k}": self.hits / users, f"ndcg@{k}": self.ndcg / users}


def model_top_items(model: BehaviorGPT, sequences: EventSequences, view: str, k: int,
                    batch_size: int, device: torch.device | str = "cpu"
                    ) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Yield (top ids `[users, k]`, target ids `[users]`) of a validation or test view."""
    rows = eligible_rows(sequences, view)
    k = min(k, model.config.num_items - NUM_RESERVED_IDS)
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = make_batch(sequences, rows[start:start + batch_size], view).to(device)
            prediction = model.predict_next_event(batch, batch.last_positions)
            _, top_ids = top_real_ids(prediction.item_probabilities, k)
            yield top_ids, batch.target_item.cpu().numpy()


def window_task_metrics(model: BehaviorGPT, sequences: EventSequences, view: str,
                        window_events: int, return_days: float, batch_size: int,
                        device: torch.device | str = "cpu") -> dict[str, float]:
    """Score the next-window heads on one cutoff per user of a view (see `window_labels`).

    Returns AUC of the purchase and return heads, mAP of the category interest head over the
    real categories, and the number of cutoffs.
    """
    rows = eligible_rows(sequences, view)
    purchase_scores, purchase_labels, return_scores, return_labels = [], [], [], []
    interest_scores, interest_labels = [], []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = make_batch(sequences, rows[start:start + batch_size], view).to(device)
            labels = window_labels(batch, model.config.num_categories, window_events,
                                   return_days, all_cutoffs=False)
            states = model(batch)[labels.rows, labels.positions]
            purchase_scores.append(model.purchase_head(states).squeeze(-1).cpu().numpy())
            return_scores.append(model.return_head(states).squeeze(-1).cpu().numpy())
            interest_scores.append(
                model.interest_head(states)[:, NUM_RESERVED_IDS:].cpu().numpy())
            purchase_labels.append(labels.purchase.cpu().numpy())
            return_labels.append(labels.returned.cpu().numpy())
            interest_labels.append(labels.category_interest[:, NUM_RESERVED_IDS:].cpu().numpy())
    if not purchase_scores:
        return {"purchase_auc": float("nan"), "return_auc": float("nan"),
                "category_interest_map": float("nan"), "cutoffs": 0}
    return {
        "purchase_auc": binary_auc(np.concatenate(purchase_scores),
                                   np.concatenate(purchase_labels)),
        "return_auc": binary_auc(np.concatenate(return_scores), np.concatenate(return_labels)),
        "category_interest_map": mean_average_precision(np.concatenate(interest_scores),
                                                        np.concatenate(interest_labels)),
        "cutoffs": int(sum(len(labels) for labels in purchase_labels)),
    }


@dataclass
class ShardResult:
    """Contribution of one shard: ranking sums per method and segment, and head scores."""

    ranking: dict[str, dict[str, RankSums]] = field(default_factory=dict)
    purchase_logits: list[np.ndarray] = field(default_factory=list)
    purchase_labels: list[np.ndarray] = field(default_factory=list)
    return_logits: list[np.ndarray] = field(default_factory=list)
    return_labels: list[np.ndarray] = field(default_factory=list)
    interest_precisions: list[np.ndarray] = field(default_factory=list)
    interest_recalls: dict[int, list[np.ndarray]] = field(default_factory=dict)

    def add_ranks(self, method: str, segments: dict[str, np.ndarray], ranks: np.ndarray,
                  ks: tuple[int, ...]) -> None:
        by_segment = self.ranking.setdefault(method, {})
        for segment, members in segments.items():
            by_segment.setdefault(segment, RankSums(ks)).add(ranks[members])

    def merge(self, other: "ShardResult") -> None:
        for method, by_segment in other.ranking.items():
            mine = self.ranking.setdefault(method, {})
            for segment, sums in by_segment.items():
                if segment in mine:
                    mine[segment].merge(sums)
                else:
                    mine[segment] = RankSums(sums.ks)
                    mine[segment].merge(sums)
        for name in ("purchase_logits", "purchase_labels", "return_logits", "return_labels",
                     "interest_precisions"):
            getattr(self, name).extend(getattr(other, name))
        for k, recalls in other.interest_recalls.items():
            self.interest_recalls.setdefault(k, []).extend(recalls)


def user_segments(sequences: EventSequences, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Return segment name -> boolean mask over `rows` (users of the test view)."""
    num_inputs = sequences.lengths[rows] - 1
    segments = {ALL_USERS: np.ones(len(rows), dtype=bool)}
    for first, last, name in HISTORY_BUCKETS:
        upper = num_inputs <= last if last is not None else True
        segments[name] = (num_inputs >= first) & upper

    # The target's session begins at the last session start at or before the target.
    starts = sequences.streams["session_start"][rows] == 1
    positions = np.arange(starts.shape[1])
    in_range = positions[None, :] <= num_inputs[:, None]
    target_session_begins = np.where(starts & in_range, positions[None, :], 0).max(axis=1)
    segments[RETURNING_USER] = target_session_begins > 0
    segments[NEW_USER] = ~segments[RETURNING_USER]
    return segments


def model_ranked_lists(model: BehaviorGPT, sequences: EventSequences, rows: np.ndarray,
                       width: int, batch_size: int, exclude_seen: bool) -> np.ndarray:
    """Return the model's `[users, width]` best real item ids for the test view of `rows`."""
    width = min(width, model.config.num_items - NUM_RESERVED_IDS)
    lists = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = make_batch(sequences, rows[start:start + batch_size], "test")
            probabilities = model.predict_next_event(batch, batch.last_positions) \
                .item_probabilities
            if exclude_seen:
                # Seen items sink below every unseen one; `drop_seen` then removes them.
                # Padding positions hold PAD_ID, a reserved id that never competes anyway.
                probabilities = probabilities.scatter(1, batch.item, -1.0)
            lists.append(top_real_ids(probabilities, width)[1])
    return np.concatenate(lists)


def head_scores(model: BehaviorGPT, sequences: EventSequences, rows: np.ndarray,
                settings: EvaluateConfig, window_events: int, return_days: float,
                result: ShardResult) -> None:
    """Add the purchase, return and category-interest scores of `rows` to `result`."""
    with torch.inference_mode():
        for start in range(0, len(rows), settings.batch_size):
            batch = make_batch(sequences, rows[start:start + settings.batch_size], "test")
            labels = window_labels(batch, model.config.num_categories, window_events,
                                   return_days, all_cutoffs=False)
            if len(labels.rows) == 0:
                continue
            states = model(batch)[labels.rows, labels.positions]
            result.purchase_logits.append(
                model.purchase_head(states).squeeze(-1).double().numpy())
            result.purchase_labels.append(labels.purchase.double().numpy())
            result.return_logits.append(model.return_head(states).squeeze(-1).double().numpy())
            result.return_labels.append(labels.returned.double().numpy())

            interest = model.interest_head(states)[:, NUM_RESERVED_IDS:].float().numpy()
            engaged = labels.category_interest[:, NUM_RESERVED_IDS:].numpy() > 0.5
            result.interest_precisions.append(average_precisions(interest, engaged))
            for k in KS:
                result.interest_recalls.setdefault(k, []).append(
                    recall_at_k(interest, engaged, k))


def evaluate_shard(models: dict[str, LoadedModel], chunks: Iterable[EventSequences],
                   popular: np.ndarray, cooccurrence: CooccurrenceTable | None,
                   settings: EvaluateConfig, window_events: int,
                   return_days: float) -> ShardResult:
    """Rank the test targets of one shard with every method and score the model's heads."""
    result = ShardResult()
    width = max(KS)
    for sequences in chunks:
        rows = eligible_rows(sequences, "test")
        if len(rows) == 0:
            continue
        num_inputs = sequences.lengths[rows] - 1
        items = sequences.streams["item"][rows]
        targets = items[np.arange(len(rows)), num_inputs].astype(np.int64)
        histories = np.where(np.arange(items.shape[1]) < num_inputs[:, None], items, PAD_ID)
        segments = user_segments(sequences, rows)

        def add(method: str, lists: np.ndarray) -> None:
            if settings.exclude_seen:
                lists = drop_seen(lists, histories, width)
            result.add_ranks(method, segments, target_ranks(lists, targets), KS)

        # With exclude_seen a list may lose up to a history's worth of items: rank extra ones.
        extra = items.shape[1] if settings.exclude_seen else 0
        for name, loaded in models.items():
            add(name, model_ranked_lists(loaded.model, sequences, rows, width + extra,
                                         settings.batch_size, settings.exclude_seen))
        add("most_popular", np.tile(popular[:width + extra], (len(rows), 1)))
        add("recent_items", np.stack([recent_distinct_items(items[row], int(num_inputs[row]),
                                                            width)
                                      for row in range(len(rows))]))
        if cooccurrence is not None:
            last_items = items[np.arange(len(rows)), num_inputs - 1]
            add("cooccurrence", cooccurrence_lists(cooccurrence, last_items, popular,
                                                   width + extra))

        head_scores(models[MODEL].model, sequences, rows, settings, window_events,
                    return_days, result)
    return result


def summarize(result: ShardResult, loaded: LoadedModel, settings: EvaluateConfig,
              single_task: LoadedModel | None) -> dict:
    """Turn merged shard results into the `metrics.json` mapping."""
    methods = list(result.ranking)
    overall = {method: result.ranking[method][ALL_USERS] for method in methods}
    metrics = {
        "model_version": loaded.model_version,
        "split": "test",
        "ks": list(KS),
        "exclude_seen": settings.exclude_seen,
        "users": overall[MODEL].users if MODEL in overall else 0,
        "baselines": [method for method in methods if method != MODEL],
    }
    if single_task is not None:
        metrics["single_task_model_version"] = single_task.model_version
    for method in methods:
        metrics[method] = overall[method].as_dict()
    metrics["segments"] = {
        method: {segment: {"users": sums.users, **sums.as_dict()}
                 for segment, sums in result.ranking[method].items()}
        for method in methods}

    precisions = np.concatenate(result.interest_precisions) if result.interest_precisions \
        else np.zeros(0)
    interest = {"map": float(np.mean(precisions)) if len(precisions) else float("nan"),
                "cutoffs": int(len(precisions))}
    for k in KS:
        recalls = np.concatenate(result.interest_recalls.get(k, [np.zeros(0)]))
        interest[f"recall@{k}"] = float(np.mean(recalls)) if len(recalls) else float("nan")
    metrics["heads"] = {
        "purchase": binary_head_metrics(result.purchase_logits, result.purchase_labels,
                                        settings.calibration_bins),
        "return": binary_head_metrics(result.return_logits, result.return_labels,
                                      settings.calibration_bins),
        "category_interest": interest,
    }
    return _nan_to_none(metrics)


def _nan_to_none(value):
    """Replace NaN (a metric without data, such as AUC with one class) by None: JSON null."""
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def evaluate_leave_one_out(model_dir: str | Path, sequences_dir: str | Path, *,
                           settings: EvaluateConfig | None = None,
                           cooccurrence_path: str | Path | None = None,
                           single_task_dir: str | Path | None = None,
                           window_events: int = 5, return_days: float = 1.0,
                           rank: int = 0, world_size: int = 1) -> dict:
    """Score the model and the baselines on the test events; write and return `metrics.json`.

    Args:
        settings: the `evaluate` config section (default: its defaults).
        cooccurrence_path: Parquet of `behaviorgpt.cooccurrence`; without it the
            co-occurrence baseline is left out.
        single_task_dir: folder of the model trained on next_item alone, scored as the
            `single_task` baseline; None leaves it out.
        window_events, return_days: `train.window_events` and `train.return_days`, which
            define the labels of the purchase, return and category-interest heads.
        rank, world_size: this process's place in an initialised process group (the
            defaults mean one process). Every rank returns the same metrics; rank 0 writes
            the file.

    Shards are streamed in chunks, so memory stays bounded by one chunk of users.
    """
    settings = settings or EvaluateConfig()
    loaded = load_model(model_dir)
    models = {MODEL: loaded}
    single_task = load_model(single_task_dir) if single_task_dir else None
    if single_task is not None:
        if single_task.config.num_items != loaded.config.num_items:
            raise ValueError(f"single-task model {single_task_dir} has "
                             f"{single_task.config.num_items} item ids, the model "
                             f"{loaded.config.num_items}: train both on the same sequences")
        models[SINGLE_TASK] = single_task
    manifest = read_manifest(sequences_dir)
    paths = [Path(sequences_dir) / name for name in manifest.shard_files]
    mine = [index for index in range(len(paths)) if index % world_size == rank]
    max_len = loaded.config.max_len

    # Popularity over every shard's training positions: integer counts, exact in any order.
    counts = count_training_items(iter_shard_sequences([paths[i] for i in mine], max_len),
                                  loaded.config.num_items)
    if world_size > 1:
        summed = torch.from_numpy(counts)
        dist.all_reduce(summed)
        counts = summed.numpy()
    popular = most_popular_items(counts, max(KS) + max_len)
    cooccurrence = CooccurrenceTable.read(cooccurrence_path) if cooccurrence_path else None

    shard_results = [(index, evaluate_shard(models, iter_shard_sequences([paths[index]],
                                                                         max_len),
                                            popular, cooccurrence, settings, window_events,
                                            return_days))
                     for index in mine]
    if world_size > 1:
        gathered = [None] * world_size
        dist.all_gather_object(gathered, shard_results)
        shard_results = [item for part in gathered for item in part]

    merged = ShardResult()
    for _, result in sorted(shard_results, key=lambda item: item[0]):
        merged.merge(result)
    metrics = summarize(merged, loaded, settings, single_task)
    if rank == 0:
        (Path(model_dir) / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n",
                                                    encoding="utf-8")
    return metrics


def metric_rows(metrics: dict) -> list[dict]:
    """Flatten `metrics.json` into the long rows of the `model_metrics` table.

    Each row has model_version, task, metric, segment, k (None where no cutoff applies),
    value, is_baseline and baseline (the baseline's name, None for the model).
    """
    version = metrics["model_version"]
    rows = []

    def row(task, metric, segment, k, value, baseline=None):
        rows.append({"model_version": version, "task": task, "metric": metric,
                     "segment": segment, "k": k,
                     "value": None if value is None or np.isnan(value) else float(value),
                     "is_baseline": baseline is not None, "baseline": baseline})

    for method, by_segment in metrics["segments"].items():
        baseline = None if method == MODEL else method
        for segment, values in by_segment.items():
            row("next_item", "users", segment, None, values["users"], baseline)
            for k in metrics["ks"]:
                for metric in ("hr", "ndcg", "mrr"):
                    row("next_item", metric, segment, k, values[f"{metric}@{k}"], baseline)

    for task in ("purchase", "return"):
        head = metrics["heads"][task]
        for metric in ("auc", "log_loss", "ece", "positive_rate", "cutoffs"):
            row(task, metric, ALL_USERS, None, head[metric])
        for bin_row in head["calibration"]:
            segment = f"bin_{bin_row['lower']:.2f}_{bin_row['upper']:.2f}"
            row(task, "calibration_count", segment, None, bin_row["count"])
            row(task, "calibration_mean_predicted", segment, None, bin_row["mean_predicted"])
            row(task, "calibration_observed_rate", segment, None, bin_row["observed_rate"])

    interest = metrics["heads"]["category_interest"]
    row("category_interest", "map", ALL_USERS, None, interest["map"])
    row("category_interest", "cutoffs", ALL_USERS, None, interest["cutoffs"])
    for k in metrics["ks"]:
        row("category_interest", "recall", ALL_USERS, k, interest[f"recall@{k}"])
    return rows


def main(argv: list[str] | None = None) -> dict:
    """Evaluate the latest (or a named) model on the configured sequences and print metrics.

    Under torchrun each rank evaluates its own shards (gloo on CPU) and rank 0 prints.
    """
    parser = argparse.ArgumentParser(prog="python -m behaviorgpt.evaluate",
                                     description=main.__doc__)
    parser.add_argument("--profile", default="local", help="config profile under --conf")
    parser.add_argument("--conf", default=None, help="config folder (default: the repo's conf/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, for example evaluate.exclude_seen=true")
    parser.add_argument("--model-version", default=None,
                        help="model version to evaluate (default: the one named in CANDIDATE, "
                             "else LATEST)")
    parser.add_argument("--model-dir", default=None, help="model folder (wins over "
                        "--model-version)")
    parser.add_argument("--single-task-dir", default=None,
                        help="folder of the next_item-only model to score as a baseline")
    args = parser.parse_args(argv)

    cfg = load_config(args.profile, args.set, args.conf)
    torch.set_num_threads(cfg.evaluate.num_threads)
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(message)s")
    if world_size > 1:
        dist.init_process_group("gloo",
                                timeout=timedelta(minutes=cfg.train.dist_timeout_minutes))
    try:
        layout = Layout.from_root(cfg.paths.root)
        if args.model_dir:
            model_dir = Path(args.model_dir)
        elif args.model_version:
            model_dir = layout.model_dir(args.model_version)
        elif layout.pointed_version(layout.candidate_model_file):
            model_dir = layout.candidate_model_dir()
        else:
            model_dir = layout.latest_model_dir()
        cooccurrence = layout.cooccurrence_dir if layout.cooccurrence_dir.is_dir() else None

        log.info("evaluating %s on %s (%d process(es))", model_dir, layout.sequences_dir,
                 world_size)
        metrics = evaluate_leave_one_out(
            model_dir, layout.sequences_dir, settings=cfg.evaluate,
            cooccurrence_path=cooccurrence, single_task_dir=args.single_task_dir,
            window_events=cfg.train.window_events, return_days=cfg.train.return_days,
            rank=rank, world_size=world_size)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(json.dumps({key: metrics[key] for key in ("model_version", "users", MODEL,
                                                       *metrics["baselines"])}, indent=2))
    return metrics


if __name__ == "__main__":
    main()
