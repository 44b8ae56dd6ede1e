"""Stage 2: train V on frames streamed from `OUT/record/` with `fit()` (WME: vae_train.py).

Writes `OUT/vae/`: `vae.keras`, `weights.npz` (named weights for the numpy twin), `config.json`,
`log.csv`, `tensorboard/`, `recon/epoch_NNN.png` (frames above reconstructions of their mean z).
A checkpoint of model and optimizer is written atomically every `--checkpoint-every` steps and at
each epoch end; rerunning the same command after a kill continues from it.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from env.cli import UserError, parse_config, run
from env.episodes import frame_dataset, list_episodes, read_episode
from env.files import atomic_write, ensure_dir, read_json, stage_record, write_json
from env.tasks import Task, get_task
from vae.artifacts import MODEL_FILE

PRECISIONS = ("float32", "mixed_bfloat16")
CHECKPOINT_FILE = "checkpoint/train.weights.h5"
PREVIEW_FRAMES = 8
"""Frames shown (with their reconstructions) in each epoch's PNG grid."""
RESUMABLE_SETTINGS = ("checkpoint_every", "out")
"""Settings that may change between a run and its resumption; every other setting must match."""


@dataclass
class VaeTrainConfig:
    """Train V, the ConvVAE, on frames streamed from OUT/record/ (stage 2)."""

    out: str = field(default="", metadata={"help": "run directory: reads OUT/record/, writes OUT/vae/"})
    task: str = field(default="carracing", metadata={"help": "carracing or doom"})
    epochs: int = field(default=10, metadata={"help": "passes over the frames (WME vae_train.py: 10)"})
    batch_size: int = field(default=100, metadata={"help": "frames per update (WME: 100)"})
    learning_rate: float = field(default=1e-4, metadata={"help": "Adam learning rate, constant (WME: 1e-4)"})
    kl_tolerance: float = field(default=0.5, metadata={
        "help": "free bits: per-sample KL floored at this × z size (WME: 0.5)"})
    max_frames: int = field(default=0, metadata={
        "help": "frames per epoch; 0 = every recorded frame (as the original)"})
    shuffle_buffer: int = field(default=10_000, metadata={"help": "frames in the tf.data shuffle buffer"})
    checkpoint_every: int = field(default=1000, metadata={"help": "steps between checkpoints"})
    precision: str = field(default="float32", metadata={"help": "float32 or mixed_bfloat16"})
    seed: int = field(default=0, metadata={"help": "seeds initialisation, sampling and the frame stream"})


def count_frames(paths: Sequence[Path], task: Task) -> int:
    """Total frames of the episode files (checks each belongs to `task`; reads only the small `done` field)."""
    return sum(len(read_episode(p, task, fields=("done",))["done"]) for p in paths)


