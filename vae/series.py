"""Stage 3: encode every episode of `OUT/record/` with V into `OUT/series/` (WME: series.py).

One file per episode, `series/ep_<index>.npz`, the only input of M's training:

| field  | dtype   | shape  | meaning                                                   |
|--------|---------|--------|-----------------------------------------------------------|
| mu     | float32 | [T, z] | V's mean of frame t                                       |
| logvar | float32 | [T, z] | V's log σ² of frame t (M resamples z from these per batch) |
| action | float32 | [T, A] | copied from the episode file                              |
| reward | float32 | [T]    | copied                                                    |
| done   | bool    | [T]    | copied                                                    |
| task   | str     | []     | task name                                                 |
| seed   | int64   | []     | the episode's env seed                                    |

Rerunning skips episodes already encoded; `series/config.json` names the V (a hash of its weights)
so that a retrained V is never mixed with series encoded by an older one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from env.common.cli import check_stage_flags, parse_config, run
from env.common.files import read_json, stage_record, write_json
from env.common.rundir import COMPLETE, RECORD, open_output
from env.episodes import FormatError, Schema, list_episodes, read_episode, read_npz, record_fingerprint, write_npz
from env.tasks import FRAME_SIZE, Task, get_task
from vae.artifacts import check_vae_dir, fingerprint

SERIES = Schema(
    name="series",
    arrays={
        "mu": ("float32", ("T", "Z")),
        "logvar": ("float32", ("T", "Z")),
        "action": ("float32", ("T", "A")),
        "reward": ("float32", ("T",)),
        "done": ("bool", ("T",)),
    },
    scalars={"task": "str", "seed": "int64"},
)

RESUMABLE_SETTINGS = ("batch_size",)
"""Frames per encoder call change the speed, not the encoding: a rerun may change them."""


@dataclass
class SeriesConfig:
    """Encode recorded frames to V's (mu, logvar) per episode (stage 3)."""

    out: str = field(default="", metadata={"help": "run directory: reads OUT/record/ and OUT/vae/, writes OUT/series/"})
    task: str = field(default="carracing", metadata={"help": "carracing or doom"})
    batch_size: int = field(default=1000, metadata={"help": "frames per encoder call (WME car series.py: 1000)"})
    restart_on_change: bool = field(
        default=False,
        metadata={
            "help": "when OUT/series/ was encoded by another V, move it to OUT/series.previous and encode afresh "
            "(run.sh sets this); by default that is refused"
        },
    )


def write_series(path: Path, task: Task, mu: np.ndarray, logvar: np.ndarray, episode: dict) -> None:
    """Validate and atomically write one episode's series (mu, logvar float32 [T, z] plus the episode's
    action, reward, done and seed)."""
    write_npz(
        path,
        SERIES,
        {
            "mu": mu,
            "logvar": logvar,
            "action": episode["action"],
            "reward": episode["reward"],
            "done": episode["done"],
            "task": np.str_(task.name),
            "seed": episode["seed"],
        },
        {"Z": task.z_size, "A": task.action_dim},
    )


def read_series(path: Path, task: Task, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Read one series file of `task`; FormatError naming file and field on any defect or task mismatch."""
    if fields is not None and "task" not in fields:
        fields = [*fields, "task"]
    data = read_npz(path, SERIES, {"Z": task.z_size, "A": task.action_dim}, fields)
    if str(data["task"]) != task.name:
        raise FormatError(f"{path}: series was encoded for task {str(data['task'])!r}, not {task.name!r}")
    return data


def list_series(series_dir: Path) -> list[Path]:
    """The series files in `series_dir`, in episode order; a UserError if there are none."""
    return list_episodes(series_dir, made_by="stage 3, vae.series")


def series_fingerprint(series_dir: Path) -> str | None:
    """The fingerprint of the V that encoded `series_dir` (from its record), or None if it has none."""
    path = Path(series_dir) / RECORD
    return (read_json(path).get("inputs") or {}).get("vae") if path.exists() else None


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(SeriesConfig, argv)
    task = get_task(config.task)
    check_stage_flags(config, ("batch_size",))

    out = Path(config.out)
    paths = list_episodes(out / "record")
    vae_dir = out / "vae"
    check_vae_dir(vae_dir, task)
    vae_id = fingerprint(vae_dir)
    series_dir = out / "series"
    record = stage_record(config, inputs={"vae": vae_id, "record": record_fingerprint(out / "record")})
    state = open_output(
        series_dir, record, stage="stage 3", restart=config.restart_on_change, resumable=RESUMABLE_SETTINGS
    )
    pending = [p for p in paths if not (series_dir / p.name).exists()]
    if state == COMPLETE and not pending:
        print(f"[stage 3] {series_dir} already holds every episode encoded by this V; nothing to do", flush=True)
        return 0
    write_json(series_dir / RECORD, record)
    print(
        f"[stage 3] {task.name}: encoding {len(paths)} episodes → {series_dir}; "
        f"{len(paths) - len(pending)} already done",
        flush=True,
    )
    start = time.perf_counter()
    frames = encode_all(pending, task, vae_dir, series_dir, config.batch_size) if pending else 0
    elapsed = time.perf_counter() - start
    rate = frames / elapsed if elapsed > 0 else 0.0
    write_json(
        series_dir / "config.json",
        {
            **record,
            "result": {
                "episodes": len(paths),
                "new_frames": frames,
                "seconds": round(elapsed, 2),
                "frames_per_second": round(rate, 1),
            },
        },
    )
    print(
        f"[stage 3] done: {len(pending)} episodes, {frames} frames in {elapsed:.1f} s ({rate:.0f} frames/s)", flush=True
    )
    return 0


def encode_all(paths: Sequence[Path], task: Task, vae_dir: Path, series_dir: Path, batch_size: int) -> int:
    """Encode `paths` into `series_dir`, reading the next episode and writing the last one in background
    threads while V encodes; returns the number of frames encoded."""
    import tensorflow as tf

    from vae.model import load_vae

    model = load_vae(vae_dir, task)

    @tf.function(input_signature=[tf.TensorSpec((None, FRAME_SIZE, FRAME_SIZE, 3), tf.uint8)])
    def encode(obs):
        return model.encoder(model.to_unit(obs), training=False)

    def read(path: Path) -> dict:
        return read_episode(path, task, fields=("obs", "action", "reward", "done", "seed"))

    frames = 0
    start = time.perf_counter()
    bar = tqdm(total=len(paths), unit="ep", dynamic_ncols=True, mininterval=1.0)
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        upcoming = reader.submit(read, paths[0])
        written = None
        for i, path in enumerate(paths):
            episode = upcoming.result()
            if i + 1 < len(paths):
                upcoming = reader.submit(read, paths[i + 1])
            parts = [encode(episode["obs"][s : s + batch_size]) for s in range(0, len(episode["obs"]), batch_size)]
            mu = np.concatenate([np.asarray(p[0]) for p in parts])
            logvar = np.concatenate([np.asarray(p[1]) for p in parts])
            if written is not None:
                written.result()
            written = writer.submit(write_series, series_dir / path.name, task, mu, logvar, episode)
            frames += len(mu)
            bar.update(1)
            bar.set_postfix(fps=f"{frames / (time.perf_counter() - start):.0f}", refresh=False)
        if written is not None:
            written.result()
    bar.close()
    return frames


if __name__ == "__main__":
    run(main)
