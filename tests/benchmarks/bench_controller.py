"""Rollout speed and memory: the bare env vs the full agent (V twin + M twin + C), and a CMA-ES generation
with 1 and 2 MPI workers.

Run with `./run.sh bench` (or `python tests/benchmarks/bench_controller.py [--quick]`). Prints one table.
V and M are untrained (their cost does not depend on the weights' values). The bare env plays a
constant action; the agent plays a random controller on the same seeds; both are timed per episode,
interleaved, and the medians are compared. The generation timing runs stage 5 under the venv's
`mpirun -np 2` and `-np 3` (one master + 1 or 2 workers) and reads the per-generation times and the
workers' peak RSS from its history.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import controller  # noqa: E402,F401  (single-threaded BLAS, as in rollout workers, before numpy loads)
import numpy as np  # noqa: E402

from controller.agent import Agent, play_episode  # noqa: E402
from controller.model import controller_shape  # noqa: E402
from env.tasks import get_task  # noqa: E402
from env.wrappers import make_env  # noqa: E402

QUICK = "--quick" in sys.argv
EPISODES = 2 if QUICK else 4
CAR_STEPS = 200 if QUICK else 500
GEN_STEPS = 100 if QUICK else 250
GENERATIONS = 3 if QUICK else 4


class Constant:
    """The bare env's policy: one fixed action, no computation."""

    def __init__(self, action):
        self.action = np.asarray(action, np.float32)

    def reset(self, rng):
        pass

    def act(self, obs):
        return self.action


def make_models(out: Path, task) -> None:
    """Untrained V and M of `task`, exported as stages 2 and 4 export them (in a subprocess: no TF here)."""
    code = ("import sys; from pathlib import Path; from env.tasks import get_task; "
            "from vae.model import build_vae, save_vae; from rnn.model import build_rnn, save_rnn; "
            "out, task = Path(sys.argv[1]), get_task(sys.argv[2]); "
            "[(out / d).mkdir(parents=True, exist_ok=True) for d in ('vae', 'rnn')]; "
            "save_vae(build_vae(task, seed=0), out / 'vae', task); save_rnn(build_rnn(task, seed=0), out / 'rnn', task); "
            "[(out / d / 'config.json').write_text('{\"settings\": {\"task\": \"%s\"}}' % task.name) for d in ('vae', 'rnn')]")
    subprocess.run([sys.executable, "-c", code, str(out), task.name], cwd=ROOT, check=True, capture_output=True)


def steps_per_second(env, policy, seed: int, min_steps: int) -> float:
    """Play episodes from `seed` on until `min_steps` steps → steps/s."""
    steps, start = 0, time.perf_counter()
    while steps < min_steps:
        steps += play_episode(env, policy, seed)[1]
        seed += 1000
    return steps / (time.perf_counter() - start)


def agent_overhead(run_dir: Path, task, min_steps: int) -> tuple[float, float]:
    """Median (bare env, full agent) steps/s over EPISODES interleaved seeds."""
    shape = controller_shape(task)
    agent = Agent.load(run_dir, task, shape)
    agent.set_params(np.random.default_rng(0).normal(0, 0.1, shape.n_params))
    bare = Constant([0.0, 0.3, 0.0] if task.name == "carracing" else [0.0])
    env = make_env(task, max_steps=min_steps)
    rates = {"bare": [], "agent": []}
    for seed in range(EPISODES):
        rates["bare"].append(steps_per_second(env, bare, seed, min_steps))
        rates["agent"].append(steps_per_second(env, agent, seed, min_steps))
    env.close()
    return float(np.median(rates["bare"])), float(np.median(rates["agent"]))


def generation_seconds(run_dir: Path, ranks: int) -> tuple[float, float]:
    """Stage 5 under `mpirun -np ranks` → (median seconds per generation without evaluation, workers' peak RSS MB)."""
    name = f"np{ranks}"
    mpirun = Path(sys.executable).parent / "mpirun"
    subprocess.run([str(mpirun), "-np", str(ranks), sys.executable, "-m", "controller.train", "--task", "carracing",
                    "--out", str(run_dir), "--name", name, "--popsize", "8", "--num-episode", "1",
                    "--max-steps", str(GEN_STEPS), "--generations", str(GENERATIONS),
                    "--eval-every", str(GENERATIONS), "--eval-episodes", "1"],
                   cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    rows = json.loads((run_dir / "controller" / name / "history.json").read_text())
    seconds = np.diff([0.0] + [row["seconds"] for row in rows])[:-1]
    return float(np.median(seconds)), max(row["worker_peak_rss_mb"] for row in rows)


def main() -> None:
    print(f"# controller benchmark ({platform.processor() or platform.machine()}, {os.cpu_count()} cores"
          f"{', quick' if QUICK else ''})")
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name, min_steps in (("carracing", CAR_STEPS), ("doom", 1000)):
            task = get_task(name)
            run_dir = Path(tmp) / name
            make_models(run_dir, task)
            bare, agent = agent_overhead(run_dir, task, min_steps)
            rows.append((name, bare, agent))
        print("| task | bare env steps/s | full agent steps/s | time ratio agent/bare |")
        print("|---|---|---|---|")
        for name, bare, agent in rows:
            print(f"| {name} | {bare:.0f} | {agent:.0f} | {bare / agent:.2f} |")
        run_dir = Path(tmp) / "carracing"
        one, rss_one = generation_seconds(run_dir, 2)
        two, rss_two = generation_seconds(run_dir, 3)
        print(f"\nCarRacing generation, population 8 x 1 episode of {GEN_STEPS} steps (median of "
              f"{GENERATIONS - 1} generations):")
        print("| rollout workers | s / generation | speedup | worker peak RSS MB |")
        print("|---|---|---|---|")
        print(f"| 1 (mpirun -np 2) | {one:.1f} | 1.00 | {rss_one:.0f} |")
        print(f"| 2 (mpirun -np 3) | {two:.1f} | {one / two:.2f} | {rss_two:.0f} |")


if __name__ == "__main__":
    main()
