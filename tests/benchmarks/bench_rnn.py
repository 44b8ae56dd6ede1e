"""M training throughput: fit() on stage 4's step-keyed series stream vs a plain tf.function loop.

Run with `./run.sh bench` (or `python tests/benchmarks/bench_rnn.py [--quick]`). Prints one table.
CarRacing shape (LSTM 256, 999 input steps, batch 100) and Doom shape (LSTM 512, 499 input steps
of chained streams, batch 100), both in one process after warm-up: the plain loop calls a
`tf.function` of the model's `train_step` on one in-memory batch; `fit()` reads every batch from
series files as stage 4 does.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from env.tasks import get_task  # noqa: E402
from vae.series import list_series, write_series  # noqa: E402

QUICK = "--quick" in sys.argv
STEPS = 2 if QUICK else 5
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


def rates(task, series_dir: Path) -> tuple[float, float]:
    """(plain loop, fit on the stream) training sequences/s."""
    import keras
    import tensorflow as tf

    from rnn.data import EpisodeBatches, SeriesSet, StreamBatches
    from rnn.model import DecayToFloor, build_rnn
    from rnn.train import step_dataset

    series = SeriesSet(list_series(series_dir), task)
    streams = task.rnn_batching == "streams"
    batches = (StreamBatches if streams else EpisodeBatches)(series, BATCH, task.rnn_seq_len, 0)
    model = build_rnn(task, batch_size=BATCH, stateful=streams, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(DecayToFloor(1e-3, task.rnn_lr_decay), epsilon=1e-8, clipvalue=1.0))
    batch = {k: tf.constant(v) for k, v in batches(0).items()}
    step = tf.function(model.train_step)
    for _ in range(2):
        step(batch)
    start = time.perf_counter()
    for _ in range(STEPS):
        logs = step(batch)
    float(logs["loss"])
    plain = STEPS * BATCH / (time.perf_counter() - start)

    from bench_vae import timed_fit

    fitted = (
        timed_fit(model, step_dataset(batches, 0, 2 + STEPS, task, BATCH, task.rnn_seq_len), warmup=2, steps=STEPS)
        * BATCH
    )
    return plain, fitted


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, episodes, length in (("carracing", 120, 1000), ("doom", 400, 300)):
            task = get_task(name)
            fake_series(Path(tmp, name), task, episodes, length)
            results[name] = rates(task, Path(tmp, name))
    print(
        f"\nM benchmark — {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        f"{' (quick)' if QUICK else ''}; batch {BATCH}, {STEPS} timed steps"
    )
    print(f"{'training':<40}{'plain loop seq/s':>18}{'fit() stream seq/s':>20}{'fit/plain':>11}")
    labels = {"carracing": "CarRacing: LSTM 256, 999 steps", "doom": "Doom: LSTM 512, 499 steps, streams"}
    for name, (plain, fitted) in results.items():
        print(f"{labels[name]:<40}{plain:>18.1f}{fitted:>20.1f}{fitted / plain:>11.2f}")


if __name__ == "__main__":
    main()