def preview_frames(paths: Sequence[Path], task: Task) -> np.ndarray:
    """uint8 [≤8, 64, 64, 3]: the middle frame of up to 8 episodes spread over the record."""
    picks = np.unique(np.linspace(0, len(paths) - 1, min(PREVIEW_FRAMES, len(paths))).astype(int))
    frames = []
    for i in picks:
        obs = read_episode(paths[i], task, fields=("obs",))["obs"]
        frames.append(obs[len(obs) // 2])
    return np.stack(frames)


def write_grid(path: Path, frames: np.ndarray, recons: np.ndarray, scale: int = 2) -> None:
    """PNG of `frames` (top row) above `recons` (bottom row), both uint8 [N, 64, 64, 3], upscaled ×`scale`."""
    from PIL import Image

    grid = np.concatenate([np.concatenate(list(frames), axis=1), np.concatenate(list(recons), axis=1)], axis=0)
    image = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    atomic_write(path, lambda f: image.save(f, format="PNG"))


def reconstruct(model, frames: np.ndarray) -> np.ndarray:
    """uint8 frames → uint8 reconstructions of their mean z (no sampling)."""
    mu, _ = model.encoder(frames.astype(np.float32) / 255.0, training=False)
    y = np.asarray(model.decoder(mu, training=False), np.float32)
    return np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)


def last_logged(csv_path: Path) -> dict[str, float]:
    """The last epoch's row of the CSV log (loss, recon, kl), or {} if there is none."""
    import csv

    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return {}
    return {k: round(float(rows[-1][k]), 4) for k in ("loss", "recon", "kl")} if rows else {}


def check_previous(vae_dir: Path, settings: dict) -> str:
    """'new', 'resume' or 'done' for a `vae/` dir; a UserError if it was trained with other settings."""
    config_path = vae_dir / "config.json"
    if not config_path.exists():
        return "new"
    previous = read_json(config_path)
    old = {k: v for k, v in previous.get("settings", {}).items() if k not in RESUMABLE_SETTINGS}
    new = {k: v for k, v in settings.items() if k not in RESUMABLE_SETTINGS}
    old["data"], new["data"] = previous.get("data"), settings.get("data")
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        what = ", ".join(f"{k}={old.get(k)!r} (now {new.get(k)!r})" for k in changed)
        raise UserError(f"{vae_dir} was trained with {what}; use another --out or delete {vae_dir}")
    return "done" if "result" in previous and (vae_dir / MODEL_FILE).exists() else "resume"


def make_callbacks(model, vae_dir: Path, preview: np.ndarray, config: VaeTrainConfig, steps_per_epoch: int):
    """NaN stop, atomic checkpoint, CSV and TensorBoard logs, reconstruction grid, progress bar."""
    import keras
    from tqdm import tqdm

    class StopOnNaN(keras.callbacks.Callback):
        """Abort (before any checkpoint of the bad step) when the loss is not finite."""

        def on_train_batch_end(self, batch, logs=None):
            loss = float((logs or {}).get("loss", 0.0))
            if not math.isfinite(loss):
                step = int(model.optimizer.iterations)
                raise UserError(f"V's loss became {loss} at step {step}; the last checkpoint is kept in "
                                f"{vae_dir / 'checkpoint'} (try a lower --learning-rate)")

    class Checkpoint(keras.callbacks.Callback):
        """Model and optimizer state, every `checkpoint_every` steps and at each epoch end, written atomically."""

        def save(self):
            path = vae_dir / CHECKPOINT_FILE
            tmp = path.with_name(".tmp." + path.name)
            model.save_weights(tmp)
            tmp.replace(path)

        def on_train_batch_end(self, batch, logs=None):
            if int(model.optimizer.iterations) % config.checkpoint_every == 0:
                self.save()

        def on_epoch_end(self, epoch, logs=None):
            self.save()

    class ReconGrid(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            ensure_dir(vae_dir / "recon")
            write_grid(vae_dir / "recon" / f"epoch_{epoch + 1:03d}.png", preview, reconstruct(model, preview))

    class Progress(keras.callbacks.Callback):
        """One bar per epoch: loss, recon, KL and training images/s."""

        def on_epoch_begin(self, epoch, logs=None):
            done = int(model.optimizer.iterations) - epoch * steps_per_epoch
            self.bar = tqdm(total=steps_per_epoch, initial=done, desc=f"epoch {epoch + 1}/{config.epochs}",
                            unit="step", dynamic_ncols=True, mininterval=2.0)
            self.start, self.steps = None, 0

        def on_train_batch_end(self, batch, logs=None):
            self.bar.update(1)
            if self.start is None:
                self.start = time.perf_counter()
                return
            self.steps += 1
            rate = self.steps * config.batch_size / (time.perf_counter() - self.start)
            self.bar.set_postfix(loss=f"{logs['loss']:.2f}", recon=f"{logs['recon']:.2f}",
                                 kl=f"{logs['kl']:.2f}", img_s=f"{rate:.0f}", refresh=False)

        def on_epoch_end(self, epoch, logs=None):
            self.bar.close()

    return [StopOnNaN(), Checkpoint(),
            keras.callbacks.CSVLogger(str(vae_dir / "log.csv"), append=True),
            keras.callbacks.TensorBoard(str(vae_dir / "tensorboard"), write_graph=False, update_freq=100),
            ReconGrid(), Progress()]


def train(config: VaeTrainConfig, task: Task, paths: Sequence[Path], vae_dir: Path, steps_per_epoch: int,
          extra_callbacks: Sequence = ()) -> dict:
    """Build or restore V and fit it on the frame stream; returns the final metrics and throughput."""
    import keras

    from vae.model import build_vae

    keras.utils.set_random_seed(config.seed)
    keras.config.set_dtype_policy(config.precision)
    model = build_vae(task, seed=config.seed, kl_tolerance=config.kl_tolerance)
    # Adam with TF1's defaults (β1 0.9, β2 0.999, ε 1e-8); Keras's default ε is 1e-7.
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate, epsilon=1e-8))
    model.optimizer.build(model.trainable_variables)
    checkpoint = vae_dir / CHECKPOINT_FILE
    ensure_dir(checkpoint.parent)
    if checkpoint.exists():
        try:
            model.load_weights(checkpoint)
        except Exception as err:
            raise UserError(f"{checkpoint}: cannot be restored ({type(err).__name__}); delete it to restart "
                            "stage 2 from scratch") from None
    start_step = int(model.optimizer.iterations)
    total_steps = config.epochs * steps_per_epoch
    if start_step:
        print(f"[stage 2] resuming from the checkpoint at step {start_step} of {total_steps}", flush=True)

    stream_seed = int(np.random.SeedSequence([config.seed, start_step]).generate_state(1)[0] & 0x7FFFFFFF)
    frames = frame_dataset(paths, task, config.batch_size, seed=stream_seed,
                           shuffle_buffer=config.shuffle_buffer).repeat()
    preview = preview_frames(paths, task)
    callbacks = [*make_callbacks(model, vae_dir, preview, config, steps_per_epoch), *extra_callbacks]

    start = time.perf_counter()
    epoch, done_in_epoch = divmod(start_step, steps_per_epoch)
    if epoch < config.epochs and done_in_epoch:
        # Finish the interrupted epoch with its remaining steps, then run the rest as usual.
        model.fit(frames, epochs=epoch + 1, initial_epoch=epoch,
                  steps_per_epoch=steps_per_epoch - done_in_epoch, callbacks=callbacks, shuffle=False, verbose=0)
        epoch += 1
    if epoch < config.epochs:
        model.fit(frames, epochs=config.epochs, initial_epoch=epoch, steps_per_epoch=steps_per_epoch,
                  callbacks=callbacks, shuffle=False, verbose=0)
    seconds = time.perf_counter() - start
    trained = int(model.optimizer.iterations) - start_step

    if config.precision != "float32":
        keras.config.set_dtype_policy("float32")
        float_model = build_vae(task, seed=config.seed, kl_tolerance=config.kl_tolerance)
        float_model.set_weights(model.get_weights())
        model = float_model
    write_grid(vae_dir / "recon.png", preview, reconstruct(model, preview))
    return {"model": model, "metrics": last_logged(vae_dir / "log.csv"), "steps": int(total_steps), "seconds_this_run": round(seconds, 1),
            "images_per_second": round(trained * config.batch_size / seconds, 1) if seconds > 0 else 0.0}


