"""Stage 4: train M on `OUT/series/` with `fit()` (WME: rnn_train.py).

Writes `OUT/rnn/`: `rnn.keras`, `weights.npz` (named weights for the numpy twin, plus `initial_z_mu`
and `initial_z_logvar`: V's encoding of the first frame of up to 1,000 episodes, where dreams start),
`config.json`, `log.csv`, `tensorboard/`. Checkpoints model, optimizer (and Doom's carried LSTM
state) atomically; rerunning the same command after a kill continues at the next step with the
batch the killed run would have drawn.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from env.common.cli import UserError, check_stage_flags, parse_config, run
from env.common.files import atomic_write, stage_record, write_json
from env.common.hardware import resolve_precision, training_device
from env.common.rundir import RECORD
from env.common.training import fit_from, last_logged, open_training_output, restore, standard_callbacks
from env.tasks import Task, get_task
from rnn.artifacts import DEATH_WINDOW, MODEL_FILE, check_rnn_dir
from rnn.artifacts import fingerprint as rnn_fingerprint
from rnn.data import EpisodeBatches, SeriesSet, StreamBatches
from vae.series import list_series, series_fingerprint

PRECISIONS = ("float32", "mixed_bfloat16", "auto")
INITIAL_Z_EPISODES = 1000
"""initial_z holds the first frame of this many episodes (WME rnn_train.py)."""
STATE_FILE = "checkpoint/lstm_state.npz"
BASELINE_BATCHES = 4
"""Batches on which M's NLL is compared with the z_{t+1} = z_t, unit-variance baseline at the end."""


@dataclass
class RnnTrainConfig:
    """Train M, the MDN-RNN, on the encoded series in OUT/series/ (stage 4)."""

    out: str = field(default="", metadata={"help": "run directory: reads OUT/series/, writes OUT/rnn/"})
    task: str = field(default="carracing", metadata={"help": "carracing or doom"})
    steps: int = field(
        default=0, metadata={"help": "updates; 0 = the task's schedule (car 4,000; Doom --epochs × chunks per epoch)"}
    )
    epochs: int = field(
        default=0,
        metadata={"help": "Doom: passes over the chained streams; 0 = the task's (400). Ignored when --steps is set"},
    )
    batch_size: int = field(default=100, metadata={"help": "episodes (car) or parallel streams (Doom) per update"})
    seq_len: int = field(
        default=0,
        metadata={"help": "frames per sequence; 0 = the task's (car 1000 = whole episode, Doom 500-frame chunks)"},
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam's initial learning rate (WME: 1e-3)"})
    lr_decay: float = field(
        default=0.0, metadata={"help": "per-step decay towards 1e-5; 0 = the task's (car 1.0 = constant, Doom 0.99999)"}
    )
    grad_clip: float = field(default=1.0, metadata={"help": "element-wise gradient clip (WME: 1.0)"})
    checkpoint_every: int = field(default=100, metadata={"help": "steps between checkpoints"})
    precision: str = field(
        default="float32",
        metadata={
            "help": "float32 (the original), mixed_bfloat16, or auto: mixed_bfloat16 where the training device "
            "computes bf16 natively, else float32 (as stage 2)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seeds initialisation, z re-sampling and batch order"})
    restart_on_change: bool = field(
        default=False,
        metadata={
            "help": "when OUT/rnn/ was trained with other settings or data, move it to OUT/rnn.previous and train "
            "afresh (run.sh sets this); by default that is refused"
        },
    )
    more_series: str = field(
        default="",
        metadata={
            "help": "comma-separated series/ directories (encoded by the same V) trained on with OUT/series/: the "
            "data of earlier rounds of iterative training; '' = none"
        },
    )
    init: str = field(
        default="",
        metadata={
            "help": "an M directory (RUN/rnn) whose weights training starts from (iterative training); '' = fresh"
        },
    )
    dream_heads: bool = field(
        default=False,
        metadata={
            "help": "car: also predict each step's done flag and reward, so that C can train in M's dream (not in the original)"
        },
    )
    death_weight: float = field(
        default=1.0,
        metadata={
            "help": f"Doom: weight of the z loss on each episode's last {DEATH_WINDOW} frames, the approach of the "
            "fatal hit; 1 = the original (not in the original)"
        },
    )


def resolve(config: RnnTrainConfig, task: Task) -> RnnTrainConfig:
    """Fill the task-dependent defaults (0 = the task's value) and validate."""
    if config.seq_len == 0:
        config.seq_len = task.rnn_seq_len
    if config.lr_decay == 0:
        config.lr_decay = task.rnn_lr_decay
    if config.epochs == 0:
        config.epochs = task.rnn_epochs
    check_stage_flags(config, ("batch_size", "checkpoint_every"))
    if config.seq_len < 2:
        raise UserError(f"--seq-len must be at least 2, got {config.seq_len}")
    if config.steps < 0 or config.epochs < 0:
        raise UserError("--steps and --epochs must not be negative")
    if config.dream_heads and task.rnn_predicts_done:
        raise UserError(
            f"--dream-heads is for the car: {task.name}'s M already predicts done, and its dream pays 1 per step"
        )
    if config.death_weight != 1.0 and not task.rnn_predicts_done:
        raise UserError(f"--death-weight is for Doom: {task.name}'s M does not see where episodes end")
    if not config.death_weight > 0:
        raise UserError(f"--death-weight must be positive, got {config.death_weight}")
    if config.precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}")
    if config.learning_rate <= 0 or not 0 < config.lr_decay <= 1 or config.grad_clip <= 0:
        raise UserError("--learning-rate and --grad-clip must be positive, --lr-decay in (0, 1]")
    return config


