"""Run the analyst notebooks headless against a small warehouse and check what they show.

Kernel choice: the test installs an ipykernel kernelspec into a temporary folder and starts
kernels only from that folder. The kernelspec's command is the absolute path of the interpreter
that runs pytest (`ipykernel.kernelspec.install` writes `sys.executable`), so the notebooks
import the packages of this virtual environment even when a user-level `python3` kernelspec
or another `python` on PATH exists. Nothing is written into the venv or the user's Jupyter dirs.

The warehouse is built by `analyst_warehouse` from hand-made frames with `deltalake`, so these
tests need no Spark. The expected values are read back from the warehouse, so a warehouse from
an end-to-end run can replace the fixture without changing the checks.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import ipykernel.kernelspec
import nbformat
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = ["interest_profiles.ipynb", "interest_profiles.zh-CN.ipynb"]
KERNEL_NAME = "behaviorgpt-notebook-test"
CELL_TIMEOUT_SECONDS = 300
MODEL_VERSION = "20260101T000000Z"

EVIDENCE_EVENT = pa.struct([("item_id", pa.string()), ("category_id", pa.string()),
                            ("event_type", pa.string()),
                            ("event_time", pa.timestamp("us", tz="UTC")),
                            ("attribution", pa.float64())])
PROFILES_SCHEMA = pa.schema([
    ("user_key", pa.string()),
    ("top_categories", pa.list_(pa.struct([("category_id", pa.string()),
                                           ("score", pa.float64())]))),
    ("top_items", pa.list_(pa.struct([("item_id", pa.string()), ("score", pa.float64())]))),
    ("purchase_propensity", pa.float64()),
    ("return_propensity", pa.float64()),
    ("evidence", pa.list_(pa.struct([("category_id", pa.string()), ("score", pa.float64()),
                                     ("events", pa.list_(EVIDENCE_EVENT))]))),
    ("embedding", pa.list_(pa.float32())),
    ("history_length", pa.int32()),
    ("last_event_time", pa.timestamp("us", tz="UTC")),
    ("model_version", pa.string()),
    ("run_date", pa.date32()),
])
INGEST_RUNS_SCHEMA = pa.schema([
    ("lines_read", pa.int64()),
    ("accepted", pa.int64()),
    ("quarantined", pa.int64()),
    ("duplicates", pa.int64()),
])
QUARANTINE_SCHEMA = pa.schema([("reason", pa.string())])
MODEL_METRICS_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("run_date", pa.date32()),
    ("model_version", pa.string()),
    ("task", pa.string()),
    ("metric", pa.string()),
    ("segment", pa.string()),
    ("k", pa.int32()),
    ("value", pa.float64()),
    ("is_baseline", pa.bool_()),
])


def _write_delta(frame: pd.DataFrame, schema: pa.Schema, path: Path) -> None:
    write_deltalake(str(path), pa.Table.from_pandas(frame, schema=schema, preserve_index=False))


def _profiles_frame() -> pd.DataFrame:
    # Seven users; category "c1" is the top-1 category of four of them.
    top1 = [("c1", 0.9), ("c1", 0.6), ("c1", 0.3), ("c1", 0.2), ("c2", 0.7), ("c2", 0.4),
            ("c3", 0.5)]
    rows = []
    for number, (category, score) in enumerate(top1):
        rest = (1.0 - score) / 2
        last_event_time = pd.Timestamp("2017-12-03 10:00", tz="UTC") + pd.Timedelta(minutes=number)
        # Every user cites two of their own events for the top category; user 6 has none
        # for its second category (no event raised it).
        cited = [{"item_id": f"i{number}", "category_id": category, "event_type": kind,
                  "event_time": last_event_time - pd.Timedelta(hours=hours),
                  "attribution": weight}
                 for kind, hours, weight in (("cart", 1, 0.8), ("view", 5, 0.3))]
        rows.append({
            "user_key": f"{number:064x}",
            "top_categories": [{"category_id": category, "score": score},
                               {"category_id": "c9", "score": rest}],
            "top_items": [{"item_id": f"i{number}", "score": score / 2},
                          {"item_id": "i99", "score": rest / 2}],
            "embedding": [0.1 * number, -0.2, 0.3, 0.0],
            "purchase_propensity": [0.05, 0.4, 0.1, 0.3, 0.02, 0.2, 0.15][number],
            "return_propensity": None,
            "evidence": [{"category_id": category, "score": score, "events": cited},
                         {"category_id": "c9", "score": rest,
                          "events": [] if number == 6 else cited[1:]}],
            "history_length": [3, 50, 12, 50, 7, 25, 41][number],
            "last_event_time": last_event_time,
            "model_version": MODEL_VERSION,
            "run_date": dt.date(2017, 12, 4),
        })
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def analyst_warehouse(tmp_path_factory) -> Path:
    """Build a warehouse root with the Delta tables, model files and planted interests."""
    root = tmp_path_factory.mktemp("analyst_warehouse")
    delta = root / "delta"

    _write_delta(_profiles_frame(), PROFILES_SCHEMA, delta / "user_interest_profiles")
    _write_delta(pd.DataFrame({"lines_read": [1000], "accepted": [990], "quarantined": [7],
                               "duplicates": [3]}),
                 INGEST_RUNS_SCHEMA, delta / "ingest_runs")
    metric_rows = [
        {"run_id": f"2017-12-0{day}-020000", "run_date": dt.date(2017, 12, day),
         "model_version": MODEL_VERSION, "task": "next_item", "metric": metric,
         "segment": segment, "k": 10, "value": value, "is_baseline": baseline}
        for day, metric, segment, value, baseline in (
            (3, "hr", "all", 0.40, False), (4, "hr", "all", 0.43, False),
            (3, "hr", "all", 0.29, True), (4, "hr", "all", 0.29, True),
            # Segment rows and counts stay out of the chart.
            (3, "hr", "new_user", 0.10, False), (3, "users", "all", 7.0, False))]
    _write_delta(pd.DataFrame(metric_rows), MODEL_METRICS_SCHEMA, delta / "model_metrics")
    reasons = ["malformed_row"] * 4 + ["missing_id"] * 2 + ["unknown_event_type"]
    _write_delta(pd.DataFrame({"reason": reasons}), QUARANTINE_SCHEMA, delta / "quarantine")

    # The generator's ground truth uses raw user ids, and the notebooks only report that it exists.
    generated = root / "generated"
    generated.mkdir()
    pd.DataFrame({"user_id": ["1001", "1001", "1002"], "category_id": ["c1", "c9", "c2"],
                  "rank": [1, 2, 1], "weight": [0.7, 0.3, 1.0]}).to_csv(
        generated / "planted_interests.csv", index=False)

    model_dir = root / "models" / MODEL_VERSION
    model_dir.mkdir(parents=True)
    (root / "models" / "LATEST").write_text(MODEL_VERSION + "\n", encoding="utf-8")
    metrics = {"model_version": MODEL_VERSION, "split": "test", "k": 10, "users": 7,
               "model": {"hr@10": 0.4286, "ndcg@10": 0.3125},
               "most_popular": {"hr@10": 0.1429, "ndcg@10": 0.0714},
               "recent_items": {"hr@10": 0.2857, "ndcg@10": 0.2},
               }
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def kernel_spec_manager(tmp_path_factory) -> KernelSpecManager:
    prefix = tmp_path_factory.mktemp("jupyter_prefix")
    ipykernel.kernelspec.install(kernel_name=KERNEL_NAME, prefix=str(prefix))
    return KernelSpecManager(kernel_dirs=[str(prefix / "share" / "jupyter" / "kernels")])


def _execute(name: str, root: Path, kernel_spec_manager: KernelSpecManager,
             monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> nbformat.NotebookNode:
    # The kernel inherits this process's environment when it starts.
    monkeypatch.setenv("BEHAVIORGPT_ROOT", str(root))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no user startup scripts

    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    manager = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=kernel_spec_manager)
    client = NotebookClient(notebook, km=manager, timeout=CELL_TIMEOUT_SECONDS,
                              resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    return notebook


def _text_outputs(notebook: nbformat.NotebookNode) -> str:
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output["output_type"] == "stream":
                texts.append(output["text"])
            elif "data" in output and "text/plain" in output["data"]:
                texts.append(output["data"]["text/plain"])
    return "\n".join(texts)


def _image_count(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {})
               for cell in notebook.cells for output in cell.get("outputs", []))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_warehouse(name, analyst_warehouse, kernel_spec_manager, monkeypatch,
                                    tmp_path):
    root = analyst_warehouse
    profiles = DeltaTable(str(root / "delta" / "user_interest_profiles")).to_pandas(
        columns=["model_version"])
    scoring_version = profiles["model_version"].iloc[0]
    latest_version = (root / "models" / "LATEST").read_text(encoding="utf-8").strip()
    runs = DeltaTable(str(root / "delta" / "ingest_runs")).to_pandas()
    planted_path = root / "generated" / "planted_interests.csv"
    profiles_full = DeltaTable(str(root / "delta" / "user_interest_profiles")).to_pandas()
    longest = profiles_full.sort_values(["history_length", "user_key"],
                                        ascending=[False, True]).iloc[0]
    cited_events = sum(len(entry["events"]) for entry in longest["evidence"])
    with_propensity = int(profiles_full["purchase_propensity"].notna().sum())
    metrics_path = root / "delta" / "model_metrics"

    notebook = _execute(name, root, kernel_spec_manager, monkeypatch, tmp_path)
    text = _text_outputs(notebook)

    assert f"warehouse root: {root.resolve()}" in text
    assert f"profiles: {len(profiles):,} users" in text
    assert f"models/LATEST: {latest_version}" in text
    assert "DuckDB and pandas counts agree: True" in text
    assert f"{len(runs)} of {len(runs)} ingest runs reconcile" in text
    assert "malformed_row" in text
    assert f"model {scoring_version}: leave-one-out" in text
    assert "hr@10" in text
    assert "recent_items" in text
    if planted_path.is_file():
        planted_users = pd.read_csv(planted_path, dtype={"user_id": str})["user_id"].nunique()
        assert f"planted interests for {planted_users:,} raw user ids" in text
    else:
        assert "not found: this run did not use the generated input" in text
    assert (f"evidence for {len(longest['evidence'])} categories of this user, "
            f"{cited_events} events cited") in text
    assert longest["evidence"][0]["events"][0]["item_id"] in text
    if with_propensity:
        assert f"purchase propensity for {with_propensity:,} users" in text
    else:
        assert "purchase_propensity is empty" in text
    if DeltaTable.is_deltatable(str(metrics_path)):
        model_rows = DeltaTable(str(metrics_path)).to_pandas().query(
            "not is_baseline and segment == 'all' and metric not in ('users', 'cutoffs')")
        nights = model_rows["run_date"].nunique()
        series = len(model_rows[["task", "metric", "k"]].drop_duplicates())
        assert f"model_metrics: {nights} nights, {series} task metrics" in text
    else:
        assert "model_metrics table not found" in text
    assert _image_count(notebook) == 3 + bool(with_propensity) + metrics_path.is_dir()


def test_notebook_fails_without_table(tmp_path, kernel_spec_manager, monkeypatch):
    # One language is enough: test_translations_share_code keeps the code cells identical.
    with pytest.raises(CellExecutionError, match="Delta table user_interest_profiles not found"):
        _execute(NOTEBOOKS[0], tmp_path / "missing", kernel_spec_manager, monkeypatch, tmp_path)


def test_translations_share_code():
    english, chinese = (nbformat.read(NOTEBOOK_DIR / name, as_version=4) for name in NOTEBOOKS)

    assert [cell.cell_type for cell in english.cells] == [cell.cell_type for cell in chinese.cells]
    assert ([cell.source for cell in english.cells if cell.cell_type == "code"]
            == [cell.source for cell in chinese.cells if cell.cell_type == "code"])


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_no_outputs(name):
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]

    assert all(cell.outputs == [] for cell in code_cells)
    assert all(cell.execution_count is None for cell in code_cells)
