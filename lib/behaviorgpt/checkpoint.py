"""Save and load trained models as safetensors plus a JSON description.

A model folder `models/<model_version>/` contains:

- `model.safetensors`: the weights (no pickle, so loading runs no code from the file);
- `model_config.json`: format version, model sizes, vocabulary sizes, max_len, model
  version, creation time (UTC) and a training summary;
- `vocab/`: a copy of the vocabulary the model was trained with, so scoring maps token ids
  back to raw ids even after the sequences are rebuilt.

`models/CANDIDATE` then names the new version. Scoring uses the version in `models/LATEST`,
which only the quality gate (`behaviorgpt.gate`) moves, once the candidate is evaluated.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from behaviorgpt.errors import MODEL_FIX, UNSAFE_WEIGHT_SUFFIXES, CorruptFileError
from behaviorgpt.layout import Layout
from behaviorgpt.model import BehaviorGPT, BehaviorGPTConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
VOCAB_DIR = "vocab"
FORMAT_VERSION = 1


def save_checkpoint(model: BehaviorGPT, layout: Layout, model_version: str,
                    vocab_dir: str | Path, training_summary: dict) -> Path:
    """Write a model folder, then point `CANDIDATE` at it; return the folder.

    Only rank 0 calls this. The folder is assembled under a temporary name and renamed, so a
    crash never leaves a half-written model that `CANDIDATE` could name. Raises FileExistsError
    if the version already exists.
    """
    target = layout.model_dir(model_version)
    if target.exists():
        raise FileExistsError(f"model folder {target} already exists; pass another "
                              f"--model-version or remove the folder")
    layout.models_dir.mkdir(parents=True, exist_ok=True)

    staging = Path(tempfile.mkdtemp(prefix=f".{model_version}.", dir=layout.models_dir))
    try:
        save_file(_unshared_state_dict(model), str(staging / WEIGHTS_FILE),
                  metadata={"format": "behaviorgpt", "model_version": model_version})
        description = {
            "format_version": FORMAT_VERSION,
            "model_version": model_version,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": model.config.to_dict(),
            "training": training_summary,
        }
        (staging / CONFIG_FILE).write_text(json.dumps(description, indent=2) + "\n",
                                           encoding="utf-8")
        shutil.copytree(vocab_dir, staging / VOCAB_DIR)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    layout.point(layout.candidate_model_file, model_version)
    return target


def read_model_description(model_dir: str | Path) -> dict:
    """Read `model_config.json` of a model folder.

    Raises CorruptFileError (a ValueError) naming the file when it is truncated, not JSON, or
    lacks the keys that loading needs.
    """
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a trained model folder")
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptFileError(path, f"not valid JSON ({error})", MODEL_FIX) from None
    if not isinstance(description, dict):
        raise CorruptFileError(path, "not a JSON object", MODEL_FIX)
    if description.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {description.get('format_version')!r} is not "
                         f"supported; this code reads version {FORMAT_VERSION}")
    missing = [key for key in ("model_version", "model") if key not in description]
    if missing or not isinstance(description["model"], dict):
        raise CorruptFileError(path, f"the keys {missing or ['model']} are missing or invalid",
                               MODEL_FIX)
    return description


def load_checkpoint(model_dir: str | Path,
                    device: torch.device | str = "cpu") -> tuple[BehaviorGPT, dict]:
    """Build the model of a model folder, load its weights, and return it in eval mode.

    Returns the model and the parsed `model_config.json`. Weights load only from
    `model.safetensors` (no pickle, so loading runs no code from the file). Raises
    CorruptFileError (a ValueError) naming the file when `model_config.json` or the weights
    are truncated, garbled, of another format, or do not fit the described model.
    """
    description = read_model_description(model_dir)
    try:
        model = BehaviorGPT(BehaviorGPTConfig.from_dict(description["model"]))
    except (TypeError, ValueError, KeyError) as error:
        raise CorruptFileError(Path(model_dir) / CONFIG_FILE,
                               f"the model description is invalid ({error})", MODEL_FIX) from None

    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        others = sorted(path.name for path in Path(model_dir).glob("*")
                        if path.suffix in UNSAFE_WEIGHT_SUFFIXES)
        if others:
            raise CorruptFileError(weights, f"missing, and {others} are not loaded because "
                                   f"only safetensors weights are (pickle files can run code)",
                                   "convert the weights with safetensors.torch.save_file, "
                                   "or retrain")
        raise FileNotFoundError(f"{weights} not found; the model folder is incomplete")
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as error:
        raise CorruptFileError(weights, f"not a valid safetensors file ({error}); only "
                               f"safetensors weights are loaded", MODEL_FIX) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise CorruptFileError(weights, f"does not match the model described in {CONFIG_FILE} "
                               f"({first_line})", MODEL_FIX) from None
    return model.to(device).eval(), description


def _unshared_state_dict(model: BehaviorGPT) -> dict[str, torch.Tensor]:
    """Return contiguous CPU copies of the weights; raise if two entries share memory.

    safetensors stores each tensor separately and rejects aliases. The model ties its item
    output matrix to the item embedding through F.linear, so no alias is expected here. A new
    module that registers a tied parameter twice fails here, by name, instead of silently
    untying on load.
    """
    state = model.state_dict()
    owners: dict[int, str] = {}
    for name, tensor in state.items():
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in owners:
            raise ValueError(f"state dict entries {owners[pointer]!r} and {name!r} share memory; "
                             f"register a tied weight once and reuse it in forward")
        owners[pointer] = name
    return {name: tensor.detach().to("cpu").contiguous() for name, tensor in state.items()}