def initial_z(series: SeriesSet) -> dict[str, np.ndarray]:
    """mu and logvar float32 [N, z] of the first frame of the first ≤ 1,000 episodes (dreams start there)."""
    firsts = [series.read(i) for i in range(min(INITIAL_Z_EPISODES, len(series)))]
    return {
        "initial_z_mu": np.stack([ep["mu"][0] for ep in firsts]),
        "initial_z_logvar": np.stack([ep["logvar"][0] for ep in firsts]),
    }


def step_dataset(batches, start: int, total: int, task: Task, batch_size: int, seq_len: int, dream_heads: bool = False):
    """tf.data stream of the batches for global steps start .. total − 1, read ahead in the background."""
    import tensorflow as tf

    keys = (
        ["mu", "logvar", "action"]
        + (["restart"] if task.rnn_batching == "streams" else [])
        + (["reward", "done"] if dream_heads else [])
    )
    widths = {
        "mu": (task.z_size,),
        "logvar": (task.z_size,),
        "action": (task.action_dim,),
        "restart": (),
        "reward": (),
        "done": (),
    }

    def load(step):
        batch = batches(int(step))
        return [batch[key] for key in keys]

    def as_dict(step):
        arrays = tf.numpy_function(load, [step], [tf.float32] * len(keys), stateful=False)
        return {key: tf.ensure_shape(value, (batch_size, seq_len, *widths[key])) for key, value in zip(keys, arrays)}

    return tf.data.Dataset.range(start, total).map(as_dict).prefetch(2)


