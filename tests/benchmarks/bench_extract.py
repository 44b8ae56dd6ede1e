"""Stage 1 throughput: bare env steps/s vs collection frames/s with 1 and 2 workers, for both tasks.

Run with `./run.sh bench` (or `python tests/benchmarks/bench_extract.py [--quick]`). Prints one table.
Collection should reach ≥ 0.9 × workers × bare steps/s for CarRacing; for Doom, whose env is far
faster, the time split (env, resize, policy, compress + write) shows where the rest goes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from env import extract  # noqa: E402
from env.episodes import write_episode  # noqa: E402
from env.policies import make_collection_policy  # noqa: E402
from env.tasks import get_task  # noqa: E402
from env.wrappers import make_env, process_frame  # noqa: E402

QUICK = "--quick" in sys.argv
SIZES = {"carracing": (400 if QUICK else 1000, 2 if QUICK else 10),
         "doom": (2100, 10 if QUICK else 40)}


def bare_steps_per_second(task_name: str, steps: int) -> float:
    """Steps/s of the underlying env alone: gymnasium CarRacing-v3 / VizDoom make_action + screen."""
    task = get_task(task_name)
    env = make_env(task)
    policy = make_collection_policy(task, np.random.default_rng(0))
    actions = [policy(t % task.max_steps) for t in range(steps)]  # the same action distribution as stage 1
    if task_name == "carracing":
        raw = env._env
        raw.reset(seed=0)
        start = time.perf_counter()
        for t in range(steps):
            if t % task.max_steps == 0:
                raw.reset(seed=t)
            raw.step(actions[t])
    else:
        game = env._game
        game.set_seed(0)
        for t in range(500):  # warm-up
            game.make_action(env.buttons(0.0), 1) if not game.is_episode_finished() else game.new_episode()
        game.new_episode()
        start = time.perf_counter()
        for t in range(steps):
            if game.is_episode_finished():
                game.new_episode()
            game.make_action(env.buttons(float(actions[t][0])), 1)
            if not game.is_episode_finished():
                game.get_state().screen_buffer
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def _bare_worker(task_name, steps, out):
    out.put(bare_steps_per_second(task_name, steps))


def bare_parallel(task_name: str, steps: int, workers: int) -> float:
    """Total bare steps/s with `workers` processes stepping their own env at once."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_bare_worker, args=(task_name, steps, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    rates = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def collection_frames_per_second(task_name: str, workers: int, episodes: int, max_steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        extract.main(["--task", task_name, "--episodes", str(episodes), "--max-steps", str(max_steps),
                      "--workers", str(workers), "--seed", "0", "--out", tmp])
        elapsed = time.perf_counter() - start
        frames = sum(np.load(p)["reward"].shape[0] for p in Path(tmp, "record").glob("ep_*.npz"))
    return frames / elapsed


def doom_time_split(episodes: int) -> dict[str, float]:
    """Seconds per frame spent in each part of Doom collection, in one process."""
    task = get_task("doom")
    env = make_env(task)
    game = env._game
    parts = {"env step + screen": 0.0, "crop + resize": 0.0, "policy": 0.0, "compress + write": 0.0}
    frames = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(episodes):
            rng = np.random.default_rng(i)
            policy = make_collection_policy(task, rng)
            game.set_seed(i)
            game.new_episode()
            obs_list, t = [], 0
            while not game.is_episode_finished() and t < task.max_steps:
                t0 = time.perf_counter()
                screen = game.get_state().screen_buffer
                t1 = time.perf_counter()
                obs_list.append(process_frame(screen, task.crop_rows))
                t2 = time.perf_counter()
                a = policy(t)
                t3 = time.perf_counter()
                game.make_action(env.buttons(float(a[0])), 1)
                t4 = time.perf_counter()
                parts["env step + screen"] += (t1 - t0) + (t4 - t3)
                parts["crop + resize"] += t2 - t1
                parts["policy"] += t3 - t2
                t += 1
            frames += t
            t0 = time.perf_counter()
            n = len(obs_list)
            write_episode(Path(tmp, f"{i}.npz"), task, np.stack(obs_list), np.zeros((n, 1), np.float32),
                          np.ones(n, np.float32), np.zeros(n, bool), i)
            parts["compress + write"] += time.perf_counter() - t0
    env.close()
    return {k: v / frames for k, v in parts.items()}


def main() -> None:
    print(f"# stage 1 benchmark — {platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}"
          f"{' (quick)' if QUICK else ''}")
    print(f"{'task':<10} {'bare 1 proc':>12} {'bare 2 procs':>13} {'collect 1 w':>12} {'ratio':>6} "
          f"{'collect 2 w':>12} {'ratio':>6}")
    for task_name, (max_steps, episodes) in SIZES.items():
        bare_steps = 3000 if task_name == "carracing" else 20000
        if QUICK:
            bare_steps //= 4
        bare1 = bare_steps_per_second(task_name, bare_steps)
        bare2 = bare_parallel(task_name, bare_steps, 2)
        c1 = collection_frames_per_second(task_name, 1, max(episodes // 2, 1), max_steps)
        c2 = collection_frames_per_second(task_name, 2, episodes, max_steps)
        print(f"{task_name:<10} {bare1:>10.0f}/s {bare2:>11.0f}/s {c1:>10.0f}/s {c1 / bare1:>6.2f} "
              f"{c2:>10.0f}/s {c2 / (2 * bare1):>6.2f}", flush=True)
    split = doom_time_split(5 if QUICK else 20)
    total = sum(split.values())
    print("doom collection, time per frame in one process: " + ", ".join(
        f"{k} {v * 1e6:.0f} µs ({v / total:.0%})" for k, v in split.items()))
    print("ratio = collection frames/s ÷ (workers × bare 1-process steps/s); "
          "collection wall time includes worker start-up")


if __name__ == "__main__":
    main()
