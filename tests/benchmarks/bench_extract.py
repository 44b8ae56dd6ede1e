"""Stage 1 throughput: bare env steps/s vs collection frames/s with 1 and 2 workers, for both tasks.

Run with `./run.sh bench` (or `python tests/benchmarks/bench_extract.py [--quick]`). Prints one table.
"Bare" replays the very episodes stage 1 collected (same env seeds, same actions) through the
underlying env alone — gymnasium CarRacing-v3 `step`, or VizDoom `make_action` + screen buffer — so the
ratio measures stage 1's own overhead: frame crop/resize, policy, compression, writing, worker start-up.
Collection should reach ≥ 0.9 × workers × bare steps/s for CarRacing; for Doom, whose env is far
faster, the time split shows where the rest goes.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from env import extract  # noqa: E402
from env.episodes import list_episodes, read_episode, write_episode  # noqa: E402
from env.policies import make_collection_policy  # noqa: E402
from env.tasks import get_task  # noqa: E402
from env.wrappers import make_env, process_frame  # noqa: E402

QUICK = "--quick" in sys.argv
EPISODES = {"carracing": 2 if QUICK else 6, "doom": 10 if QUICK else 60}
"""Episodes per worker in each collection run."""


def collect(task_name: str, workers: int, out: str) -> float:
    """Run stage 1 into `out`; returns frames/s over its whole wall time (start-up included)."""
    start = time.perf_counter()
    extract.main(
        [
            "--task",
            task_name,
            "--episodes",
            str(EPISODES[task_name] * workers),
            "--workers",
            str(workers),
            "--seed",
            str(workers),
            "--out",
            out,
        ]
    )
    elapsed = time.perf_counter() - start
    frames = sum(len(read_episode(p, fields=("reward",))["reward"]) for p in list_episodes(Path(out, "record")))
    return frames / elapsed


def bare_replay(task_name: str, record: Path) -> float:
    """Steps/s of the underlying env alone, replaying the recorded episodes' seeds and actions."""
    task = get_task(task_name)
    env = make_env(task, full_episode=task.collect_full_episode)
    steps, elapsed = 0, 0.0
    for path in list_episodes(record):
        ep = read_episode(path)
        env.reset(seed=int(ep["seed"]))
        if task_name == "carracing":
            raw = env.unwrapped._env
            start = time.perf_counter()
            for action in ep["action"]:
                raw.step(action)
        else:
            game = env.unwrapped._game
            buttons = [env.buttons(float(a[0])) for a in ep["action"]]
            start = time.perf_counter()
            for b in buttons:
                game.make_action(b, 1)
                if not game.is_episode_finished():
                    _ = game.get_state().screen_buffer
        elapsed += time.perf_counter() - start
        steps += len(ep["action"])
    env.close()
    return steps / elapsed


def doom_time_split(episodes: int) -> dict[str, float]:
    """Seconds per frame spent in each part of Doom collection, in one process."""
    task = get_task("doom")
    env = make_env(task)
    game = env._game
    parts = {"env step + screen": 0.0, "crop + resize": 0.0, "policy": 0.0, "compress + write": 0.0}
    frames = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(episodes):
            policy = make_collection_policy(task, np.random.default_rng(i))
            env.reset(seed=i)
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
            write_episode(
                Path(tmp, f"{i}.npz"),
                task,
                np.stack(obs_list),
                np.zeros((t, 1), np.float32),
                np.ones(t, np.float32),
                np.zeros(t, bool),
                i,
            )
            parts["compress + write"] += time.perf_counter() - t0
    env.close()
    return {k: v / frames for k, v in parts.items()}


def main() -> None:
    rows = []
    for task_name in ("carracing", "doom"):
        with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
            c1 = collect(task_name, 1, one)
            c2 = collect(task_name, 2, two)
            bare = bare_replay(task_name, Path(one, "record"))
        rows.append((task_name, bare, c1, c2))
    split = doom_time_split(5 if QUICK else 20)
    print(
        f"\n# stage 1 benchmark — {os.cpu_count()} cores, {platform.machine()}"
        f"{' (quick)' if QUICK else ''}; episodes per worker: " + ", ".join(f"{k} {v}" for k, v in EPISODES.items())
    )
    print(f"{'task':<10} {'bare env':>10} {'collect 1 w':>12} {'ratio':>6} {'collect 2 w':>12} {'ratio':>6}")
    for task_name, bare, c1, c2 in rows:
        print(f"{task_name:<10} {bare:>8.0f}/s {c1:>10.0f}/s {c1 / bare:>6.2f} {c2:>10.0f}/s {c2 / (2 * bare):>6.2f}")
    total = sum(split.values())
    print(
        "doom collection, time per frame in one process: "
        + ", ".join(f"{k} {v * 1e6:.0f} µs ({v / total:.0%})" for k, v in split.items())
    )
    print("ratio = collection frames/s ÷ (workers × bare steps/s); collection wall time includes start-up")


if __name__ == "__main__":
    main()
