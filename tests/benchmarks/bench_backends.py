"""CarRacing's two backends: the bare env, and stage 5's worker playing the agent on each.

Run with `./run.sh bench` (or `python tests/benchmarks/bench_backends.py [--quick]`). Prints, in one run:

- bare steps/s of gymnasium's and envpool's CarRacing-v3, one env in this one thread, a constant action,
  alternating the two ROUNDS times (medians);
- agent-steps/s of one stage-5 worker: gymnasium one episode at a time (`Rollouts`) and envpool in
  lockstep (`LockstepRollouts`, one job of LOCKSTEP_EPISODES episodes), the same untrained V and M and a
  random `zh` controller, episodes of STEPS steps;
- within the lockstep run, the time per agent-step spent in envpool's batched step (with the batch's crop and
  resize) and in the agent (V, C and M), and the run's agent-steps/s ÷ bare envpool steps/s.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))

import controller  # noqa: E402,F401  (single-threaded BLAS, as in rollout workers, before numpy loads)

# isort: split
import numpy as np  # noqa: E402
from bench_controller import make_models  # noqa: E402

import controller.rollouts as rollouts  # noqa: E402
from controller.rollouts import LOCKSTEP_EPISODES, Job, LockstepRollouts, Rollouts, RolloutSpec  # noqa: E402
from env.tasks import get_task  # noqa: E402
from env.wrappers import make_env  # noqa: E402

QUICK = "--quick" in sys.argv
ROUNDS = 1 if QUICK else 3
BARE_STEPS = 300 if QUICK else 1000
STEPS = 200 if QUICK else 1000
GYM_EPISODES = 1 if QUICK else 3
CAR = get_task("carracing")


def bare(backend: str) -> float:
    """Steps/s of one env of `backend` over BARE_STEPS steps of a constant action (one episode, seed 0)."""
    env = make_env(CAR, max_steps=BARE_STEPS, backend=backend)
    env.reset(seed=0)
    action = np.array([0.0, 0.3, 0.0], np.float32)
    start = time.perf_counter()
    steps = 0
    while True:
        steps += 1
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    seconds = time.perf_counter() - start
    env.close()
    return steps / seconds


class Timed:
    """Wraps a callable and adds up the seconds spent in it."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def worker_rates(run_dir: Path) -> dict[str, float]:
    """Agent-steps/s of one worker on each backend, and the lockstep run's env and agent seconds."""
    params = np.random.default_rng(0).normal(0, 0.1, (1, 867))
    gym = Rollouts(RolloutSpec(str(run_dir), "carracing", "zh", STEPS, backend="gymnasium"))
    start = time.perf_counter()
    played = gym.run(Job(params, np.arange(GYM_EPISODES)[None]))
    gym_rate = played.lengths.sum() / (time.perf_counter() - start)
    gym.close()

    lockstep = LockstepRollouts(RolloutSpec(str(run_dir), "carracing", "zh", STEPS, backend="envpool"))
    lockstep.run(Job(params, np.array([[99]])))  # warm-up: first calls of envpool and numpy
    env_step = Timed(rollouts.CarRacingBatch.step)
    rollouts.CarRacingBatch.step = lambda self, actions: env_step(self, actions)
    lockstep.agent.act = Timed(lockstep.agent.act)
    seeds = np.arange(LOCKSTEP_EPISODES)[None]
    start = time.perf_counter()
    played = lockstep.run(Job(params, seeds))
    seconds = time.perf_counter() - start
    steps = played.lengths.sum()
    return {
        "gym": gym_rate,
        "lockstep": steps / seconds,
        "env_share": env_step.seconds / seconds,
        "agent_ms": 1e3 * lockstep.agent.act.seconds / steps,
        "env_ms": 1e3 * env_step.seconds / steps,
        "steps": int(steps),
    }


def main() -> None:
    print(
        f"# CarRacing backends benchmark ({platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        f"{', quick' if QUICK else ''})"
    )
    rates = {"gymnasium": [], "envpool": []}
    for _ in range(ROUNDS):
        for backend in rates:
            rates[backend].append(bare(backend))
    gym, pool = (float(np.median(rates[b])) for b in ("gymnasium", "envpool"))
    print(f"\nBare CarRacing-v3, one env in one thread, {BARE_STEPS} steps, median of {ROUNDS} alternating rounds:")
    print("| backend | steps/s | each round |")
    print("|---|---|---|")
    for backend, median in (("gymnasium", gym), ("envpool", pool)):
        print(f"| {backend} | {median:.0f} | {', '.join(f'{r:.0f}' for r in rates[backend])} |")
    print(f"envpool ÷ gymnasium: {pool / gym:.1f}x")

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        make_models(run_dir, CAR)
        r = worker_rates(run_dir)
    print(f"\nOne stage-5 worker, the zh agent (untrained V and M, random C), episodes of {STEPS} steps:")
    print("| worker | agent-steps/s | vs today |")
    print("|---|---|---|")
    print(f"| gymnasium, one episode at a time ({GYM_EPISODES} episodes) | {r['gym']:.0f} | 1.0x |")
    print(
        f"| envpool, lockstep ({LOCKSTEP_EPISODES} episodes, {r['steps']} agent-steps) | {r['lockstep']:.0f} | "
        f"{r['lockstep'] / r['gym']:.1f}x |"
    )
    print(
        f"\nIn the lockstep run, per agent-step: envpool's batched step with the crop and resize {r['env_ms']:.3f} ms, "
        f"the agent (V, C, M) {r['agent_ms']:.3f} ms; the env's share of the run {r['env_share']:.2f}; "
        f"lockstep agent-steps/s ÷ bare envpool steps/s = {r['lockstep'] / pool:.2f}"
    )


if __name__ == "__main__":
    main()
