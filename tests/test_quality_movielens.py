"""Model quality on MovieLens-100K: the trained model must beat every non-learned baseline.

The run goes through the CLI (ingest with the MovieLens preset, sessionize, sequences, train,
evaluate) on `movielens_100k/u.data` under BEHAVIORGPT_DATA_DIR, with the settings of
`MOVIELENS_SETTINGS`; scoring is skipped. Each user rates a movie once, so the evaluation excludes seen items.
"""

from __future__ import annotations

import json

import pytest

from behaviorgpt.cli import main
from behaviorgpt.layout import Layout
from conftest import real_data_file

MOVIELENS_SETTINGS = [
    "ingest.format=movielens",
    # Ratings are from 1997 and 1998, before the default plausibility floor of 2000-01-01.
    "ingest.earliest_date=1995-01-01",
    "evaluate.exclude_seen=true",
]
"""Everything else is the default config (8 epochs). With 3 epochs the model only tied the
co-occurrence baseline (NDCG@10 0.0621 both)."""

MARGIN = 0.01
"""Measured with these settings: model NDCG@10 0.0875, co-occurrence 0.0621, most popular
0.0328, recent items 0.0; the margin is below half the smallest gap."""


@pytest.fixture(scope="module")
def movielens_run(spark, tmp_path_factory):
    folder = real_data_file("movielens_100k/u.data").parent
    root = tmp_path_factory.mktemp("movielens")
    arguments = ["--root", str(root), "--date", "2017-12-04", "--input", str(folder)]
    for setting in MOVIELENS_SETTINGS:
        arguments += ["--set", setting]
    for stage in ("ingest", "sessionize", "sequences", "train", "evaluate"):
        assert main([stage, *arguments]) == 0
    return Layout.from_root(root)


@pytest.mark.slow
def test_movielens_model_beats_baselines(movielens_run):
    metrics = json.loads((movielens_run.candidate_model_dir() / "metrics.json").read_text())

    assert metrics["users"] == 943
    assert metrics["exclude_seen"] is True
    # Seen movies are excluded and never a target, so the recent-items list cannot hit.
    assert metrics["recent_items"]["hr@50"] == 0.0
    for baseline in ("most_popular", "recent_items", "cooccurrence"):
        assert metrics["model"]["ndcg@10"] > metrics[baseline]["ndcg@10"] + MARGIN, baseline
