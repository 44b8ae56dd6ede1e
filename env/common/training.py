"""What the Keras training stages (V, M) share: checkpoint and resume, NaN stop, progress, and `fit()`
over a step-keyed data stream that continues exactly where a killed run stopped.

TensorFlow and Keras are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from env.common.cli import UserError
from env.common.files import ensure_dir, temporary_beside, write_json
from env.common.rundir import COMPLETE, RECORD, finished, open_output

CHECKPOINT_FILE = "checkpoint/train.weights.h5"
RESUMABLE_SETTINGS = ("checkpoint_every",)
"""Settings of V's and M's training that may change between a run and its resumption."""


def open_training_output(stage_dir: Path, record: dict, stage: str, restart: bool, model_file: str) -> bool:
    """The run-directory contract for V's or M's directory → True when it already holds the trained model for
    `record` (said so: nothing to do); else it is new or resumable, and `record` is written to it."""
    state = open_output(
        stage_dir,
        record,
        stage=stage,
        restart=restart,
        resumable=RESUMABLE_SETTINGS,
        complete=lambda previous: finished(previous) and (stage_dir / model_file).exists(),
    )
    if state == COMPLETE:
        print(f"[{stage}] {stage_dir} is already trained with these settings; nothing to do", flush=True)
        return True
    write_json(stage_dir / RECORD, record)
    return False


def save_model(model, path: Path) -> None:
    """Save a Keras model as `.keras` atomically (temporary name beside `path`, then rename)."""
    path = Path(path)
    tmp = temporary_beside(path, ".keras")
    model.save(tmp)
    tmp.replace(path)


def load_model(path: Path):
    """Load a `.keras` model (custom layers registered by importing their module); a UserError if it cannot."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:
        raise UserError(f"{path}: cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0]})") from None


def restore(model, stage_dir: Path, stage: str) -> int:
    """Load model and optimizer state from the stage's checkpoint if there is one; returns the step."""
    model.optimizer.build(model.trainable_variables)
    checkpoint = stage_dir / CHECKPOINT_FILE
    ensure_dir(checkpoint.parent)
    if checkpoint.exists():
        try:
            model.load_weights(checkpoint)
        except Exception as err:
            raise UserError(
                f"{checkpoint}: cannot be restored ({type(err).__name__}); delete it to restart {stage} from scratch"
            ) from None
    return int(model.optimizer.iterations)


def last_logged(csv_path: Path, keys: Sequence[str]) -> dict[str, float]:
    """The last epoch's `keys` from a CSV log, or {} if there is none."""
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return {}
    return {k: round(float(rows[-1][k]), 5) for k in keys if k in rows[-1]} if rows else {}


def standard_callbacks(
    model,
    stage_dir: Path,
    checkpoint_every: int,
    steps_per_epoch: int,
    total_steps: int,
    unit: str,
    per_step: int,
    stage: str,
) -> list:
    """NaN stop, atomic checkpoint, CSV and TensorBoard logs, and a progress bar per epoch showing the
    metrics and `unit`/s (each step handles `per_step` units)."""
    import keras
    from tqdm import tqdm

    class StopOnNaN(keras.callbacks.Callback):
        """Abort (before any checkpoint of the bad step) when the loss is not finite."""

        def on_train_batch_end(self, batch, logs=None):
            loss = float((logs or {}).get("loss", 0.0))
            if not math.isfinite(loss):
                step = int(model.optimizer.iterations)
                raise UserError(
                    f"{stage}: the loss became {loss} at step {step}; the last checkpoint is kept in "
                    f"{stage_dir / 'checkpoint'} (try a lower --learning-rate)"
                )

    class Checkpoint(keras.callbacks.Callback):
        """Model and optimizer state, every `checkpoint_every` steps and at each epoch end, written atomically."""

        def save(self):
            path = stage_dir / CHECKPOINT_FILE
            tmp = temporary_beside(path, ".weights.h5")
            model.save_weights(tmp)
            tmp.replace(path)

        def on_train_batch_end(self, batch, logs=None):
            if int(model.optimizer.iterations) % checkpoint_every == 0:
                self.save()

        def on_epoch_end(self, epoch, logs=None):
            self.save()

    class Progress(keras.callbacks.Callback):
        """One bar per epoch: the metrics and throughput (timed from the epoch's second step)."""

        def on_epoch_begin(self, epoch, logs=None):
            step = int(model.optimizer.iterations)
            size = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
            epochs = math.ceil(total_steps / steps_per_epoch)
            self.bar = tqdm(
                total=size,
                initial=step - epoch * steps_per_epoch,
                desc=f"epoch {epoch + 1}/{epochs}",
                unit="step",
                dynamic_ncols=True,
                mininterval=2.0,
            )
            self.start, self.steps = None, 0

        def on_train_batch_end(self, batch, logs=None):
            self.bar.update(1)
            if self.start is None:
                self.start = time.perf_counter()
                return
            self.steps += 1
            rate = self.steps * per_step / (time.perf_counter() - self.start)
            shown = {k: f"{float(v):.4g}" for k, v in (logs or {}).items()}
            self.bar.set_postfix(**shown, **{f"{unit}_s": f"{rate:.1f}"}, refresh=False)

        def on_epoch_end(self, epoch, logs=None):
            self.bar.close()

    return [
        StopOnNaN(),
        Checkpoint(),
        keras.callbacks.CSVLogger(str(stage_dir / "log.csv"), append=True),
        keras.callbacks.TensorBoard(str(stage_dir / "tensorboard"), write_graph=False, update_freq=100),
        Progress(),
    ]


def fit_from(
    model,
    make_data: Callable[[int], object],
    start_step: int,
    total_steps: int,
    steps_per_epoch: int,
    callbacks: Sequence,
) -> None:
    """Train from `start_step` to `total_steps` with `fit()`. `make_data(step)` returns the data stream
    beginning at global step `step`. Keras epochs are blocks of `steps_per_epoch` steps; an interrupted
    epoch is finished with its remaining steps, and a last partial epoch is run as such."""
    step = start_step
    while step < total_steps:
        epoch, done = divmod(step, steps_per_epoch)
        if done == 0:
            full = (total_steps - step) // steps_per_epoch
            if full:
                model.fit(
                    make_data(step),
                    epochs=epoch + full,
                    initial_epoch=epoch,
                    steps_per_epoch=steps_per_epoch,
                    callbacks=callbacks,
                    shuffle=False,
                    verbose=0,
                )
                step += full * steps_per_epoch
                continue
        steps = min(steps_per_epoch - done, total_steps - step)
        model.fit(
            make_data(step),
            epochs=epoch + 1,
            initial_epoch=epoch,
            steps_per_epoch=steps,
            callbacks=callbacks,
            shuffle=False,
            verbose=0,
        )
        step += steps
