"""Doom in M's dream: agent-steps/s vectorised over a whole population vs one episode at a time, vs the
real VizDoom agent, and vs this machine's limit for the dream's arithmetic.

Run with `./run.sh bench` (or `python tests/benchmarks/bench_dream.py [--quick]`). Prints one table.
M and V are untrained (their cost does not depend on the weights' values); M's done logit is held
below 0 so that every dream episode runs to the 2,100-step cap and every step counts. The limit is
the FLOPs of one agent-step (M's LSTM and mixture head, C) divided by the float32 matrix-product
rate numpy reaches here on the dream's own LSTM product at the same batch size, in one thread,
as a rollout worker runs.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import controller  # noqa: E402,F401  (single-threaded BLAS, as in rollout workers, before numpy loads)
from controller.agent import Agent, play_episode  # noqa: E402
from controller.model import controller_shape  # noqa: E402
from controller.rollouts import DreamRollouts, Job, RolloutSpec  # noqa: E402
from env.tasks import get_task  # noqa: E402
from env.wrappers import make_env  # noqa: E402

QUICK = "--quick" in sys.argv
POPSIZE, EPISODES = (16, 16) if QUICK else (64, 16)
STEPS = 300 if QUICK else 1000
TASK = get_task("doom")


def make_models(out: Path) -> None:
    """Untrained V and M exported as stages 2 and 4 export them, with M's done logit held at −5 (in a subprocess)."""
    code = (
        "import sys, numpy as np; from pathlib import Path; from env.tasks import get_task; "
        "from vae.model import build_vae, save_vae; from rnn.model import build_rnn, save_rnn; "
        "out, task = Path(sys.argv[1]), get_task('doom'); "
        "[(out / d).mkdir(parents=True, exist_ok=True) for d in ('vae', 'rnn')]; "
        "save_vae(build_vae(task, seed=0), out / 'vae', task); m = build_rnn(task, seed=0); "
        "k, b = m.head.get_weights(); k[:, 0] = 0.0; b[0] = -5.0; m.head.set_weights([k, b]); "
        "z = np.random.default_rng(0).normal(size=(100, 64)).astype(np.float32); "
        "save_rnn(m, out / 'rnn', task, extra={'initial_z_mu': z, 'initial_z_logvar': np.full_like(z, -2.0)})"
    )
    subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, check=True, capture_output=True)


def dream_rate(rollouts: DreamRollouts, params: np.ndarray, seeds: np.ndarray) -> float:
    """Agent-steps/s of one job holding `params` [k, P] × `seeds` [k, E] as one batch."""
    start = time.perf_counter()
    result = rollouts.run(Job(params, seeds))
    return result.lengths.sum() / (time.perf_counter() - start)


def matmul_rate(batch: int) -> float:
    """float32 FLOP/s of numpy's product [batch, 66 + 512] @ [66 + 512, 4·512] (the LSTM's), median of 5."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((batch, 578), dtype=np.float32)
    b = rng.standard_normal((578, 2048), dtype=np.float32)
    a @ b
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        times.append((time.perf_counter() - start) / 10)
    return 2 * batch * 578 * 2048 / float(np.median(times))


def main() -> None:
    print(
        f"# dream benchmark ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread"
        f"{', quick' if QUICK else ''})"
    )
    shape = controller_shape(TASK)
    flops = 2 * (66 + 512) * 2048 + 2 * 512 * 961 + 2 * shape.n_params
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        make_models(run_dir)
        rollouts = DreamRollouts(RolloutSpec(str(run_dir), "doom", shape.mode, STEPS, env="dream", tau=1.15))
        params = np.random.default_rng(0).normal(0, 0.1, (POPSIZE, shape.n_params))
        seeds = np.arange(POPSIZE * EPISODES).reshape(POPSIZE, EPISODES)
        batch = dream_rate(rollouts, params, seeds)
        single = float(np.median([dream_rate(rollouts, params[i : i + 1], seeds[i : i + 1, :1]) for i in range(3)]))
        agent = Agent.load(run_dir, TASK, shape)
        agent.set_params(params[0])
        env = make_env(TASK)
        start, steps = time.perf_counter(), 0
        while steps < 2000:
            steps += play_episode(env, agent, steps)[1]
        real = steps / (time.perf_counter() - start)
        env.close()
    limit = matmul_rate(POPSIZE * EPISODES) / flops
    print(
        f"one agent-step: {flops / 1e6:.2f} MFLOP (LSTM {2 * 578 * 2048 / 1e6:.2f}, mixture head "
        f"{2 * 512 * 961 / 1e6:.2f}, C {2 * shape.n_params / 1e3:.1f} k)"
    )
    print("| what | agent-steps/s | vs one at a time | vs limit |")
    print("|---|---|---|---|")
    print(
        f"| dream, {POPSIZE} x {EPISODES} episodes as one batch | {batch:,.0f} | {batch / single:.1f}x | "
        f"{batch / limit:.2f} |"
    )
    print(f"| dream, one episode at a time | {single:,.0f} | 1.0x | {single / limit:.2f} |")
    print(f"| real VizDoom agent (V + M + C, one env) | {real:,.0f} | {real / single:.2f}x | |")
    print(f"| limit: numpy float32 matmul rate / FLOPs per step | {limit:,.0f} | | 1.00 |")


if __name__ == "__main__":
    main()
