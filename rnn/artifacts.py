"""The files of a trained M in `OUT/rnn/`, read without TensorFlow.

`rnn.keras` is the Keras model; `weights.npz` holds its named float32 weights (`lstm.kernel`,
`lstm.recurrent_kernel`, `lstm.bias`, `mdn.kernel`, `mdn.bias`), `initial_z_mu` / `initial_z_logvar`
(V's encoding of the first frame of up to 1,000 episodes, where dreams start) and `task`;
`config.json` is stage 4's record.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from env.common.artifacts import check_trained_dir, file_fingerprint, read_weights
from env.common.cli import UserError
from env.tasks import Task

MADE_BY = "stage 4, rnn.train"
MODEL_FILE = "rnn.keras"
WEIGHTS_FILE = "weights.npz"
WEIGHT_NAMES = ("lstm.kernel", "lstm.recurrent_kernel", "lstm.bias", "mdn.kernel", "mdn.bias")
DONE_WEIGHT = 10.0
"""Weight of the done BCE on positive targets (WME doomrnn: restart_factor)."""
DEATH_WINDOW = 10
"""Frames at a Doom episode's end whose z loss `rnn.train --death-weight` weights (not in the original)."""
MIXTURES = 5
"""Gaussians in each latent dimension's mixture (WME rnn.py: num_mixture 5); the head's layout in `mdn.*`."""


def check_rnn_dir(rnn_dir: Path, task: Task) -> None:
    """A UserError unless `rnn_dir` holds a finished M trained for `task`."""
    check_trained_dir(rnn_dir, task, MODEL_FILE, "M", MADE_BY)


def fingerprint(rnn_dir: Path) -> str:
    """sha256 of the exported weights: identifies the M a controller was trained with."""
    return file_fingerprint(Path(rnn_dir) / WEIGHTS_FILE, MADE_BY)


def load_weights(rnn_dir: Path, task: Task) -> dict[str, np.ndarray]:
    """M's named weights (and initial_z arrays) from `rnn_dir/weights.npz`, checked against `task`."""
    path = Path(rnn_dir) / WEIGHTS_FILE
    weights = read_weights(path, task, WEIGHT_NAMES, "M", MADE_BY)
    if weights["lstm.recurrent_kernel"].shape[0] != task.rnn_units:
        raise UserError(
            f"{path}: LSTM of {weights['lstm.recurrent_kernel'].shape[0]} units, expected "
            f"{task.rnn_units} for {task.name}"
        )
    return weights
