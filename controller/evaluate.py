"""Stage 6: play a trained controller (or the random policy) for 100 fresh episodes of the real env
(or, with `--env dream`, of M's dream: the "score in dream" column of the paper's τ table).

    python -m controller.evaluate --task carracing --out runs/car                 # OUT/controller/zh/best.json
    python -m controller.evaluate --task carracing --out runs/car --random        # the random baseline
    mpirun -np 9 python -m controller.evaluate --task carracing --out runs/car    # 8 MPI workers

Everything is loaded from disk (V and M weights, the controller's best.json). Episode seeds come
from the test range, disjoint from every training and selection seed (controller/es.py), so the
score is measured on tracks/episodes the search never saw, each a pure function of its seed.
Writes `OUT/eval/<name>.json`: every episode's seed, return and length, the mean, the population
std (as the original's model.py), n, the params file, settings and git commit; prints mean ± std (n).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from controller.agent import Agent, FixedPolicy, play_episode
from controller.artifacts import params_sha256, read_params
from controller.es import TEST_RANGE, heldout_seeds
from controller.model import controller_shape, default_mode
from controller.pool import PoolScope, ProcessPool, SerialPool, mpi_world, serve_mpi
from controller.rollouts import LOCKSTEP_EPISODES, Job, RolloutSpec, in_lockstep
from controller.train import check_done_rule, check_dream, fill_failed, model_fingerprints, trained_models
from env.common.cli import UserError, check_stage_flags, parse_config, run
from env.common.files import atomic_write, ensure_dir, read_json, stage_record, write_json
from env.common.rundir import COMPLETE, RECORD, open_output
from env.policies import POLICIES
from env.tasks import Task, check_backend, get_task, implied_settings
from env.wrappers import make_env
from rnn.dream import TAU

GIF_FRAMES = 500
"""A recorded episode keeps at most about this many frames (every k-th frame of longer episodes)."""


@dataclass
class EvaluateConfig:
    """Evaluate a trained controller on fresh episodes of the real env (stage 6)."""

    out: str = field(
        default="", metadata={"help": "run directory: reads OUT/vae/, OUT/rnn/, OUT/controller/NAME/; writes OUT/eval/"}
    )
    task: str = field(default="carracing", metadata={"help": "carracing or doom"})
    name: str = field(
        default="",
        metadata={
            "help": "controller to evaluate, OUT/controller/NAME/best.json; '' = the task's default mode (car zh, Doom zch)"
        },
    )
    random: bool = field(
        default=False,
        metadata={
            "help": "play the task's random baseline instead (car: the Cauchy data-collection controller; Doom: a uniform action every step), written as eval/random.json"
        },
    )
    policy: str = field(
        default="",
        metadata={
            "help": "play this fixed policy instead of a controller: "
            + ", ".join(POLICIES)
            + " (written as eval/NAME.json, NAME defaulting to the policy)"
        },
    )
    result: str = field(
        default="", metadata={"help": "the result's file name in OUT/eval/; '' = NAME, or NAME_dream with --env dream"}
    )
    episodes: int = field(default=100, metadata={"help": "episodes to play (the paper: 100)"})
    seed: int = field(
        default=0, metadata={"help": "offset into the test seed range: episode k plays test seed SEED + k"}
    )
    max_steps: int = field(
        default=0, metadata={"help": "episode cap in env steps; 0 = the task's (car 1000, Doom 2100)"}
    )
    workers: int = field(
        default=os.cpu_count() or 1,
        metadata={"help": "worker processes when not under mpirun (under mpirun -np N: N - 1 ranks)"},
    )
    gif: bool = field(default=False, metadata={"help": "also record the first episode to OUT/eval/NAME.gif"})
    env: str = field(
        default="real", metadata={"help": "'real' env, or M's 'dream' (Doom; written as eval/NAME_dream.json)"}
    )
    tau: float = field(default=TAU, metadata={"help": "the dream's temperature with --env dream"})
    dream_done: str = field(
        default="",
        metadata={
            "help": "how M's done logit ends a dream episode: 'threshold' (the original: logit > 0) or 'sample' "
            "(a draw with the death probability the logit stands for, see README); '' = the rule the controller "
            "trained under (threshold for a fixed policy)"
        },
    )
    backend: str = field(
        default="",
        metadata={
            "help": "the real env's engine: car gymnasium or envpool, Doom vizdoom; '' = the task's reference "
            "(car gymnasium, whatever trained the controller)"
        },
    )
    force: bool = field(
        default=False,
        metadata={
            "help": "play again even if eval/NAME.json already holds this controller's result with these settings"
        },
    )


IMPLIED = {"dream_done": "threshold"}
"""What a result written before `--dream-done` existed was played with."""
RESUMABLE_SETTINGS = ("workers", "force", "gif", "result")
"""Episodes are pure functions of their seeds, so a result does not depend on these (nor on naming its file
explicitly by its default name)."""


def write_gif(path: Path, frames: list[np.ndarray], fps: int = 25) -> int:
    """Write uint8 [H, W, 3] frames as an animated GIF (at most ~GIF_FRAMES of them) → frames written."""
    from PIL import Image

    step = max(1, -(-len(frames) // GIF_FRAMES))
    images = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames[::step]]
    atomic_write(
        path,
        lambda f: images[0].save(
            f, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 * step / fps), loop=0
        ),
    )
    return len(images)


def record_episode(spec: RolloutSpec, params: np.ndarray | None, seed: int, path: Path) -> tuple[float, int]:
    """Replay the episode of `seed` in this process, saving its rendered frames as a GIF → (return, steps)."""
    task = get_task(spec.task)
    if spec.policy:
        policy = FixedPolicy(task, spec.policy)
    else:
        policy = Agent.load(Path(spec.run_dir), task, controller_shape(task, spec.mode))
        policy.set_params(params)
    env = make_env(task, max_steps=spec.max_steps, backend=spec.backend)
    frames: list[np.ndarray] = []
    try:
        total, steps = play_episode(env, policy, seed, frames)
    finally:
        env.close()
    write_gif(path, frames)
    return total, steps


def resolve(config: EvaluateConfig) -> tuple[Task, RolloutSpec, np.ndarray | None, dict]:
    """Check flags and load what is evaluated → (task, worker spec, params or None, what was loaded)."""
    task = get_task(config.task)
    check_stage_flags(config, ("episodes", "workers"))
    if config.max_steps < 0:
        raise UserError(f"--max-steps must be ≥ 0 (0 = the task's cap), got {config.max_steps}")
    if config.seed < 0 or config.seed + config.episodes > TEST_RANGE:
        raise UserError(
            f"--seed plus --episodes must stay within [0, {TEST_RANGE}], got {config.seed} + {config.episodes}"
        )
    config.max_steps = config.max_steps or task.max_steps
    config.backend = check_backend(task, config.backend)
    if config.env not in ("real", "dream"):
        raise UserError(f"--env must be 'real' or 'dream', got {config.env!r}")
    run_dir = Path(config.out)
    if config.env == "dream":
        if config.gif:
            raise UserError("--gif records the real env only")
        if config.tau <= 0:
            raise UserError(f"--tau must be positive, got {config.tau}")
        if config.dream_done:
            check_done_rule(config.dream_done)
        check_dream(run_dir, task)
    if config.random and config.policy:
        raise UserError("--random is --policy with the task's baseline: give one of them")
    if config.random or config.policy:
        config.dream_done = config.dream_done or "threshold"
        policy = config.policy or task.baseline_policy
        if policy not in POLICIES:
            raise UserError(f"unknown --policy {policy!r}; choose one of: {', '.join(POLICIES)}")
        config.name = config.name or ("random" if config.random else policy)
        label = f"random ({policy})" if config.random else f"fixed policy {policy}"
        loaded = {"policy": label}
        if config.env == "dream":
            loaded.update(tau=config.tau, models=model_fingerprints(run_dir, task, needs_m=True))
            if config.dream_done != "threshold":
                loaded["dream_done"] = config.dream_done
        spec = RolloutSpec(
            str(run_dir),
            task.name,
            "",
            config.max_steps,
            policy=policy,
            env=config.env,
            tau=config.tau,
            dream_done=config.dream_done,
            backend=config.backend,
        )
        return task, spec, None, loaded
    config.name = config.name or default_mode(task)
    params_file = run_dir / "controller" / config.name / "best.json"
    shape, params, record = read_params(params_file, task)
    models = trained_models(params_file, record, run_dir, task, shape)
    trained_under = params_file.parent / RECORD
    if not config.dream_done:
        settings = read_json(trained_under).get("settings", {}) if trained_under.exists() else {}
        config.dream_done = settings.get("dream_done", "threshold")
    loaded = {
        "policy": f"controller {shape.mode} ({shape.n_params} params)",
        "params_file": str(params_file),
        "params_sha256": params_sha256(params),
        "mode": shape.mode,
        "generation": record.get("generation"),
        "selection_eval": record.get("evaluation"),
        "models": models,
    }
    if config.env == "dream":
        loaded["tau"] = config.tau
        if config.dream_done != "threshold":
            loaded["dream_done"] = config.dream_done
    spec = RolloutSpec(
        str(run_dir),
        task.name,
        shape.mode,
        config.max_steps,
        env=config.env,
        tau=config.tau,
        dream_done=config.dream_done,
        backend=config.backend,
    )
    return task, spec, params, loaded


def main(argv: Sequence[str] | None = None) -> int:
    comm = mpi_world()
    if comm is not None and comm.Get_rank() > 0:
        serve_mpi(comm)
        return 0
    with PoolScope(comm) as scope:
        config = parse_config(EvaluateConfig, argv)
        task, spec, params, loaded = resolve(config)
        eval_dir = ensure_dir(Path(config.out) / "eval")
        result_name = config.result or config.name + ("_dream" if config.env == "dream" else "")
        result_path = eval_dir / f"{result_name}.json"
        gif_path = eval_dir / f"{config.name}.gif"
        state = open_output(
            result_path,
            stage_record(config, implied=IMPLIED | implied_settings(task), inputs=loaded),
            stage="stage 6",
            restart=True,
            force=config.force,
            resumable=RESUMABLE_SETTINGS + (("tau", "dream_done") if config.env == "real" else ()),
            complete=lambda previous: "mean" in previous and (not config.gif or gif_path.exists()),
            record_file=result_path,
        )
        if state == COMPLETE:
            print(
                f"[stage 6] {result_path} already holds this evaluation; nothing to do (--force true plays it again)",
                flush=True,
            )
            return 0
        seeds = heldout_seeds(config.seed, config.episodes)
        workers = min(config.workers, config.episodes)
        pool = scope.open(spec, lambda spec: ProcessPool(spec, workers) if workers > 1 else SerialPool(spec))
        print(
            f"[stage 6] {task.name}: {loaded['policy']}, {config.episodes} {config.env} episodes on test seeds "
            f"{seeds[0]}..{seeds[-1]}, {pool.workers} worker(s)",
            flush=True,
        )
        start = time.perf_counter()
        job_params = None if params is None else params[None]
        if config.env == "dream":
            chunks = [c for c in np.array_split(seeds, pool.workers) if len(c)]
        elif in_lockstep(config.env, config.backend):
            chunks = [seeds[i : i + LOCKSTEP_EPISODES] for i in range(0, len(seeds), LOCKSTEP_EPISODES)]
        else:
            chunks = [seeds[i : i + 1] for i in range(len(seeds))]
        results = pool.map([Job(job_params, chunk[None]) for chunk in chunks])
        seconds = time.perf_counter() - start
        returns = np.concatenate([r.returns[0] for r in results])
        lengths = np.concatenate([r.lengths[0] for r in results])
        failed = np.isnan(returns)
        returns, _ = fill_failed(returns)
        mean, std, n = float(returns.mean()), float(returns.std()), len(returns)
        summary = {
            "task": task.name,
            "name": config.name,
            **loaded,
            "n": n,
            "mean": mean,
            "std": std,
            "failed_episodes": int(failed.sum()),
            "seconds": round(seconds, 1),
            "episodes": [
                {"seed": int(s), "return": float(r), "length": int(n_), **({"failed": True} if f else {})}
                for s, r, n_, f in zip(seeds, returns, lengths, failed)
            ],
        }
        if config.gif:
            total, steps = record_episode(spec, params, int(seeds[0]), gif_path)
            summary["gif"] = {"file": str(gif_path), "seed": int(seeds[0]), "return": total, "length": steps}
        write_json(
            result_path, {**stage_record(config, implied=IMPLIED | implied_settings(task), inputs=loaded), **summary}
        )
        failures = (
            f", {summary['failed_episodes']} episodes crashed twice and count at the worst return"
            if failed.any()
            else ""
        )
        where = (
            f" in the dream (τ = {config.tau:g}, done: {config.dream_done})"
            if config.env == "dream"
            else f" on {config.backend}"
        )
        print(
            f"[stage 6] {task.name} {config.name}{where}: {mean:.1f} ± {std:.1f} (n={n}){failures}; "
            f"{seconds:.0f} s → {result_path}",
            flush=True,
        )
        return 0


if __name__ == "__main__":
    run(main)
