"""The quality gate: promote the newly trained model to serving, or keep the previous one.

Training points `models/CANDIDATE` at the new model; evaluation writes its `metrics.json`. The
gate compares the candidate's next-item NDCG@10 with that of the serving model (`models/LATEST`)
and moves `LATEST` to the candidate unless the score dropped by more than
`quality_gate.max_ndcg_drop`. Scoring only ever reads `LATEST`, so a rejected model never
reaches the profiles; it maps tonight's token ids into a kept model's older vocabulary
(`behaviorgpt.vocab_alignment`). The decision is saved as `gate.json` in the candidate's folder, which
makes a rerun (an Airflow retry) repeat it instead of comparing the candidate with itself.

NOTE: each model's metrics.json was measured on the test events of its own night, so the two
scores come from overlapping but different users. A vocabulary change between nights keeps the
previous model from being re-scored on tonight's sequences; the margin absorbs the noise.

This module imports neither pyspark nor torch.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

from behaviorgpt.config import QualityGateConfig
from behaviorgpt.layout import Layout

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
DECISION_FILE = "gate.json"
METRIC = "ndcg@10"
"""Key of the model's score in `metrics.json` (`{"model": {"ndcg@10": ...}}`)."""

PROMOTED = "promoted"
REJECTED = "rejected"
FIRST_MODEL = "first_model"
NO_PREVIOUS_METRICS = "no_previous_metrics"
DISABLED = "disabled"


def model_score(model_dir: Path) -> float:
    """Next-item NDCG@10 of a model folder, from its `metrics.json`."""
    path = model_dir / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: evaluate the model first "
                                f"(`behaviorgpt evaluate`)")
    metrics = json.loads(path.read_text(encoding="utf-8"))
    try:
        return float(metrics["model"][METRIC])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path} has no numeric model.{METRIC}; re-run `behaviorgpt evaluate`") \
            from None


def decide(candidate: float, previous: float, max_drop: float) -> str:
    """`rejected` when the candidate scores more than `max_drop` below the previous model."""
    return REJECTED if previous - candidate > max_drop else PROMOTED


def run_gate(layout: Layout, settings: QualityGateConfig) -> dict:
    """Judge the candidate model, move `LATEST` when it passes, and return the decision.

    The result has `decision`, `candidate`, `previous` (the serving version before the gate),
    both scores and the margin. Raises FileNotFoundError when there is no candidate or the
    candidate has no metrics.
    """
    candidate_dir = layout.candidate_model_dir()
    candidate = candidate_dir.name
    saved = candidate_dir / DECISION_FILE
    if saved.is_file():
        decision = json.loads(saved.read_text(encoding="utf-8"))
        log.info("quality gate already judged %s: %s (repeating it)", candidate,
                 decision["decision"])
        _apply(layout, decision)
        return decision

    candidate_score = model_score(candidate_dir)
    previous = layout.pointed_version(layout.latest_model_file)
    previous_score = None
    if previous is not None and (layout.model_dir(previous) / METRICS_FILE).is_file():
        previous_score = model_score(layout.model_dir(previous))

    if not settings.enabled:
        outcome = DISABLED
    elif previous is None:
        outcome = FIRST_MODEL
    elif previous_score is None:
        # An old model from before metrics were written: nothing to compare with, and keeping
        # it forever would freeze the pipeline.
        outcome = NO_PREVIOUS_METRICS
    else:
        outcome = decide(candidate_score, previous_score, settings.max_ndcg_drop)

    decision = {
        "decision": outcome,
        "candidate": candidate,
        "previous": previous,
        "metric": f"model.{METRIC}",
        "candidate_score": candidate_score,
        "previous_score": previous_score,
        "max_ndcg_drop": settings.max_ndcg_drop,
        "decided_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    saved.write_text(json.dumps(decision, indent=2) + "\n", encoding="utf-8")
    _apply(layout, decision)

    if outcome == REJECTED:
        log.warning("quality gate REJECTED model %s: %s %.4f is %.4f below %s's %.4f (allowed "
                    "drop %.4f); scoring keeps %s", candidate, METRIC, candidate_score,
                    previous_score - candidate_score, previous, previous_score,
                    settings.max_ndcg_drop, previous)
    else:
        log.info("quality gate: %s model %s (%s %.4f, previous %s)", outcome, candidate, METRIC,
                 candidate_score, previous_score)
    return decision


def _apply(layout: Layout, decision: dict) -> None:
    """Point `LATEST` at the candidate unless the decision rejected it."""
    if decision["decision"] != REJECTED:
        layout.point(layout.latest_model_file, decision["candidate"])
