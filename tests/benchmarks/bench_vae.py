"""V throughput and memory: training images/s with fit() on the stream vs a plain loop, peak RSS of
stage 2 on N vs 4·N episodes, and the numpy encoder twin vs Keras at batch 1.

Run with `./run.sh bench` (or `python tests/benchmarks/bench_vae.py [--quick] [OUT/record ...]`). Prints one table.
- Stream: frames/s of stage 2's frame stream alone, on the synthetic record and on any real records given.
- Training: the same ConvVAE and batch size 100, timed after warm-up in one process: a plain loop
  calling a `tf.function` of `train_step` on one in-memory batch, then `fit()` on the shuffled
  tf.data stream of frames read from episode files (what stage 2 runs), in float32 and in
  mixed_bfloat16.
- Memory: stage 2 (`vae.train`) in a fresh process, for the same number of steps on N and on 4·N
  synthetic 1,000-frame episodes (4 epochs of N, 1 epoch of 4·N: both read 4·N episodes' worth of
  frames); streaming means the peak RSS does not grow with the dataset.
- Latency: one frame through the numpy twin, the Keras encoder called eagerly, and a tf.function of it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from env.episodes import episode_path, list_episodes, read_episode, write_episode  # noqa: E402
from env.tasks import get_task  # noqa: E402

QUICK = "--quick" in sys.argv
RECORDS = [Path(arg) for arg in sys.argv[1:] if not arg.startswith("--")]
"""Real records (OUT/record) to stream as well, given as arguments."""
TASK = get_task("carracing")
BATCH = 100
STEPS = {"float32": 10 if QUICK else 40, "mixed_bfloat16": 3 if QUICK else 5}
"""Timed training steps per measurement (after warm-up); bf16 is slow on CPUs without native bf16."""
N_EPISODES = 12
"""N: 12,000 frames already fill the 10,000-frame shuffle buffer, so N and 4·N differ only in data size."""
EPISODE_LENGTH = 1000


def synthetic_record(out: Path, episodes: int, seed: int = 0) -> None:
    """`episodes` CarRacing-shaped episodes of rectangles on a road-and-grass background."""
    (out / "record").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(episodes):
        frames = np.empty((EPISODE_LENGTH, 64, 64, 3), np.uint8)
        frames[:] = (102, 204, 102)
        frames[:, :, 20:44] = (102, 102, 102)
        for t in range(EPISODE_LENGTH):
            x, y = rng.integers(0, 48, 2)
            frames[t, y : y + 16, x : x + 16] = rng.integers(0, 256, 3)
        write_episode(
            episode_path(out / "record", i),
            TASK,
            frames,
            rng.uniform(-1, 1, (EPISODE_LENGTH, 3)).astype(np.float32),
            np.zeros(EPISODE_LENGTH, np.float32),
            np.zeros(EPISODE_LENGTH, bool),
            seed=i,
        )


def training_rates(record: Path, precision: str) -> tuple[float, float]:
    """(plain loop, fit on the stream) training images/s for one precision, measured in this process."""
    import keras
    import tensorflow as tf

    from env.episodes import frame_dataset
    from vae.model import build_vae

    keras.config.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    model = build_vae(TASK, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-4, epsilon=1e-8))
    batch = tf.constant(np.random.default_rng(0).integers(0, 256, (BATCH, 64, 64, 3), dtype=np.uint8))
    step = tf.function(model.train_step)
    for _ in range(3):
        step(batch)
    start = time.perf_counter()
    for _ in range(STEPS[precision]):
        logs = step(batch)
    float(logs["loss"])
    plain = STEPS[precision] * BATCH / (time.perf_counter() - start)

    stream = frame_dataset(list_episodes(record), TASK, BATCH, seed=0).repeat()
    fitted = timed_fit(model, stream, warmup=3, steps=STEPS[precision]) * BATCH
    keras.config.set_dtype_policy("float32")
    return plain, fitted


def stream_rate(record: Path, task) -> float:
    """Frames/s of stage 2's frame stream alone (batches of 100), timed after the shuffle buffer is full."""
    from env.episodes import frame_dataset

    iterator = iter(frame_dataset(list_episodes(record), task, BATCH, seed=0).repeat())
    for _ in range(120):  # 12,000 frames: the 10,000-frame buffer is full
        next(iterator)
    start, batches = time.perf_counter(), 0
    while time.perf_counter() - start < (3 if QUICK else 10):
        next(iterator)
        batches += 1
    return batches * BATCH / (time.perf_counter() - start)


