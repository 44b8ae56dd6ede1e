"""The files of a trained M in `OUT/rnn/`, read without TensorFlow.

`rnn.keras` is the Keras model; `weights.npz` holds its named float32 weights (`lstm.kernel`,
`lstm.recurrent_kernel`, `lstm.bias`, `mdn.kernel`, `mdn.bias`), `initial_z_mu` / `initial_z_logvar`
(V's encoding of the first frame of up to 1,000 episodes, where dreams start) and `task`;
`config.json` is stage 4's record.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from env.cli import UserError
from env.files import read_json
from env.tasks import Task

MODEL_FILE = "rnn.keras"
WEIGHTS_FILE = "weights.npz"
WEIGHT_NAMES = ("lstm.kernel", "lstm.recurrent_kernel", "lstm.bias", "mdn.kernel", "mdn.bias")


def check_rnn_dir(rnn_dir: Path, task: Task) -> None:
    """A UserError unless `rnn_dir` holds a finished M trained for `task`."""
    rnn_dir = Path(rnn_dir)
    if not (rnn_dir / MODEL_FILE).exists() or not (rnn_dir / "config.json").exists():
        raise UserError(f"{rnn_dir}: no trained M (run stage 4, rnn.train, first)")
    trained_for = read_json(rnn_dir / "config.json").get("settings", {}).get("task")
    if trained_for != task.name:
        raise UserError(f"{rnn_dir}: M was trained for {trained_for!r}, not {task.name!r}")


def load_weights(rnn_dir: Path, task: Task) -> dict[str, np.ndarray]:
    """M's named weights (and initial_z arrays) from `rnn_dir/weights.npz`, checked against `task`."""
    path = Path(rnn_dir) / WEIGHTS_FILE
    try:
        with np.load(path, allow_pickle=False) as npz:
            weights = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise UserError(f"{path}: missing (run stage 4, rnn.train, first)") from None
    except Exception as err:
        raise UserError(f"{path}: corrupt or unreadable ({type(err).__name__}: {err})") from None
    trained_for = str(weights.get("task", ""))
    if trained_for != task.name:
        raise UserError(f"{path}: M was trained for {trained_for!r}, not {task.name!r}")
    missing = [name for name in WEIGHT_NAMES if name not in weights]
    if missing:
        raise UserError(f"{path}: missing weights {', '.join(missing)}")
    if weights["lstm.recurrent_kernel"].shape[0] != task.rnn_units:
        raise UserError(f"{path}: LSTM of {weights['lstm.recurrent_kernel'].shape[0]} units, expected "
                        f"{task.rnn_units} for {task.name}")
    return weights
