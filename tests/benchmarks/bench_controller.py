"""Rollout speed and memory: the bare env vs the full agent (V twin + M twin + C), and a CMA-ES generation
with 1 and 2 MPI workers (gymnasium, one episode at a time; bench_backends.py times envpool in lockstep).

Run with `./run.sh bench` (or `python tests/benchmarks/bench_controller.py [--quick]`). Prints one table.
V and M are untrained (their cost does not depend on the weights' values). The agent plays a random
controller; each of its episodes is then replayed through the bare env with the same seed and the
same actions, so both time the same trajectory; steps/s are totals over the episodes. The generation timing runs stage 5 under the venv's
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

# isort: split
import numpy as np  # noqa: E402

from controller.agent import Agent, play_episode  # noqa: E402
from controller.model import controller_shape  # noqa: E402
from env.tasks import get_task  # noqa: E402
from env.wrappers import make_env  # noqa: E402

QUICK = "--quick" in sys.argv
EPISODES = 2 if QUICK else 6
CAR_STEPS = 200 if QUICK else 500
GEN_STEPS = 100 if QUICK else 250
GENERATIONS = 3 if QUICK else 4


class Constant:
    """The bare env's policy: one fixed action, no computation."""

    def __init__(self, action):
        self.action = np.asarray(action, np.float32)

    def reset(self, rng):
        """No state to reset."""

    def act(self, obs):
        return self.action


class Recorded:
    """Wraps a policy, keeps the actions it took and the time spent choosing them."""

    def __init__(self, policy):
        self.policy, self.actions, self.seconds = policy, [], 0.0

    def reset(self, rng):
        self.policy.reset(rng)

    def act(self, obs):
        start = time.perf_counter()
        action = self.policy.act(obs)
        self.seconds += time.perf_counter() - start
        self.actions.append(action)
        return action


class Replay:
    """The bare env's policy: replays recorded actions, no computation."""

    def __init__(self, actions):
        self.actions, self.t = actions, 0

    def reset(self, rng):
        self.t = 0

    def act(self, obs):
        self.t += 1
        return self.actions[self.t - 1]


def make_models(out: Path, task) -> None:
    """Untrained V and M of `task`, exported as stages 2 and 4 export them (in a subprocess: no TF here)."""
    code = (
        "import sys; from pathlib import Path; from env.tasks import get_task; "
        "from vae.model import build_vae, save_vae; from rnn.model import build_rnn, save_rnn; "
        "out, task = Path(sys.argv[1]), get_task(sys.argv[2]); "
        "[(out / d).mkdir(parents=True, exist_ok=True) for d in ('vae', 'rnn')]; "
        "save_vae(build_vae(task, seed=0), out / 'vae', task); save_rnn(build_rnn(task, seed=0), out / 'rnn', task); "
        "[(out / d / 'config.json').write_text('{\"settings\": {\"task\": \"%s\"}}' % task.name) for d in ('vae', 'rnn')]"
    )
    subprocess.run([sys.executable, "-c", code, str(out), task.name], cwd=ROOT, check=True, capture_output=True)


def timed(env, policy, seed: int) -> tuple[float, int]:
    """(seconds, steps) of one episode."""
    start = time.perf_counter()
    steps = play_episode(env, policy, seed)[1]
    return time.perf_counter() - start, steps


def agent_overhead(run_dir: Path, task, max_steps: int) -> dict[str, float]:
    """Bare env and full agent steps/s over EPISODES seeds, and the agent's own ms per step: each agent
    episode is replayed through the bare env with the same seed and actions (the same trajectory)."""
    shape = controller_shape(task)
    agent = Agent.load(run_dir, task, shape)
    agent.set_params(np.random.default_rng(0).normal(0, 0.1, shape.n_params))
    env = make_env(task, max_steps=max_steps)
    bare = [0.0, 0]
    full = [0.0, 0, 0.0]
    for seed in range(EPISODES):
        recorded = Recorded(agent)
        seconds, steps = timed(env, recorded, seed)
        full[0] += seconds
        full[1] += steps
        full[2] += recorded.seconds
        seconds, steps = timed(env, Replay(recorded.actions), seed)
        bare[0] += seconds
        bare[1] += steps
    env.close()
    return {"bare": bare[1] / bare[0], "agent": full[1] / full[0], "act_ms": 1e3 * full[2] / full[1]}


