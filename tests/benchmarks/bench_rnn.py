"""M training throughput: the series stream alone, fit() on it vs a plain tf.function loop, and M's step
against the same M built on a plain `keras.layers.LSTM`.

Run with `./run.sh bench` (or `python tests/benchmarks/bench_rnn.py [--quick]`). Prints one table.
CarRacing shape (LSTM 256, 999 input steps, batch 100) and Doom shape (LSTM 512 with the restart cell,
499 input steps of chained streams, batch 100), all in one process after warm-up: the stream alone
reads stage 4's step-keyed batches from series files; the plain loop calls a `tf.function` of the
model's `train_step` on one in-memory batch (also in mixed_bfloat16, stage 4's `--precision`);
`fit()` reads every batch from the stream as stage 4 does, three times per model, alternating,
reporting the median. The car's M is itself the fused layer, so its ratio shows this machine's
noise; for Doom the twin shows what the restart cell costs.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from env.tasks import get_task  # noqa: E402
from vae.series import list_series, write_series  # noqa: E402

QUICK = "--quick" in sys.argv
STEPS = 2 if QUICK else 5
ROUNDS = 1 if QUICK else 3
"""fit() is timed this many times per model, alternating between M and its fused twin; the median counts."""
BF16_STEPS = 1 if QUICK else 3
"""Timed steps of M in mixed_bfloat16 (the plain loop only; slow on CPUs without native bf16)."""
BATCH = 100


def fake_series(out: Path, task, episodes: int, length: int) -> None:
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(episodes):
        episode = {
            "action": rng.uniform(-1, 1, (length, task.action_dim)).astype(np.float32),
            "reward": np.ones(length, np.float32),
            "done": np.zeros(length, bool),
            "seed": np.int64(i),
        }
        write_series(
            out / f"ep_{i:06d}.npz",
            task,
            rng.normal(size=(length, task.z_size)).astype(np.float32),
            np.full((length, task.z_size), -3.0, np.float32),
            episode,
        )


def fused_twin(task, stateful: bool):
    """An M of the same size, inputs and loss whose LSTM is a plain `keras.layers.LSTM` (the fused layer,
    cuDNN's kernel on a GPU): for Doom it ignores the restart flag, so it bounds what the restart cell costs."""
    from rnn.model import MDNRNN, fused_lstm, heads, input_size

    class FusedMDNRNN(MDNRNN):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.lstm = fused_lstm(self.units, self.stateful)

    done, reward = heads(task)
    model = FusedMDNRNN(
        task.z_size,
        task.action_dim,
        task.rnn_units,
        task.rnn_extra_inputs,
        done,
        stateful=stateful,
        seed=0,
        predicts_reward=reward,
    )
    with warnings.catch_warnings():  # Keras notes the replaced restart-cell layer was never built
        warnings.simplefilter("ignore", UserWarning)
        model(np.zeros((BATCH, 2, input_size(task)), np.float32))
    return model


def rates(task, series_dir: Path) -> dict[str, float]:
    """Sequences/s: the series stream alone; M's plain tf.function loop and fit() on the stream; the same
    two for the fused-LSTM twin (`fused_twin`)."""
    import keras
    import tensorflow as tf
    from bench_vae import timed_fit

    from rnn.data import EpisodeBatches, SeriesSet, StreamBatches
    from rnn.model import DecayToFloor, build_rnn
    from rnn.train import step_dataset

    series = SeriesSet(list_series(series_dir), task)
    streams = task.rnn_batching == "streams"
    batches = (StreamBatches if streams else EpisodeBatches)(series, BATCH, task.rnn_seq_len, 0)

    def stream(steps: int):
        return step_dataset(batches, 0, steps, task, BATCH, task.rnn_seq_len)

    def compiled(model):
        """Stage 4's optimizer: Adam with TF1's ε, the decaying learning rate, element-wise clipping."""
        model.compile(
            optimizer=keras.optimizers.Adam(DecayToFloor(1e-3, task.rnn_lr_decay), epsilon=1e-8, clipvalue=1.0)
        )
        return model

    count = 8 if QUICK else 30
    iterator = iter(stream(2 + count))
    for _ in range(2):
        next(iterator)
    start = time.perf_counter()
    for _ in range(count):
        next(iterator)
    result = {"stream": count * BATCH / (time.perf_counter() - start)}

    batch = {k: tf.constant(v) for k, v in batches(0).items()}
    models = {"M": build_rnn(task, batch_size=BATCH, stateful=streams, seed=0), "fused": fused_twin(task, streams)}
    for name, model in models.items():
        step = tf.function(compiled(model).train_step)
        for _ in range(2):
            step(batch)
        start = time.perf_counter()
        for _ in range(STEPS):
            logs = step(batch)
        float(logs["loss"])
        result[f"{name} loop"] = STEPS * BATCH / (time.perf_counter() - start)
    keras.config.set_dtype_policy("mixed_bfloat16")  # stage 4's --precision mixed_bfloat16
    step = tf.function(compiled(build_rnn(task, batch_size=BATCH, stateful=streams, seed=0)).train_step)
    step(batch)
    start = time.perf_counter()
    for _ in range(BF16_STEPS):
        logs = step(batch)
    float(logs["loss"])
    result["M loop bf16"] = BF16_STEPS * BATCH / (time.perf_counter() - start)
    keras.config.set_dtype_policy("float32")
    fits: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(ROUNDS):  # alternating, so the machine's drift hits both models alike
        for name, model in models.items():
            fits[name].append(timed_fit(model, stream(2 + STEPS), warmup=2, steps=STEPS) * BATCH)
    for name, rates_of in fits.items():
        result[f"{name} fit"] = float(np.median(rates_of))
    return result


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, episodes, length in (("carracing", 120, 1000), ("doom", 400, 300)):
            task = get_task(name)
            fake_series(Path(tmp, name), task, episodes, length)
            results[name] = rates(task, Path(tmp, name))
    print(
        f"\nM benchmark — {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        f"{' (quick)' if QUICK else ''}; batch {BATCH}, {STEPS} timed steps; sequences/s"
    )
    print(
        f"{'':<36}{'stream alone':>13}{'M loop':>9}{'M fit()':>9}{'stream/fit':>11}"
        f"{'LSTM loop':>11}{'LSTM fit()':>11}{'M/LSTM step':>13}{'M loop bf16':>13}"
    )
    labels = {"carracing": "CarRacing: LSTM 256, 999 steps", "doom": "Doom: LSTM 512 restart, 499 steps"}
    for name, r in results.items():
        print(
            f"{labels[name]:<36}{r['stream']:>13.0f}{r['M loop']:>9.1f}{r['M fit']:>9.1f}"
            f"{r['stream'] / r['M fit']:>11.1f}{r['fused loop']:>11.1f}{r['fused fit']:>11.1f}"
            f"{r['fused fit'] / r['M fit']:>13.2f}{r['M loop bf16']:>13.1f}"
        )
    print(
        "M/LSTM step: M's fit() step time ÷ the fused keras.layers.LSTM twin's (goal ≤ 1.15); the car's M is that layer."
    )


if __name__ == "__main__":
    main()
