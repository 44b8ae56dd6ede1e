"""A picture of M's dream: a real episode's frames, V's reconstructions, and what M imagines when
given the episode's first frames and its actions, rolled forward at temperature τ.

    python -m rnn.visualize --task carracing --out runs/carracing-small --episode 0 --tau 1.0

Writes `OUT/rnn/dream_ep<i>_tau<τ>.png` (rows: real | V(real) | dream, every few frames) and a GIF
of the same three side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from env.common.cli import UserError, check_stage_flags, parse_config, run
from env.common.files import atomic_write
from env.episodes import episode_path, read_episode
from env.tasks import Task, get_task
from rnn.twin import RNNTwin, sample_z
from vae.series import read_series


@dataclass
class VisualizeConfig:
    """Write a real-vs-dreamed frame strip and GIF for one recorded episode."""

    out: str = field(default="", metadata={"help": "run directory with record/, series/, vae/ and rnn/"})
    task: str = field(default="carracing", metadata={"help": "carracing or doom"})
    episode: int = field(default=0, metadata={"help": "index of the recorded episode"})
    tau: float = field(default=1.0, metadata={"help": "sampling temperature of the dream"})
    context: int = field(default=1, metadata={"help": "real frames fed to M before it dreams on its own"})
    frames: int = field(default=100, metadata={"help": "frames shown (at most the episode's length)"})
    columns: int = field(default=10, metadata={"help": "frames in the PNG strip"})
    seed: int = field(default=0, metadata={"help": "seeds the sampling"})


def dream(
    twin: RNNTwin,
    task: Task,
    mu: np.ndarray,
    logvar: np.ndarray,
    actions: np.ndarray,
    context: int,
    tau: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """float32 [T, z] latents: sampled from V's (mu, logvar) for the first `context` frames, then M's own
    samples at temperature τ, driven by the recorded `actions` [T, A]."""
    steps = len(mu)
    z = np.empty_like(mu)
    h, c = twin.initial_state(1)
    for t in range(steps):
        if t < context:
            z[t] = mu[t] + np.exp(0.5 * logvar[t]) * rng.standard_normal(mu.shape[1]).astype(np.float32)
        if t + 1 == steps:
            break
        parts = [z[t : t + 1], actions[t : t + 1]]
        if task.rnn_extra_inputs:
            parts.append(np.array([[1.0 if t == 0 else 0.0]], np.float32))
        params, h, c = twin.step(np.concatenate(parts, axis=1), h, c)
        if t + 1 >= context:
            z[t + 1] = sample_z(params, tau, rng)[0]
    return z


def to_frames(decoder, z: np.ndarray) -> np.ndarray:
    """float32 [T, z] → uint8 [T, 64, 64, 3] through V's decoder."""
    images = np.asarray(decoder(z.astype(np.float32), training=False), np.float32)
    return np.clip(np.round(images * 255), 0, 255).astype(np.uint8)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(VisualizeConfig, argv)
    task = get_task(config.task)
    check_stage_flags(config)
    if config.tau <= 0 or config.context < 1 or config.frames < 2 or config.columns < 1:
        raise UserError("--tau must be positive, --context ≥ 1, --frames ≥ 2, --columns ≥ 1")
    out = Path(config.out)
    episode = read_episode(episode_path(out / "record", config.episode), task, fields=("obs", "action"))
    series = read_series(episode_path(out / "series", config.episode), task, fields=("mu", "logvar"))
    twin = RNNTwin.load(out / "rnn", task)
    from vae.model import load_vae

    decoder = load_vae(out / "vae", task).decoder
    steps = min(config.frames, len(episode["obs"]))
    z = dream(
        twin,
        task,
        series["mu"][:steps],
        series["logvar"][:steps],
        episode["action"][:steps],
        min(config.context, steps),
        config.tau,
        np.random.default_rng(config.seed),
    )
    rows = [episode["obs"][:steps], to_frames(decoder, series["mu"][:steps]), to_frames(decoder, z)]

    from PIL import Image

    picks = np.linspace(0, steps - 1, min(config.columns, steps)).astype(int)
    strip = np.concatenate([np.concatenate(list(row[picks]), axis=1) for row in rows], axis=0)
    name = f"dream_ep{config.episode:06d}_tau{config.tau:.2f}"
    png = out / "rnn" / f"{name}.png"
    atomic_write(
        png,
        lambda f: (
            Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2), Image.NEAREST).save(f, format="PNG")
        ),
    )
    frames = [
        Image.fromarray(np.concatenate([row[t] for row in rows], axis=1)).resize((384, 128), Image.NEAREST)
        for t in range(steps)
    ]
    gif = out / "rnn" / f"{name}.gif"
    atomic_write(
        gif, lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    )
    print(
        f"[dream] rows real | V(real) | dream (τ = {config.tau}, {config.context} real frame(s) of context) → "
        f"{png} and {gif}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    run(main)