def main(argv: Sequence[str] | None = None, extra_callbacks: Sequence = ()) -> int:
    config = parse_config(VaeTrainConfig, argv)
    task = get_task(config.task)
    if not config.out:
        raise UserError("--out is required (the run directory)")
    for name in ("epochs", "batch_size", "checkpoint_every", "shuffle_buffer"):
        if getattr(config, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.learning_rate <= 0 or config.max_frames < 0 or config.kl_tolerance < 0:
        raise UserError("--learning-rate must be positive; --max-frames and --kl-tolerance non-negative")
    if config.precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}")

    out = Path(config.out)
    paths = list_episodes(out / "record")
    frames_recorded = count_frames(paths, task)
    epoch_frames = min(frames_recorded, config.max_frames) if config.max_frames else frames_recorded
    steps_per_epoch = epoch_frames // config.batch_size
    if steps_per_epoch < 1:
        raise UserError(f"{out / 'record'} holds {frames_recorded} frames, fewer than one batch of "
                        f"{config.batch_size}")
    vae_dir = ensure_dir(out / "vae")
    record = stage_record(config, data={"episodes": len(paths), "frames": frames_recorded})
    state = check_previous(vae_dir, {**record["settings"], "data": record["data"]})
    if state == "done":
        print(f"[stage 2] {vae_dir} is already trained with these settings; nothing to do", flush=True)
        return 0
    if state == "new":
        for stale in ("checkpoint", "recon", "tensorboard", "log.csv"):
            target = vae_dir / stale
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    write_json(vae_dir / "config.json", record)
    print(f"[stage 2] {task.name}: V (z = {task.z_size}) on {frames_recorded} frames of {len(paths)} episodes; "
          f"{config.epochs} epochs × {steps_per_epoch} steps of {config.batch_size} ({config.precision}) → "
          f"{vae_dir}", flush=True)

    from vae.model import save_vae

    result = train(config, task, paths, vae_dir, steps_per_epoch, extra_callbacks)
    model = result.pop("model")
    save_vae(model, vae_dir, task)
    shutil.rmtree(vae_dir / "checkpoint", ignore_errors=True)
    write_json(vae_dir / "config.json", {**record, "result": result})
    metrics = result["metrics"]
    print(f"[stage 2] done: loss {metrics.get('loss')} (recon {metrics.get('recon')}, KL {metrics.get('kl')}), "
          f"{result['images_per_second']} images/s", flush=True)
    return 0


if __name__ == "__main__":
    run(main)