def timed_fit(model, data, warmup: int, steps: int) -> float:
    """Steps/s of one `fit()` call over `warmup + steps` steps, timed from the end of the warm-up steps
    (so tracing and the first fill of the shuffle buffer are excluded, as in a long run)."""
    import keras

    ends: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ends.append(time.perf_counter())

    model.fit(data, epochs=1, steps_per_epoch=warmup + steps, callbacks=[Clock()], shuffle=False, verbose=0)
    return steps / (ends[-1] - ends[warmup - 1])


def stage_peak_rss(out: Path, epochs: int) -> tuple[float, float]:
    """Run stage 2 in a fresh process; returns (peak RSS in MB, images/s it reported)."""
    frames = "3000" if QUICK else "0"
    code = (
        "import resource; from vae import train; "
        f"train.main(['--task', 'carracing', '--out', {str(out)!r}, '--epochs', '{epochs}', "
        f"'--max-frames', {frames!r}]); "
        "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    rss = float(proc.stdout.strip().splitlines()[-1].split()[1])
    import json

    rate = json.loads((out / "vae" / "config.json").read_text())["result"]["images_per_second"]
    return rss, rate


def encoder_latencies(record: Path) -> dict[str, float]:
    """Median ms per single-frame encode: numpy twin, Keras eager, Keras tf.function."""
    import keras
    import tensorflow as tf

    from vae.model import build_vae, export_weights
    from vae.twin import EncoderTwin

    model = build_vae(TASK, seed=0)
    twin = EncoderTwin(export_weights(model))
    frame = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    graph = tf.function(lambda x: model.encoder(model.to_unit(x)))
    calls = {
        "numpy twin": lambda: twin(frame),
        "Keras eager": lambda: [np.asarray(v) for v in model.encoder(model.to_unit(frame))],
        "Keras tf.function": lambda: [np.asarray(v) for v in graph(frame)],
    }
    result = {}
    for name, call in calls.items():
        for _ in range(20):
            call()
        times = []
        for _ in range(50 if QUICK else 300):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        result[name] = float(np.median(times) * 1000)
    del keras
    return result


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp, "small"), Path(tmp, "large")
        synthetic_record(small, N_EPISODES)
        synthetic_record(large, 4 * N_EPISODES)
        streams = {"synthetic CarRacing (N)": stream_rate(small / "record", TASK)}
        for record in RECORDS:
            task = get_task(read_episode(list_episodes(record)[0], fields=("task",))["task"].item())
            streams[f"{record} ({task.name})"] = stream_rate(record, task)
        rss_small, stage_rate_small = stage_peak_rss(small, epochs=4)
        rss_large, stage_rate_large = stage_peak_rss(large, epochs=1)
        rates = {p: training_rates(small / "record", p) for p in ("float32", "mixed_bfloat16")}
        latency = encoder_latencies(small / "record")

    print(
        f"\nV benchmark — {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        f"{' (quick)' if QUICK else ''}; batch {BATCH}; timed steps {STEPS}"
    )
    print(f"{'V frame stream alone':<34}{'frames/s':>18}")
    for name, rate in streams.items():
        print(f"{'  ' + name:<34}{rate:>18.0f}")
    print(f"{'training':<34}{'plain loop img/s':>18}{'fit() stream img/s':>20}{'fit/plain':>11}")
    for precision, (plain, fitted) in rates.items():
        print(f"{precision:<34}{plain:>18.0f}{fitted:>20.0f}{fitted / plain:>11.2f}")
    print(f"{'stage 2, same steps':<34}{'episodes':>18}{'peak RSS MB':>20}{'img/s':>11}")
    print(f"{'  N, 4 epochs':<34}{N_EPISODES:>18}{rss_small:>20.0f}{stage_rate_small:>11.0f}")
    print(f"{'  4·N, 1 epoch':<34}{4 * N_EPISODES:>18}{rss_large:>20.0f}{stage_rate_large:>11.0f}")
    print(f"{'  ratio 4·N / N':<34}{'':>18}{rss_large / rss_small:>20.3f}")
    print(f"{'encoder, batch 1':<34}{'median ms':>18}{'vs numpy twin':>20}")
    for name, ms in latency.items():
        print(f"{'  ' + name:<34}{ms:>18.3f}{ms / latency['numpy twin']:>20.2f}")


if __name__ == "__main__":
    main()
