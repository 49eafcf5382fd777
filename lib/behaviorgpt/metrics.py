"""Metric arithmetic of the evaluation job: ranking sums, AUC, mAP, recall, log loss, ECE.

Everything here works on numpy arrays and plain Python numbers, so the same code serves one
process and the distributed evaluation, whose ranks add up the same sums shard by shard.
Sums are float64 and counts are ints. This module imports neither torch nor pyspark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from behaviorgpt.tokens import NUM_RESERVED_IDS


def target_ranks(ranked_ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Return each row's 0-based rank of its target in `ranked_ids` `[users, width]`, or -1.

    A target that is not in the list, or that is a reserved id (padding, the unknown item),
    gets -1, so it counts as a miss at every cutoff.
    """
    matches = (ranked_ids == targets[:, None]) & (targets[:, None] >= NUM_RESERVED_IDS)
    found = matches.any(axis=1)
    return np.where(found, matches.argmax(axis=1), -1).astype(np.int64)


@dataclass
class RankSums:
    """Hit, NDCG and reciprocal-rank sums of one method over users, at several cutoffs.

    With one relevant item per user, NDCG@k is 1 / log2(rank + 2) when the 0-based rank is
    below k (else 0), and MRR@k is 1 / (rank + 1) under the same condition. Reciprocal ranks
    are cut at k because the baselines only rank a short list, not the whole catalogue.
    """

    ks: tuple[int, ...]
    users: int = 0
    hits: dict[int, int] = field(default_factory=dict)
    ndcg: dict[int, float] = field(default_factory=dict)
    reciprocal_rank: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for k in self.ks:
            self.hits.setdefault(k, 0)
            self.ndcg.setdefault(k, 0.0)
            self.reciprocal_rank.setdefault(k, 0.0)

    def add(self, ranks: np.ndarray) -> None:
        """Add users given their target ranks (`target_ranks`; -1 is a miss)."""
        self.users += len(ranks)
        for k in self.ks:
            found = ranks[(ranks >= 0) & (ranks < k)].astype(np.float64)
            self.hits[k] += len(found)
            self.ndcg[k] += float(np.sum(1.0 / np.log2(found + 2.0)))
            self.reciprocal_rank[k] += float(np.sum(1.0 / (found + 1.0)))

    def merge(self, other: "RankSums") -> None:
        self.users += other.users
        for k in self.ks:
            self.hits[k] += other.hits[k]
            self.ndcg[k] += other.ndcg[k]
            self.reciprocal_rank[k] += other.reciprocal_rank[k]

    def as_dict(self) -> dict[str, float]:
        """Return `hr@k`, `ndcg@k` and `mrr@k` means over users (NaN when there is none)."""
        users = self.users if self.users else float("nan")
        result = {}
        for k in self.ks:
            result[f"hr@{k}"] = self.hits[k] / users
            result[f"ndcg@{k}"] = self.ndcg[k] / users
            result[f"mrr@{k}"] = self.reciprocal_rank[k] / users
        return result


def binary_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Return the ROC AUC of `scores` for binary `labels` (ties count half), or NaN when one
    class is absent. Computed as the Mann-Whitney statistic from average ranks."""
    labels = np.asarray(labels).astype(bool)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average rank (1-based) over each run of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0)
                 / (positives * negatives))


def average_precisions(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return the average precision of each row `[rows, classes]` that has a positive label.

    Rows without a positive are left out. Ties are broken by column order.
    """
    precisions = []
    for row_scores, row_labels in zip(scores, labels.astype(bool)):
        if not row_labels.any():
            continue
        hits = row_labels[np.argsort(-row_scores, kind="stable")]
        hit_ranks = np.flatnonzero(hits) + 1
        precisions.append(np.mean(np.arange(1, len(hit_ranks) + 1) / hit_ranks))
    return np.asarray(precisions, dtype=np.float64)


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Return the mean over rows `[rows, classes]` of average precision, skipping rows without
    a positive label; NaN when no row has one. Ties are broken by column order."""
    precisions = average_precisions(scores, labels)
    return float(np.mean(precisions)) if len(precisions) else float("nan")


def recall_at_k(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Return, for each row with a positive label, the share of its positives in its top `k`.

    Ties are broken by column order, as in `average_precisions`.
    """
    labels = labels.astype(bool)
    has_positive = labels.any(axis=1)
    order = np.argsort(-scores[has_positive], axis=1, kind="stable")[:, :k]
    found = np.take_along_axis(labels[has_positive], order, axis=1).sum(axis=1)
    return found / labels[has_positive].sum(axis=1)


def log_loss_sum(logits: np.ndarray, labels: np.ndarray) -> float:
    """Return the summed binary cross-entropy of sigmoid(`logits`), in nats, computed in float64.

    Working from logits keeps a confident wrong prediction finite (no log of 0).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    return float(np.sum(np.logaddexp(0.0, logits) - labels * logits))


@dataclass
class Calibration:
    """Per-bin counts of predicted probabilities, for a reliability table and its ECE.

    Bins split [0, 1] into `bins` equal widths; a probability of exactly 1 falls in the last.
    """

    bins: int
    count: np.ndarray = None
    predicted_sum: np.ndarray = None
    positive_sum: np.ndarray = None

    def __post_init__(self) -> None:
        if self.count is None:
            self.count = np.zeros(self.bins, dtype=np.int64)
            self.predicted_sum = np.zeros(self.bins, dtype=np.float64)
            self.positive_sum = np.zeros(self.bins, dtype=np.int64)

    def add(self, probabilities: np.ndarray, labels: np.ndarray) -> None:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        index = np.minimum((probabilities * self.bins).astype(np.int64), self.bins - 1)
        self.count += np.bincount(index, minlength=self.bins)
        self.predicted_sum += np.bincount(index, weights=probabilities, minlength=self.bins)
        self.positive_sum += np.bincount(index, weights=np.asarray(labels) > 0.5,
                                         minlength=self.bins).astype(np.int64)

    def table(self) -> list[dict]:
        """Return one row per non-empty bin: edges, count, mean predicted and observed rate."""
        rows = []
        for index in np.flatnonzero(self.count):
            count = int(self.count[index])
            rows.append({"lower": index / self.bins, "upper": (index + 1) / self.bins,
                         "count": count,
                         "mean_predicted": float(self.predicted_sum[index] / count),
                         "observed_rate": float(self.positive_sum[index] / count)})
        return rows

    def expected_calibration_error(self) -> float:
        """Return the count-weighted mean gap between mean prediction and observed rate."""
        total = int(self.count.sum())
        if total == 0:
            return float("nan")
        return float(sum(row["count"] * abs(row["mean_predicted"] - row["observed_rate"])
                         for row in self.table()) / total)


def binary_head_metrics(logits: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                        bins: int) -> dict:
    """Return AUC, mean log loss, ECE and the calibration table of one binary head.

    `logits` and `labels` are lists of per-shard arrays, concatenated in the given order, so
    that every process that merges the same shards gets bit-identical sums.
    """
    logits = np.concatenate(logits) if len(logits) else np.zeros(0)
    labels = np.concatenate(labels) if len(labels) else np.zeros(0)
    probabilities = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    calibration = Calibration(bins)
    calibration.add(probabilities, labels)
    return {
        "auc": binary_auc(probabilities, labels),
        "log_loss": log_loss_sum(logits, labels) / len(labels) if len(labels) else float("nan"),
        "ece": calibration.expected_calibration_error(),
        "cutoffs": int(len(labels)),
        "positive_rate": float(np.mean(labels)) if len(labels) else float("nan"),
        "calibration": calibration.table(),
    }
