"""Rank 0's training metrics: progress lines, `metrics.jsonl`, TensorBoard events, tqdm bar.

Every record goes to three places: a JSON line in `metrics.jsonl` (the file operators and
scripts read), a TensorBoard scalar under `train/` (per step) or `epoch/` (per epoch), and
for steps a progress line in the log. The other ranks build a `MetricsWriter` with
`enabled=False`, which does nothing, so the training loop needs no rank checks.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
"""JSON lines file of the model folder: one record per logged step and per epoch."""

TENSORBOARD_DIR = "tensorboard"
"""Folder of the model folder that contains the TensorBoard event files."""


class MetricsWriter:
    """Writes step and epoch records of one training run (rank 0 only).

    Args:
        metrics_path: JSON lines file to append to.
        tensorboard_dir: folder for the event files, or None for no TensorBoard.
        purge_step: first step of this process; TensorBoard hides events from an
            interrupted earlier process at this step or later, so a resumed run's curves have
            no duplicated steps.
        steps_per_epoch: length of the tqdm bar (an estimate; the bar is only a display).
        enabled: False on ranks other than 0.
    """

    def __init__(self, metrics_path: Path, tensorboard_dir: Path | None, purge_step: int,
                 steps_per_epoch: int, enabled: bool) -> None:
        self.metrics_path = metrics_path
        self.enabled = enabled
        self.steps_per_epoch = steps_per_epoch
        self.board = None
        self.bar = None
        if not enabled:
            return
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(log_dir=str(tensorboard_dir), purge_step=purge_step)

    def start_epoch(self, epoch: int, done_steps: int) -> None:
        """Open a tqdm bar for the epoch when stderr is a terminal (never in batch jobs)."""
        if not (self.enabled and sys.stderr.isatty()):
            return
        from tqdm import tqdm

        self.bar = tqdm(total=self.steps_per_epoch, initial=done_steps, desc=f"epoch {epoch}",
                        unit="step", leave=False)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def write_step(self, record: dict) -> None:
        """Append a step record and log one progress line."""
        if not self.enabled:
            return
        self._append(record)
        if self.board is not None:
            for name in ("loss", "learning_rate", "examples_per_s", "tokens_per_s", "mfu"):
                self.board.add_scalar(f"train/{name}", record[name], record["step"])
        message = (f"step {record['step']} (epoch {record['epoch']}): loss {record['loss']:.4f}, "
                   f"lr {record['learning_rate']:.2e}, {record['examples_per_s']:.0f} "
                   f"examples/s, {record['tokens_per_s']:.0f} tokens/s, "
                   f"MFU {100 * record['mfu']:.1f}%")
        if self.bar is not None:
            self.bar.set_postfix_str(message, refresh=False)
        else:
            log.info("%s", message)

    def write_epoch(self, record: dict, step: int) -> None:
        """Append an epoch record (the same dict that goes into the model's history)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._append({"kind": "epoch", "step": step, **record})
        if self.board is not None:
            # Plotted at the optimizer step, like the step records, so that `purge_step`
            # hides an interrupted process's epoch records too.
            for name, value in record.items():
                if name != "epoch" and isinstance(value, (int, float)):
                    self.board.add_scalar(f"epoch/{name}", value, step)
            self.board.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.board is not None:
            self.board.close()

    def _append(self, record: dict) -> None:
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a", encoding="utf-8") as output:
            output.write(json.dumps(record) + "\n")