def bare_rate(steps: int) -> float:
    """Steps/s of the bare car env with a constant action over `steps` steps (run in a worker process)."""
    task = get_task("carracing")
    env = make_env(task, max_steps=steps)
    policy = Constant([0.0, 0.3, 0.0])
    start = time.perf_counter()
    done = play_episode(env, policy, 0)[1]
    env.close()
    return done / (time.perf_counter() - start)


def two_process_scaling(steps: int) -> tuple[float, float]:
    """(one process alone, two processes at once) total bare car env steps/s: what 2 workers can reach here."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        alone = pool.apply(bare_rate, (steps,))
    with ctx.Pool(2) as pool:
        pair = sum(pool.map(bare_rate, [steps, steps]))
    return alone, pair


def generation_seconds(run_dir: Path, ranks: int) -> tuple[float, float]:
    """Stage 5 on gymnasium under `mpirun -np ranks` → (median seconds per generation without evaluation, workers' peak RSS MB)."""
    name = f"np{ranks}"
    mpirun = Path(sys.executable).parent / "mpirun"
    subprocess.run(
        [
            str(mpirun),
            "-np",
            str(ranks),
            sys.executable,
            "-m",
            "controller.train",
            "--task",
            "carracing",
            "--out",
            str(run_dir),
            "--name",
            name,
            "--popsize",
            "8",
            "--num-episode",
            "1",
            "--max-steps",
            str(GEN_STEPS),
            "--generations",
            str(GENERATIONS),
            "--eval-every",
            str(GENERATIONS),
            "--eval-episodes",
            "1",
            "--backend",
            "gymnasium",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    rows = json.loads((run_dir / "controller" / name / "history.json").read_text())
    seconds = np.diff([0.0] + [row["seconds"] for row in rows])[:-1]
    return float(np.median(seconds)), max(row["worker_peak_rss_mb"] for row in rows)


def main() -> None:
    print(
        f"# controller benchmark ({platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        f"{', quick' if QUICK else ''})"
    )
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name, max_steps in (("carracing", CAR_STEPS), ("doom", 2100)):
            task = get_task(name)
            run_dir = Path(tmp) / name
            make_models(run_dir, task)
            rows.append((name, agent_overhead(run_dir, task, max_steps)))
        print("| task | bare env steps/s | full agent steps/s | time ratio agent/bare | agent's own ms/step |")
        print("|---|---|---|---|---|")
        for name, r in rows:
            print(f"| {name} | {r['bare']:.0f} | {r['agent']:.0f} | {r['bare'] / r['agent']:.2f} | {r['act_ms']:.2f} |")
        run_dir = Path(tmp) / "carracing"
        one, rss_one = generation_seconds(run_dir, 2)
        two, rss_two = generation_seconds(run_dir, 3)
        alone, pair = two_process_scaling(CAR_STEPS)
        print(
            f"\nCarRacing generation, population 8 x 1 episode of {GEN_STEPS} steps (median of "
            f"{GENERATIONS - 1} generations):"
        )
        print("| rollout workers | s / generation | speedup | worker peak RSS MB |")
        print("|---|---|---|---|")
        print(f"| 1 (mpirun -np 2) | {one:.1f} | 1.00 | {rss_one:.0f} |")
        print(f"| 2 (mpirun -np 3) | {two:.1f} | {one / two:.2f} | {rss_two:.0f} |")
        print(
            f"\nReference, the bare car env: 1 process {alone:.0f} steps/s, 2 processes at once {pair:.0f} "
            f"steps/s in total ({pair / alone:.2f}x): the most 2 workers can gain on this machine."
        )


if __name__ == "__main__":
    main()
