"""Stage 1: collect random-policy rollouts of a task's real env into `OUT/record/` (WME: extract.py).

Episode i is a deterministic function of (seed, i): rerunning writes identical arrays, and rerunning
after a kill skips the finished episodes. Episodes are collected by `--workers` processes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from controller.agent import Agent, ExploringAgent, FixedPolicy, Policy
from env.common.cli import UserError, check_stage_flags, parse_config, run
from env.common.files import stage_record, write_json
from env.common.processes import init_worker, stop_processes
from env.common.rundir import COMPLETE, RECORD, open_output
from env.episodes import RECORD_RESUMABLE, episode_path, write_episode
from env.tasks import Task, check_backend, get_task, implied_settings
from env.wrappers import FULL_EPISODE_BACKENDS, make_env

MAX_ATTEMPTS = 100
"""Tries per episode slot to draw an episode longer than the task's minimum length."""

RESUMABLE_SETTINGS = RECORD_RESUMABLE
"""Settings a rerun may change and still add to the same `record/` (every other setting must match)."""


@dataclass
class ExtractConfig:
    """Collect random-policy episodes (stage 1)."""

    out: str = field(default="", metadata={"help": "run directory; episodes go to OUT/record/"})
    task: str = field(default="carracing", metadata={"help": "carracing or doom"})
    episodes: int = field(default=10_000, metadata={"help": "episodes to keep (original: first 10,000 recorded files)"})
    max_steps: int = field(
        default=0, metadata={"help": "step cap per episode; 0 = the task's cap (car 1000, Doom 2100)"}
    )
    workers: int = field(default=os.cpu_count() or 1, metadata={"help": "collection processes"})
    seed: int = field(default=0, metadata={"help": "episode i is a function of (seed, i)"})
    backend: str = field(
        default="",
        metadata={
            "help": "the engine that plays: car gymnasium or envpool, Doom vizdoom; '' = the task's (car envpool)"
        },
    )
    play: str = field(
        default="",
        metadata={
            "help": "a controller's params file, or a run directory RUN for RUN/controller/<mode>/best.json: play it, with RUN's V and M, instead "
            "of the data-collection policy (iterative training); '' = the task's collection policy"
        },
    )
    explore: float = field(
        default=0.3,
        metadata={"help": "with --play: the chance that a segment of 1-10 steps holds a uniform random action"},
    )
    mirror: float = field(
        default=0.0,
        metadata={
            "help": "with --play: the chance that an episode is played by C's mirror image (frames flipped left to "
            "right, actions reflected), so M also sees the side C avoids; 0 = off, as the paper"
        },
    )
    round: int = field(
        default=0,
        metadata={
            "help": "iterative training round: episode i is a function of (seed, i) in round 0, "
            "of (seed, i, round) after"
        },
    )
    restart_on_change: bool = field(
        default=False,
        metadata={
            "help": "when OUT/record/ was collected with other settings, move it to OUT/record.previous and collect "
            "afresh (run.sh sets this); by default that is refused"
        },
    )


def episode_seeds(config: ExtractConfig, index: int, attempt: int) -> np.random.SeedSequence:
    """The seeds of attempt `attempt` at episode slot `index`: its env seed and its policy's stream."""
    return np.random.SeedSequence([config.seed, index, attempt] + ([config.round] if config.round else []))


def played_controller(task: Task, config: ExtractConfig):
    """With --play: (params file, controller shape, params, its record, the run directory of its V and M)."""
    from controller.artifacts import params_path, read_params

    params_file = params_path(config.play, task)
    shape, params, record = read_params(params_file, task)
    return params_file, shape, params, record, params_file.parent.parent.parent


def make_player(task: Task, config: ExtractConfig) -> Policy:
    """What stage 1 plays: the collection policy, or with --play a trained controller with exploration."""
    if not config.play:
        return FixedPolicy(task, task.collect_policy)
    _, shape, params, _, run_dir = played_controller(task, config)
    agent = Agent.load(run_dir, task, shape)
    agent.set_params(params)
    return ExploringAgent(agent, config.explore, config.mirror)


def played_inputs(task: Task, config: ExtractConfig) -> dict[str, str]:
    """With --play: the fingerprints of the controller and of the V and M it plays with (checked to match)."""
    from controller.artifacts import params_sha256
    from controller.train import trained_models

    params_file, shape, params, record, run_dir = played_controller(task, config)
    return {"controller": params_sha256(params), **trained_models(params_file, record, run_dir, task, shape)}


def collect_episode(env, task: Task, config: ExtractConfig, index: int, record_dir: Path, player: Policy) -> int:
    """Play and write episode slot `index` with `player` (make_player); returns its length. Short Doom episodes
    are redrawn."""
    for attempt in range(MAX_ATTEMPTS):
        seeds = episode_seeds(config, index, attempt)
        env_seed = int(seeds.generate_state(1)[0] & 0x7FFFFFFF)
        player.reset(np.random.default_rng(seeds))
        obs, _ = env.reset(seed=env_seed)
        frames, actions, rewards, dones = [], [], [], []
        for _ in range(config.max_steps):
            action = player.act(obs)
            frames.append(obs)
            actions.append(action)
            obs, reward, terminated, truncated, info = env.step(action)
            rewards.append(reward)
            dones.append(bool(info.get("env_terminated", terminated)))
            if terminated or truncated:
                break
        if len(frames) > task.min_episode_length:
            write_episode(
                episode_path(record_dir, index),
                task,
                np.stack(frames),
                np.stack(actions).astype(np.float32),
                np.asarray(rewards, np.float32),
                np.asarray(dones, bool),
                env_seed,
            )
            return len(frames)
    raise RuntimeError(
        f"episode {index}: no episode longer than {task.min_episode_length} steps in {MAX_ATTEMPTS} attempts"
    )


