"""The files of a trained controller in `OUT/controller/<name>/`, read without TensorFlow.

| file            | written                | content                                                         |
|-----------------|------------------------|-----------------------------------------------------------------|
| checkpoint.pkl  | every generation       | the whole search state: pickled CMA-ES (with its random stream), history, evaluations, best |
| history.json    | every generation       | one row per generation: time, fitness mean/min/max/std, σ, episode lengths, failed episodes |
| evaluations.json| every evaluation       | generation, mean and std of the distribution mean's return on the fixed selection seeds |
| mean.json       | every generation       | the current distribution mean (`params`)                         |
| best.json       | when an evaluation improves | the best-evaluated mean (`params`): what stage 6 plays      |
| fitness.png     | as training goes       | fitness curve (mean, best, worst, evaluations) and σ              |
| config.json     | start and end          | stage 5's settings, versions, commit; the V and M it was trained with |

A params file (`best.json`, `mean.json`) is JSON: task, mode, n_params, params (float64 values,
written with full precision), generation, the evaluation behind it, and sha256 fingerprints of the
V and M weights the controller was trained with.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from controller.model import ControllerShape, controller_shape, default_mode
from env.common.cli import UserError
from env.common.files import read_json, write_json
from env.tasks import Task

MADE_BY = "stage 5, controller.train"


def params_sha256(params) -> str:
    """The fingerprint of a parameter vector (its float64 bytes): what stage 6 records and stage 7 matches."""
    return hashlib.sha256(np.ascontiguousarray(params, np.float64).tobytes()).hexdigest()


def write_params(path: Path, shape: ControllerShape, params: np.ndarray, **extra: Any) -> None:
    """Atomically write a params file for `shape`'s controller."""
    write_json(
        path,
        {
            "task": shape.task,
            "mode": shape.mode,
            "n_params": shape.n_params,
            "params": [float(v) for v in np.asarray(params, np.float64)],
            **extra,
        },
    )


def params_path(path: str | Path, task: Task) -> Path:
    """A params file named directly, or for a run directory its controller of the task's mode:
    RUN/controller/<mode>/best.json."""
    path = Path(path)
    if path.is_dir():
        return path / "controller" / default_mode(task) / "best.json"
    return path


def read_params(path: Path, task: Task) -> tuple[ControllerShape, np.ndarray, dict[str, Any]]:
    """A params file of `task` → (controller shape, params float64 [n_params], the whole record).
    A UserError naming the file and the defect when it is missing, another task's or malformed."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: missing (run {MADE_BY}, first)")
    record = read_json(path)
    if not isinstance(record, dict) or not isinstance(record.get("params"), list):
        raise UserError(f"{path}: not a controller params file (no 'params' list)")
    if record.get("task") != task.name:
        raise UserError(f"{path}: controller was trained for {record.get('task')!r}, not {task.name!r}")
    shape = controller_shape(task, str(record.get("mode", "")))
    try:
        params = np.asarray(record["params"], dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{path}: 'params' holds non-numbers") from None
    if params.shape != (shape.n_params,) or record.get("n_params") != shape.n_params:
        raise UserError(
            f"{path}: {len(params)} params, but a {shape.mode} controller of {task.name} has {shape.n_params}"
        )
    if not all(math.isfinite(v) for v in params):
        raise UserError(f"{path}: 'params' holds NaN or infinite values")
    return shape, params, record
