"""The files of a trained V in `OUT/vae/`, read without TensorFlow.

`vae.keras` is the Keras model; `weights.npz` holds its named float32 weights ('<layer>.kernel',
'<layer>.bias') plus `task` and `z_size`, for the numpy twin; `config.json` is stage 2's record.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from env.common.artifacts import check_trained_dir, file_fingerprint, read_weights
from env.common.cli import UserError
from env.tasks import Task

MADE_BY = "stage 2, vae.train"
MODEL_FILE = "vae.keras"
WEIGHTS_FILE = "weights.npz"
ENCODER_LAYERS = ("enc_conv1", "enc_conv2", "enc_conv3", "enc_conv4", "enc_fc_mu", "enc_fc_log_var")


def check_vae_dir(vae_dir: Path, task: Task) -> None:
    """A UserError unless `vae_dir` holds a finished V trained for `task`."""
    check_trained_dir(vae_dir, task, MODEL_FILE, "V", MADE_BY)


def fingerprint(vae_dir: Path) -> str:
    """sha256 of the exported weights: identifies the V that later stages were built on."""
    return file_fingerprint(Path(vae_dir) / WEIGHTS_FILE, MADE_BY)


def load_weights(vae_dir: Path, task: Task) -> dict[str, np.ndarray]:
    """V's named weights from `vae_dir/weights.npz`, checked to be complete and to belong to `task`."""
    path = Path(vae_dir) / WEIGHTS_FILE
    required = [f"{name}.{part}" for name in ENCODER_LAYERS for part in ("kernel", "bias")]
    weights = read_weights(path, task, required, "V", MADE_BY)
    if weights["enc_fc_mu.kernel"].shape[1] != task.z_size:
        raise UserError(
            f"{path}: z size {weights['enc_fc_mu.kernel'].shape[1]}, expected {task.z_size} for {task.name}"
        )
    return weights