def _worker(config_dict: dict, record_dir: str, jobs, results) -> None:
    """Worker process: build one env, collect the episode indices it is handed until None."""
    init_worker()
    config = ExtractConfig(**config_dict)
    task = get_task(config.task)
    env = make_env(task, max_steps=config.max_steps, full_episode=task.collect_full_episode, backend=config.backend)
    player = make_player(task, config)
    try:
        while (index := jobs.get()) is not None:
            try:
                results.put(("ok", index, collect_episode(env, task, config, index, Path(record_dir), player)))
            except Exception:
                results.put(("error", index, traceback.format_exc()))
                return
    finally:
        env.close()


def _collect_parallel(config: ExtractConfig, pending: list[int], record_dir: Path, progress) -> int:
    """Collect `pending` episodes with `config.workers` processes; returns frames collected."""
    ctx = mp.get_context("spawn")
    jobs, results = ctx.Queue(), ctx.Queue()
    for index in pending:
        jobs.put(index)
    workers = [
        ctx.Process(target=_worker, args=(asdict(config), str(record_dir), jobs, results), daemon=True)
        for _ in range(min(config.workers, len(pending)))
    ]
    for _ in workers:
        jobs.put(None)
    for w in workers:
        w.start()
    frames, finished = 0, False
    try:
        for _ in pending:
            while True:
                try:
                    status, index, payload = results.get(timeout=5.0)
                    break
                except queue.Empty:
                    dead = [w for w in workers if w.exitcode not in (None, 0)]
                    if dead:
                        raise RuntimeError(
                            f"a collection worker died (exit code {dead[0].exitcode}); rerun to resume"
                        ) from None
            if status == "error":
                raise RuntimeError(f"collecting episode {index} failed:\n{payload}")
            frames += payload
            progress(payload)
        finished = True
    finally:
        if finished:  # each worker has had its None: it closes its env and exits
            for w in workers:
                w.join(timeout=10)
        stop_processes(workers)
    return frames


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(ExtractConfig, argv)
    task = get_task(config.task)
    check_stage_flags(config, ("episodes", "workers"))
    if config.max_steps == 0:
        config.max_steps = task.max_steps
    config.backend = check_backend(task, config.backend)
    if task.collect_full_episode and config.backend not in FULL_EPISODE_BACKENDS:
        raise UserError(
            f"stage 1 plays {task.name} episodes on past the env's termination to the step cap, as the original; "
            f"{config.backend} ends an episode there: use --backend {' or '.join(FULL_EPISODE_BACKENDS)}"
        )
    if config.max_steps <= task.min_episode_length:
        raise UserError(
            f"--max-steps must exceed {task.name}'s minimum kept episode length "
            f"{task.min_episode_length}, got {config.max_steps}"
        )
    if not (0.0 <= config.explore <= 1.0 and 0.0 <= config.mirror <= 1.0) or config.round < 0:
        raise UserError(
            f"--explore and --mirror must lie in [0, 1] and --round be ≥ 0, "
            f"got {config.explore}, {config.mirror} and {config.round}"
        )
    inputs = played_inputs(task, config) if config.play else {}
    record_dir = Path(config.out) / "record"
    record = stage_record(config, implied=implied_settings(task), **({"inputs": inputs} if inputs else {}))
    state = open_output(
        record_dir, record, stage="stage 1", restart=config.restart_on_change, resumable=RESUMABLE_SETTINGS
    )
    pending = [i for i in range(config.episodes) if not episode_path(record_dir, i).exists()]
    if state == COMPLETE and not pending:
        print(f"[stage 1] {record_dir}: all {config.episodes} already done; nothing to do", flush=True)
        return 0
    write_json(record_dir / RECORD, record)
    print(
        f"[stage 1] {task.name}: {config.episodes} episodes (≤ {config.max_steps} steps) → {record_dir}; "
        f"{config.episodes - len(pending)} already done, {config.workers} worker(s)",
        flush=True,
    )
    start = time.perf_counter()
    bar = tqdm(total=config.episodes, initial=config.episodes - len(pending), unit="ep", dynamic_ncols=True)
    frames = 0

    def progress(length: int) -> None:
        nonlocal frames
        frames += length
        bar.update(1)
        bar.set_postfix(frames=frames, fps=f"{frames / (time.perf_counter() - start):.0f}")

    try:
        if pending and config.workers == 1:
            env = make_env(
                task, max_steps=config.max_steps, full_episode=task.collect_full_episode, backend=config.backend
            )
            player = make_player(task, config)
            try:
                for index in pending:
                    progress(collect_episode(env, task, config, index, record_dir, player))
            finally:
                env.close()
        elif pending:
            _collect_parallel(config, pending, record_dir, progress)
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    rate = frames / elapsed if elapsed > 0 else 0.0
    write_json(
        record_dir / RECORD,
        stage_record(
            config,
            implied=implied_settings(task),
            **({"inputs": inputs} if inputs else {}),
            result={
                "episodes": config.episodes,
                "new_frames": frames,
                "seconds": round(elapsed, 2),
                "frames_per_second": round(rate, 1),
            },
        ),
    )
    print(
        f"[stage 1] done: {len(pending)} new episodes, {frames} frames in {elapsed:.1f} s ({rate:.0f} frames/s)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    run(main)
