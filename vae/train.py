"""Stage 2: train V on frames streamed from `OUT/record/` with `fit()` (WME: vae_train.py).

Writes `OUT/vae/`: `vae.keras`, `weights.npz` (named weights for the numpy twin), `config.json`,
`log.csv`, `tensorboard/`, `recon/epoch_NNN.png` (frames above reconstructions of their mean z).
A checkpoint of model and optimizer is written atomically every `--checkpoint-every` steps and at
each epoch end; rerunning the same command after a kill continues from it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from env.common.cli import UserError, check_stage_flags, parse_config, run
from env.common.files import atomic_write, ensure_dir, stage_record, write_json
from env.common.hardware import resolve_precision, training_device
from env.common.rundir import RECORD
from env.common.training import fit_from, last_logged, open_training_output, restore, standard_callbacks
from env.episodes import first_bad_episode, frame_dataset, list_episodes, read_episode
from env.tasks import Task, get_task
from vae import KL_TOLERANCE
from vae.artifacts import MODEL_FILE

PRECISIONS = ("float32", "mixed_bfloat16", "auto")
PREVIEW_FRAMES = 8
"""Frames shown (with their reconstructions) in each epoch's PNG grid."""


@dataclass
class VaeTrainConfig:
    """Train V, the ConvVAE, on frames streamed from OUT/record/ (stage 2)."""

    out: str = field(default="", metadata={"help": "run directory: reads OUT/record/, writes OUT/vae/"})
    task: str = field(default="carracing", metadata={"help": "carracing or doom"})
    epochs: int = field(default=10, metadata={"help": "passes over the frames (WME vae_train.py: 10)"})
    batch_size: int = field(default=100, metadata={"help": "frames per update (WME: 100)"})
    learning_rate: float = field(default=1e-4, metadata={"help": "Adam learning rate, constant (WME: 1e-4)"})
    kl_tolerance: float = field(
        default=KL_TOLERANCE, metadata={"help": "free bits: per-sample KL floored at this × z size (WME: 0.5)"}
    )
    max_frames: int = field(
        default=0, metadata={"help": "frames per epoch; 0 = every recorded frame (as the original)"}
    )
    shuffle_buffer: int = field(default=10_000, metadata={"help": "frames in the tf.data shuffle buffer"})
    checkpoint_every: int = field(default=1000, metadata={"help": "steps between checkpoints"})
    precision: str = field(
        default="float32",
        metadata={
            "help": "float32 (the original), mixed_bfloat16, or auto: mixed_bfloat16 where the training device "
            "computes bf16 natively (a GPU of compute capability ≥ 8.0, a CPU with AVX-512 BF16 or AMX), else float32"
        },
    )
    seed: int = field(default=0, metadata={"help": "seeds initialisation, sampling and the frame stream"})
    restart_on_change: bool = field(
        default=False,
        metadata={
            "help": "when OUT/vae/ was trained with other settings or data, move it to OUT/vae.previous and train "
            "afresh (run.sh sets this); by default that is refused"
        },
    )


def count_frames(paths: Sequence[Path], task: Task) -> int:
    """Total frames of the episode files (checks each belongs to `task`; reads only the small `done` field)."""
    return sum(len(read_episode(p, task, fields=("done",))["done"]) for p in paths)


