"""Training-state checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is one folder `<root>/checkpoints/<model_version>/step-<step>/` (see
`Layout.training_checkpoints_dir`) with:

- `<name>.safetensors`: groups of tensors, for example the current weights (`model`), the
  best epoch's weights (`best_model`), the optimizer's moments (`optimizer`), the aggregation
  strategy's state (`strategy`) and every rank's random generator state (`ranks`);
- `state.json`: everything that is not a tensor (step, epoch, history, optimizer parameter
  groups, scheduler state, each rank's loader position and partial epoch sums);
- `logs/`: copies of the run's JSON lines logs as of this step, so a resumed run continues
  them without the lines of the steps it repeats.

Only JSON and safetensors are read and written, never pickle (`torch.save`/`torch.load`), so
loading a checkpoint runs no code from the file. A folder is assembled under a hidden
temporary name and renamed when complete, so a crash mid-write leaves no folder that
`latest_training_checkpoint` would pick.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
LOGS_DIR = "logs"
FORMAT_VERSION = 1
_STEP_FOLDER = re.compile(r"^step-(\d+)$")


def checkpoint_folder_name(step: int) -> str:
    # Zero-padded so that a plain listing sorts checkpoints by step.
    return f"step-{step:09d}"


def list_training_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Return the complete checkpoint folders under `checkpoints_dir`, oldest step first."""
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for entry in checkpoints_dir.iterdir():
        match = _STEP_FOLDER.match(entry.name)
        if match and (entry / STATE_FILE).is_file():
            found.append((int(match.group(1)), entry))
    return [path for _, path in sorted(found)]


def latest_training_checkpoint(checkpoints_dir: Path) -> Path | None:
    """Return the newest complete checkpoint folder, or None when there is none."""
    folders = list_training_checkpoints(checkpoints_dir)
    return folders[-1] if folders else None


def write_training_checkpoint(checkpoints_dir: Path, step: int,
                              tensors: dict[str, dict[str, Tensor]], state: dict,
                              log_files: list[Path], keep: int) -> Path:
    """Write one checkpoint folder atomically, then delete all but the newest `keep`.

    `tensors` maps a group name to the tensors of that group (one safetensors file each);
    `state` must be JSON-serialisable. `log_files` that exist are copied into `logs/`.
    Returns the folder. Only rank 0 calls this.
    """
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    target = checkpoints_dir / checkpoint_folder_name(step)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=checkpoints_dir))
    try:
        for group, group_tensors in tensors.items():
            save_file({name: tensor.detach().to("cpu").contiguous()
                       for name, tensor in group_tensors.items()},
                      str(staging / f"{group}.safetensors"))
        (staging / LOGS_DIR).mkdir()
        for path in log_files:
            if path.is_file():
                shutil.copyfile(path, staging / LOGS_DIR / path.name)
        document = {"format_version": FORMAT_VERSION, "step": step, **state}
        (staging / STATE_FILE).write_text(json.dumps(document, indent=1) + "\n",
                                          encoding="utf-8")

        # A checkpoint of the same step exists when a resumed run saves the step it resumed
        # from again (for example at the end of training): the new one replaces it.
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    for old in list_training_checkpoints(checkpoints_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def read_training_checkpoint(folder: Path,
                             device: torch.device | str = "cpu") -> tuple[dict[str, dict], dict]:
    """Return the tensor groups and the JSON state of a checkpoint folder."""
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(f"{state_path} not found: {folder} is not a complete "
                                f"training checkpoint")
    state = json.loads(state_path.read_text(encoding="utf-8"))
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{state_path}: format_version {state.get('format_version')!r} is not "
                         f"supported; this code reads version {FORMAT_VERSION}")
    tensors = {path.name.removesuffix(".safetensors"): load_file(str(path), device=str(device))
               for path in folder.glob("*.safetensors")}
    return tensors, state


def restore_log_files(folder: Path, destination: Path) -> None:
    """Copy the JSON lines logs saved with a checkpoint into `destination`."""
    destination.mkdir(parents=True, exist_ok=True)
    logs = folder / LOGS_DIR
    if logs.is_dir():
        for path in logs.iterdir():
            shutil.copyfile(path, destination / path.name)


def split_optimizer_state(state_dict: dict) -> tuple[dict[str, Tensor], dict]:
    """Split `optimizer.state_dict()` into tensors (`"<param index>.<name>"`) and JSON.

    Adam keeps `step`, `exp_avg` and `exp_avg_sq` per parameter, all tensors. Any value that
    is not a tensor goes to the JSON part, as do the parameter groups (learning rate, betas,
    weight decay and the parameter indices).
    """
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def join_optimizer_state(tensors: dict[str, Tensor], description: dict) -> dict:
    """Rebuild the `optimizer.state_dict()` that `split_optimizer_state` split."""
    state: dict[int, dict] = {}
    for key, tensor in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor
    for index, values in description["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group in description["param_groups"]:
        group = dict(group)
        # JSON turns tuples into lists; Adam's betas are a tuple in a fresh optimizer.
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}
