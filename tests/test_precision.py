"""`--precision` for V and M: bfloat16 training lands where float32 does, and the saved models are float32."""

import csv
import json

import keras
import numpy as np

from rnn import train as rnn_train
from rnn.model import load_rnn
from tests.test_rnn_stages import DOOM, write_fake_series
from tests.test_vae_stages import CAR, write_record
from vae import train as vae_train
from vae.model import load_vae

V_ARGS = ["--task", "carracing", "--epochs", "4", "--batch-size", "8", "--shuffle-buffer", "64", "--seed", "3"]


def last_row(csv_path):
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))[-1]


def test_v_in_bfloat16_reaches_float32s_reconstruction_loss(tmp_path):
    recon = {}
    for precision in ("float32", "mixed_bfloat16"):
        out = tmp_path / precision
        out.mkdir()
        write_record(out, episodes=3, length=40)
        assert vae_train.main([*V_ARGS, "--out", str(out), "--precision", precision]) == 0
        assert json.loads((out / "vae" / "config.json").read_text())["settings"]["precision"] == precision
        recon[precision] = float(last_row(out / "vae" / "log.csv")["recon"])
        model = load_vae(out / "vae", CAR)
        assert all(w.dtype == "float32" for w in model.weights) and model.dtype_policy.name == "float32"
    assert keras.config.dtype_policy().name == "float32"
    start = 64 * 64 * 3 * 0.1  # an untrained V's loss is in the thousands; both have learned
    assert max(recon.values()) < start
    assert abs(recon["mixed_bfloat16"] - recon["float32"]) <= 0.05 * recon["float32"], recon


def test_m_in_bfloat16_reaches_float32s_losses_and_saves_float32(tmp_path):
    losses = {}
    for precision in ("float32", "mixed_bfloat16"):
        out = tmp_path / precision
        write_fake_series(out, DOOM, [40, 60, 50, 50])
        args = ["--task", "doom", "--out", str(out), "--batch-size", "2", "--seq-len", "20", "--steps", "10"]
        assert rnn_train.main([*args, "--precision", precision]) == 0
        record = json.loads((out / "rnn" / "config.json").read_text())
        assert record["settings"]["precision"] == precision
        losses[precision] = record["result"]["nll"]
        model = load_rnn(out / "rnn", DOOM)
        assert model.dtype_policy.name == "float32"
        assert all(np.asarray(w).dtype == np.float32 for w in model.get_weights())
    assert keras.config.dtype_policy().name == "float32"
    assert abs(losses["mixed_bfloat16"] - losses["float32"]) <= 0.05 * abs(losses["float32"]), losses