def preview_frames(paths: Sequence[Path], task: Task) -> np.ndarray:
    """uint8 [8, 64, 64, 3]: frames of up to 8 episodes spread over the record, the k-th taken at
    (k + 1)/16 of its episode, so the grid spans early (car: on the road) to mid-episode frames."""
    picks = np.linspace(0, len(paths) - 1, PREVIEW_FRAMES).astype(int)
    frames = []
    for k, i in enumerate(picks):
        obs = read_episode(paths[i], task, fields=("obs",))["obs"]
        frames.append(obs[len(obs) * (k + 1) // (2 * PREVIEW_FRAMES)])
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


def recon_grid_callback(model, vae_dir: Path, preview: np.ndarray):
    """Writes `vae/recon/epoch_NNN.png` (frames above the decoding of their mean z) after every epoch."""
    import keras

    class ReconGrid(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            ensure_dir(vae_dir / "recon")
            write_grid(vae_dir / "recon" / f"epoch_{epoch + 1:03d}.png", preview, reconstruct(model, preview))

    return ReconGrid()


def train(
    config: VaeTrainConfig,
    task: Task,
    paths: Sequence[Path],
    vae_dir: Path,
    steps_per_epoch: int,
    extra_callbacks: Sequence = (),
) -> dict:
    """Build or restore V and fit it on the frame stream; returns the final model, metrics and throughput."""
    import keras
    import tensorflow as tf

    from vae.model import build_vae

    keras.utils.set_random_seed(config.seed)
    keras.config.set_dtype_policy(config.precision)
    model = build_vae(task, seed=config.seed, kl_tolerance=config.kl_tolerance)
    # Adam with TF1's defaults (β1 0.9, β2 0.999, ε 1e-8); Keras's default ε is 1e-7.
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate, epsilon=1e-8))
    start_step = restore(model, vae_dir, "stage 2")
    total_steps = config.epochs * steps_per_epoch
    if start_step:
        print(f"[stage 2] resuming from the checkpoint at step {start_step} of {total_steps}", flush=True)

    def frames_from(step: int):
        seed = int(np.random.SeedSequence([config.seed, step]).generate_state(1)[0] & 0x7FFFFFFF)
        return frame_dataset(paths, task, config.batch_size, seed=seed, shuffle_buffer=config.shuffle_buffer).repeat()

    preview = preview_frames(paths, task)
    callbacks = [
        *standard_callbacks(
            model,
            vae_dir,
            config.checkpoint_every,
            steps_per_epoch,
            total_steps,
            unit="img",
            per_step=config.batch_size,
            stage="stage 2",
        ),
        recon_grid_callback(model, vae_dir, preview),
        *extra_callbacks,
    ]
    start = time.perf_counter()
    try:
        fit_from(model, frames_from, start_step, total_steps, steps_per_epoch, callbacks)
    except tf.errors.OpError:
        bad = first_bad_episode(paths, task)  # the stream's error does not name the file; this does
        if bad is not None:
            raise bad from None
        raise
    seconds = time.perf_counter() - start
    trained = int(model.optimizer.iterations) - start_step

    if config.precision != "float32":
        keras.config.set_dtype_policy("float32")
        float_model = build_vae(task, seed=config.seed, kl_tolerance=config.kl_tolerance)
        float_model.set_weights(model.get_weights())
        model = float_model
    write_grid(vae_dir / "recon.png", preview, reconstruct(model, preview))
    return {
        "model": model,
        "metrics": last_logged(vae_dir / "log.csv", ("loss", "recon", "kl")),
        "steps": int(total_steps),
        "seconds_this_run": round(seconds, 1),
        "images_per_second": round(trained * config.batch_size / seconds, 1) if seconds > 0 else 0.0,
    }


def main(argv: Sequence[str] | None = None, extra_callbacks: Sequence = ()) -> int:
    config = parse_config(VaeTrainConfig, argv)
    task = get_task(config.task)
    check_stage_flags(config, ("epochs", "batch_size", "checkpoint_every", "shuffle_buffer"))
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
        raise UserError(f"{out / 'record'} holds {frames_recorded} frames, fewer than one batch of {config.batch_size}")
    vae_dir = out / "vae"
    device = training_device()
    config.precision = resolve_precision(config.precision, device)
    record = stage_record(config, inputs={"episodes": len(paths), "frames": frames_recorded})
    if open_training_output(vae_dir, record, "stage 2", config.restart_on_change, MODEL_FILE):
        return 0
    print(
        f"[stage 2] {task.name}: V (z = {task.z_size}) on {frames_recorded} frames of {len(paths)} episodes; "
        f"{config.epochs} epochs × {steps_per_epoch} steps of {config.batch_size} ({config.precision}) → "
        f"{vae_dir}",
        flush=True,
    )

    from vae.model import save_vae

    result = train(config, task, paths, vae_dir, steps_per_epoch, extra_callbacks)
    model = result.pop("model")
    save_vae(model, vae_dir, task)
    shutil.rmtree(vae_dir / "checkpoint", ignore_errors=True)
    write_json(vae_dir / RECORD, {**record, "result": {**result, "device": device}})
    metrics = result["metrics"]
    print(
        f"[stage 2] done: loss {metrics.get('loss')} (recon {metrics.get('recon')}, KL {metrics.get('kl')}), "
        f"{result['images_per_second']} images/s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    run(main)