def stream_callbacks(model, rnn_dir: Path, steps_per_epoch: int, checkpoint_every: int) -> list:
    """Doom: zero the carried LSTM state at each epoch start; save it beside each checkpoint."""
    import keras

    class CarriedState(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if int(model.optimizer.iterations) % steps_per_epoch == 0:
                model.lstm.reset_state()

        def save(self):
            states = {f"s{i}": np.asarray(v.value) for i, v in enumerate(model.lstm.states)}
            step = np.int64(int(model.optimizer.iterations))
            atomic_write(rnn_dir / STATE_FILE, lambda f: np.savez(f, step=step, **states))

        def on_train_batch_end(self, batch, logs=None):
            if int(model.optimizer.iterations) % checkpoint_every == 0:
                self.save()

        def on_epoch_end(self, epoch, logs=None):
            self.save()

    return [CarriedState()]


def restore_state(model, rnn_dir: Path, step: int) -> None:
    """Doom: put back the LSTM state carried at the checkpoint's step (zero if it was not saved with it)."""
    path = rnn_dir / STATE_FILE
    if not path.exists():
        return
    with np.load(path) as saved:
        if int(saved["step"]) != step:
            return
        for i, variable in enumerate(model.lstm.states):
            variable.assign(saved[f"s{i}"])


def baseline_comparison(model, batches, steps: Sequence[int]) -> dict[str, float]:
    """M's mixture NLL per element vs predicting z_{t+1} = z_t with unit variance, on the same sampled z."""
    from rnn.model import mixture_nll, split_params

    ours, naive = [], []
    for step in steps:
        batch = batches(step)
        inputs, z_next, _ = model.sequences(batch)
        params, _ = model(inputs, initial_state=[np.zeros((len(inputs), model.units), np.float32)] * 2)
        logits, mu, logstd, _ = split_params(params, model.z_size, model.predicts_done, model.predicts_reward)
        ours.append(float(mixture_nll(z_next, logits, mu, logstd)))
        z_now, z_next = np.asarray(inputs)[..., : model.z_size], np.asarray(z_next)
        naive.append(float(np.mean(0.5 * (z_next - z_now) ** 2 + 0.5 * np.log(2 * np.pi))))
    return {"nll": round(float(np.mean(ours)), 4), "nll_copy_last_z_unit_variance": round(float(np.mean(naive)), 4)}


def main(argv: Sequence[str] | None = None, extra_callbacks: Sequence = ()) -> int:
    config = parse_config(RnnTrainConfig, argv)
    task = get_task(config.task)
    config = resolve(config, task)
    out = Path(config.out)
    series_dir = out / "series"
    series_dirs = [series_dir] + [Path(d) for d in config.more_series.split(",") if d]
    paths = [path for d in series_dirs for path in list_series(d)]
    encoders = {str(d): series_fingerprint(d) for d in series_dirs}
    if len(set(encoders.values())) > 1:
        raise UserError(f"--more-series: these series were encoded by different V's: {encoders}")
    series = SeriesSet(paths, task)
    batching = EpisodeBatches if task.rnn_batching == "episodes" else StreamBatches
    batches = batching(series, config.batch_size, config.seq_len, config.seed)
    steps_per_epoch = batches.steps_per_epoch
    total_steps = config.steps or (
        task.rnn_updates if task.rnn_batching == "episodes" else config.epochs * steps_per_epoch
    )
    if total_steps < 1:
        raise UserError("nothing to train: --steps (or --epochs) resolves to 0 updates")

    rnn_dir = out / "rnn"
    device = training_device()
    config.precision = resolve_precision(config.precision, device)
    inputs = {"episodes": len(series), "frames": int(series.lengths.sum()), "vae": series_fingerprint(series_dir)}
    if config.init:
        check_rnn_dir(Path(config.init), task)
        inputs["init"] = rnn_fingerprint(Path(config.init))
    record = stage_record(config, inputs=inputs)
    if open_training_output(rnn_dir, record, "stage 4", config.restart_on_change, MODEL_FILE):
        return 0
    print(
        f"[stage 4] {task.name}: M (LSTM {task.rnn_units}, z = {task.z_size}) on {len(series)} episodes "
        f"({int(series.lengths.sum())} frames), {task.rnn_batching} of {config.seq_len} frames × "
        f"{config.batch_size}; {total_steps} steps ({math.ceil(total_steps / steps_per_epoch)} epochs of "
        f"{steps_per_epoch}) → {rnn_dir}",
        flush=True,
    )

    import keras

    from rnn.model import DecayToFloor, build_rnn, load_rnn, plain_copy, save_rnn

    keras.utils.set_random_seed(config.seed)
    keras.config.set_dtype_policy(config.precision)
    stateful = task.rnn_batching == "streams"
    model = build_rnn(
        task,
        batch_size=config.batch_size,
        stateful=stateful,
        seed=config.seed,
        dream_heads=config.dream_heads,
        death_weight=config.death_weight,
    )
    # Adam with TF1's ε 1e-8; gradients clipped element-wise (tf.clip_by_value) as the original.
    model.compile(
        optimizer=keras.optimizers.Adam(
            DecayToFloor(config.learning_rate, config.lr_decay), epsilon=1e-8, clipvalue=config.grad_clip
        )
    )
    start_step = restore(model, rnn_dir, "stage 4")
    if not start_step and config.init:
        model.set_weights(load_rnn(Path(config.init), task).get_weights())
        print(f"[stage 4] starting from the weights of {config.init}", flush=True)
    if start_step:
        print(f"[stage 4] resuming from the checkpoint at step {start_step} of {total_steps}", flush=True)
        if stateful:
            restore_state(model, rnn_dir, start_step)
    callbacks = [
        *standard_callbacks(
            model,
            rnn_dir,
            config.checkpoint_every,
            steps_per_epoch,
            total_steps,
            unit="seq",
            per_step=config.batch_size,
            stage="stage 4",
        )
    ]
    if stateful:
        callbacks[2:2] = stream_callbacks(model, rnn_dir, steps_per_epoch, config.checkpoint_every)
    callbacks += list(extra_callbacks)

    start = time.perf_counter()
    fit_from(
        model,
        lambda step: step_dataset(
            batches, step, total_steps, task, config.batch_size, config.seq_len, config.dream_heads
        ),
        start_step,
        total_steps,
        steps_per_epoch,
        callbacks,
    )
    seconds = time.perf_counter() - start
    trained = int(model.optimizer.iterations) - start_step
    keras.config.set_dtype_policy("float32")  # M is saved, and compared with the baseline, in float32

    plain = plain_copy(model, task) if stateful or config.precision != "float32" else model
    comparison = baseline_comparison(plain, batches, list(range(min(BASELINE_BATCHES, steps_per_epoch))))
    save_rnn(plain, rnn_dir, task, extra=initial_z(series))
    shutil.rmtree(rnn_dir / "checkpoint", ignore_errors=True)
    keys = model.loss_names
    result = {
        "metrics": last_logged(rnn_dir / "log.csv", keys),
        **comparison,
        "steps": total_steps,
        "seconds_this_run": round(seconds, 1),
        "sequences_per_second": round(trained * config.batch_size / seconds, 2) if seconds > 0 else 0.0,
    }
    write_json(rnn_dir / RECORD, {**record, "result": {**result, "device": device}})
    print(
        f"[stage 4] done: loss {result['metrics'].get('loss')}; NLL per z element {comparison['nll']} vs "
        f"{comparison['nll_copy_last_z_unit_variance']} for z_t+1 = z_t with unit variance; "
        f"{result['sequences_per_second']} sequences/s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    run(main)
