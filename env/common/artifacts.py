"""Checks shared by the trained-model directories (`vae/`, `rnn/`), read without TensorFlow."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from env.common.cli import UserError
from env.common.files import read_json
from env.tasks import Task


def check_trained_dir(stage_dir: Path, task: Task, model_file: str, what: str, made_by: str) -> None:
    """A UserError unless `stage_dir` holds a finished model `what` (V, M) trained for `task` by `made_by`."""
    stage_dir = Path(stage_dir)
    if not (stage_dir / model_file).exists() or not (stage_dir / "config.json").exists():
        raise UserError(f"{stage_dir}: no trained {what} (run {made_by}, first)")
    trained_for = read_json(stage_dir / "config.json").get("settings", {}).get("task")
    if trained_for != task.name:
        raise UserError(f"{stage_dir}: {what} was trained for {trained_for!r}, not {task.name!r}")


def read_weights(path: Path, task: Task, required: Iterable[str], what: str, made_by: str) -> dict[str, np.ndarray]:
    """The arrays of a named-weights npz, checked to hold `required` and to belong to `task`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            weights = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise UserError(f"{path}: missing (run {made_by}, first)") from None
    except Exception as err:
        raise UserError(f"{path}: corrupt or unreadable ({type(err).__name__}: {err})") from None
    trained_for = str(weights.get("task", ""))
    if trained_for != task.name:
        raise UserError(f"{path}: {what} was trained for {trained_for!r}, not {task.name!r}")
    missing = [name for name in required if name not in weights]
    if missing:
        raise UserError(f"{path}: missing weights {', '.join(missing)}")
    return weights


def file_fingerprint(path: Path, made_by: str) -> str:
    """sha256 of a file (a model's exported weights): identifies the model later stages were built on."""
    path = Path(path)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise UserError(f"{path}: missing (run {made_by}, first)") from None
