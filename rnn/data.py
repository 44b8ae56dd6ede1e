"""M's training batches from `series/`, keyed by global step (ORIGINAL.md §3.2, §3.3).

A batch is a pure function of (seed, step), so a resumed run sees exactly the batches the killed one
would have, and nothing holds the data set in memory: a batch reads only the episodes it needs.

- 'episodes' (car): step s draws `batch` episodes without replacement, by a permutation seeded with
  (seed, s) as the original's `random_batch`, each cut to its first `seq_len` frames.
- 'streams' (Doom): in epoch e the episodes, permuted by (seed, e), are chained into one stream with
  restart = 1 on each episode's first frame, cut to a multiple of batch · seq_len and split into
  `batch` parallel streams; step s of the epoch is chunk s of every stream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from env.common.cli import UserError
from env.tasks import Task
from vae.series import read_series

FIELDS = ("mu", "logvar", "action", "reward", "done")


class SeriesSet:
    """The series files of a run and their lengths; reads episodes by index."""

    def __init__(self, paths: Sequence[Path], task: Task):
        self.paths, self.task = list(paths), task
        self.lengths = np.array([len(read_series(p, task, fields=("done",))["done"]) for p in self.paths])

    def read(self, index: int) -> dict[str, np.ndarray]:
        """Episode `index`: mu, logvar float32 [T, z], action float32 [T, A], reward, done float32 [T]."""
        data = read_series(self.paths[index], self.task, fields=FIELDS)
        return {key: data[key].astype(np.float32, copy=False) for key in FIELDS}

    def __len__(self) -> int:
        return len(self.paths)


def step_rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


class EpisodeBatches:
    """'episodes' batching: step → {mu, logvar [B, T, z], action [B, T, A], reward, done [B, T]} of B whole
    episodes."""

    def __init__(self, series: SeriesSet, batch: int, seq_len: int, seed: int):
        short = int((series.lengths < seq_len).sum())
        if short:
            raise UserError(
                f"{short} of {len(series)} series are shorter than --seq-len {seq_len} "
                f"(shortest: {series.lengths.min()} frames)"
            )
        if batch > len(series):
            raise UserError(f"--batch-size {batch} exceeds the {len(series)} episodes in series/")
        self.series, self.batch, self.seq_len, self.seed = series, batch, seq_len, seed
        self.steps_per_epoch = math.ceil(len(series) / batch)
        self.pool = ThreadPoolExecutor(4)

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        picks = step_rng(self.seed, step).permutation(len(self.series))[: self.batch]
        episodes = list(self.pool.map(self.series.read, picks))
        return {key: np.stack([ep[key][: self.seq_len] for ep in episodes]) for key in FIELDS}


class StreamBatches:
    """'streams' batching: step → {mu, logvar [B, S, z], action [B, S, A], restart [B, S]}, chunk
    `step mod chunks_per_epoch` of the B parallel streams of epoch `step // chunks_per_epoch`."""

    def __init__(self, series: SeriesSet, batch: int, seq_len: int, seed: int):
        total = int(series.lengths.sum())
        self.chunks_per_epoch = total // (batch * seq_len)
        if self.chunks_per_epoch < 1:
            raise UserError(
                f"series/ holds {total} frames, fewer than one batch of {batch} streams × --seq-len {seq_len}"
            )
        self.series, self.batch, self.seq_len, self.seed = series, batch, seq_len, seed
        self.steps_per_epoch = self.chunks_per_epoch
        self.stream_len = self.chunks_per_epoch * seq_len
        self.layout_epoch, self.order, self.starts = -1, None, None
        self.cache: dict[int, dict[str, np.ndarray]] = {}

    def _layout(self, epoch: int) -> None:
        if epoch != self.layout_epoch:
            self.order = step_rng(self.seed, epoch).permutation(len(self.series))
            self.starts = np.concatenate([[0], np.cumsum(self.series.lengths[self.order])])
            self.layout_epoch, self.cache = epoch, {}

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        epoch, chunk = divmod(step, self.chunks_per_epoch)
        self._layout(epoch)
        z = self.series.task.z_size
        out = {
            "mu": np.empty((self.batch, self.seq_len, z), np.float32),
            "logvar": np.empty((self.batch, self.seq_len, z), np.float32),
            "action": np.empty((self.batch, self.seq_len, self.series.task.action_dim), np.float32),
            "reward": np.empty((self.batch, self.seq_len), np.float32),
            "done": np.empty((self.batch, self.seq_len), np.float32),
            "restart": np.zeros((self.batch, self.seq_len), np.float32),
        }
        used: dict[int, dict[str, np.ndarray]] = {}
        for b in range(self.batch):
            position = b * self.stream_len + chunk * self.seq_len
            filled = 0
            while filled < self.seq_len:
                slot = int(np.searchsorted(self.starts, position, side="right")) - 1
                offset = position - int(self.starts[slot])
                episode = self.order[slot]
                data = used.get(episode) or self.cache.get(episode) or self.series.read(episode)
                used[episode] = data
                take = min(self.seq_len - filled, len(data["mu"]) - offset)
                for key in FIELDS:
                    out[key][b, filled : filled + take] = data[key][offset : offset + take]
                if offset == 0:
                    out["restart"][b, filled] = 1.0
                filled += take
                position += take
        self.cache = used
        return out
