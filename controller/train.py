"""Stage 5: train C with CMA-ES, in parallel over MPI (WME: train.py), resumable by rerunning.

    python -m controller.train --task carracing --out runs/car          # one process
    mpirun -np 65 python -m controller.train --task carracing --out runs/car   # master + 64 workers

Each generation: CMA-ES asks for `popsize` candidates; each plays `num_episode` episodes (candidates
i and i + popsize/2 on the same seeds) and scores their mean return; CMA-ES is told the rewards
minus an L2 term. Every `eval_every` generations (and at the last) the distribution mean plays the
fixed set of `eval_episodes` selection seeds; the best such mean is kept as `best.json`, the
controller stage 6 evaluates. Under `mpirun -np N` rank 0 runs the search and ranks 1..N-1 play;
with one process everything runs in it. After every generation the whole state is checkpointed
atomically, so rerunning the same command after a kill continues with the next generation
(raising `--generations` continues a finished run).
"""

from __future__ import annotations

import dataclasses
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from controller.artifacts import params_path, params_sha256, read_params, write_params
from controller.es import CMAES, SearchState, selection_seeds, training_seeds
from controller.model import ControllerShape, controller_shape
from controller.pool import PoolScope, SerialPool, mpi_world, serve_mpi
from controller.rollouts import LOCKSTEP_EPISODES, Job, JobResult, RolloutSpec, in_lockstep
from env.common.cli import UserError, check_stage_flags, parse_config, run
from env.common.files import atomic_write, stage_record, write_json
from env.common.rundir import NEW, RECORD, open_output
from env.tasks import Task, check_backend, get_task, implied_settings
from rnn.artifacts import fingerprint as rnn_fingerprint
from rnn.artifacts import load_weights as load_rnn_weights
from rnn.dream import DONE_RULES, TAU
from vae.artifacts import fingerprint as vae_fingerprint
from vae.artifacts import load_weights as load_vae_weights

CHECKPOINT = "checkpoint.pkl"
CHECKPOINT_FORMAT = 1
PLOT_EVERY_SECONDS = 30.0
RESUMABLE_SETTINGS = ("generations",)
"""Settings a rerun may change and still continue the same search (raising --generations continues it)."""


@dataclass
class TrainConfig:
    """Train the controller with CMA-ES (stage 5)."""

    out: str = field(
        default="", metadata={"help": "run directory: reads OUT/vae/, OUT/rnn/; writes OUT/controller/NAME/"}
    )
    task: str = field(default="carracing", metadata={"help": "carracing or doom"})
    mode: str = field(
        default="",
        metadata={"help": "controller features: z, zh, zc, zch, z_hidden; '' = the task's (car zh, Doom zch)"},
    )
    name: str = field(default="", metadata={"help": "controller directory name under OUT/controller/; '' = the mode"})
    popsize: int = field(default=64, metadata={"help": "CMA-ES population (original: 64 workers x 1 trial)"})
    num_episode: int = field(
        default=16, metadata={"help": "episodes per candidate; fitness = their mean (original: 16)"}
    )
    generations: int = field(
        default=1800,
        metadata={"help": "generations to run (the original ran until stopped; both shipped runs ended at 1,800)"},
    )
    eval_every: int = field(
        default=25, metadata={"help": "evaluate the distribution mean every N generations (original: 25)"}
    )
    eval_episodes: int = field(
        default=1024, metadata={"help": "episodes of each evaluation, on a fixed seed set (original: 64 x 16 = 1,024)"}
    )
    max_steps: int = field(
        default=0, metadata={"help": "episode cap in env steps; 0 = the task's (car 1000, Doom 2100)"}
    )
    env: str = field(
        default="",
        metadata={
            "help": "where C trains: 'real' env or M's 'dream'; '' = the task's (car real, Doom dream, as the original)"
        },
    )
    tau: float = field(default=TAU, metadata={"help": "the dream's temperature (the paper's Doom agent: 1.15)"})
    dream_done: str = field(
        default="threshold",
        metadata={
            "help": "how M's done logit ends a dream episode: 'threshold' (the original: logit > 0) or 'sample' "
            "(a draw with the death probability the logit stands for, see README)"
        },
    )
    backend: str = field(
        default="",
        metadata={
            "help": "the real env's engine: car gymnasium or envpool, Doom vizdoom; '' = the task's (car envpool)"
        },
    )
    eval_env: str = field(
        default="",
        metadata={
            "help": "where the mean is evaluated every --eval-every generations; '' = where it trains (as the original)"
        },
    )
    init: str = field(
        default="",
        metadata={
            "help": "a params file, or a run directory RUN for RUN/controller/<mode>/best.json, where the search starts instead of 0: iterative "
            "training continues the last round's controller in the new dream; '' = 0 (the original)"
        },
    )
    worlds: str = field(
        default="",
        metadata={
            "help": "comma-separated run directories whose Ms are dreams too (on the same V): each candidate's "
            "episodes alternate between OUT's dream and theirs, C's features always from OUT's M; '' = OUT's "
            "dream only (the original)"
        },
    )
    sigma_init: float = field(default=0.1, metadata={"help": "CMA-ES initial step size (original: 0.1)"})
    weight_decay: float = field(
        default=0.01,
        metadata={"help": "L2 coefficient on mean(θ²), a penalty (original: 0.01 with the sign flipped, see README)"},
    )
    antithetic: bool = field(
        default=True, metadata={"help": "candidates i and i + popsize/2 share episode seeds (original: on)"}
    )
    seed: int = field(default=0, metadata={"help": "seeds CMA-ES and every training episode"})
    restart_on_change: bool = field(
        default=False,
        metadata={
            "help": "when OUT/controller/NAME holds a search with other settings or V/M, move it to NAME.previous and "
            "start afresh (run.sh sets this); by default such a rerun is refused"
        },
    )


def check_done_rule(rule: str) -> str:
    """`rule` if it is a dream done rule (rnn.dream.DONE_RULES), else a UserError naming the choices."""
    if rule not in DONE_RULES:
        raise UserError(f"--dream-done must be one of {', '.join(DONE_RULES)}, got {rule!r}")
    return rule


def fill_failed(returns: np.ndarray) -> tuple[np.ndarray, int]:
    """Episodes scored NaN (failed twice) get the worst completed return of the batch → (returns, failures)."""
    failed = np.isnan(returns)
    if failed.all():
        raise RuntimeError("every episode failed; see the warnings above")
    if failed.any():
        returns = np.where(failed, np.nanmin(returns), returns)
    return returns, int(failed.sum())


def collect(results: Sequence[JobResult]) -> tuple[np.ndarray, np.ndarray, int]:
    """Job results (one candidate each) → returns float64 [k, E] with failures filled, lengths [k, E], failures."""
    returns = np.concatenate([r.returns for r in results])
    lengths = np.concatenate([r.lengths for r in results])
    returns, failures = fill_failed(returns)
    return returns, lengths, failures


def split_jobs(params: np.ndarray, seeds: np.ndarray, env: str, workers: int, lockstep: bool = False) -> list[Job]:
    """Candidates params [k, P] with seeds [k, E] → jobs: in the dream one per worker, each a vectorised batch of
    its share; in lockstep (envpool) blocks of whole candidates of about LOCKSTEP_EPISODES episodes, whatever the
    number of workers; otherwise one per candidate (its episodes are played one by one anyway)."""
    if env == "dream":
        return [Job(params[i], seeds[i], env) for i in np.array_split(np.arange(len(params)), workers) if len(i)]
    per = max(1, LOCKSTEP_EPISODES // seeds.shape[1]) if lockstep else 1
    return [Job(params[i : i + per], seeds[i : i + per], env) for i in range(0, len(params), per)]


def evaluate_mean(
    pool, params: np.ndarray, episodes: int, per_job: int, env: str, lockstep: bool = False
) -> np.ndarray:
    """The distribution mean's returns on the fixed selection seeds → float64 [episodes]."""
    seeds = selection_seeds(episodes)
    per_job = LOCKSTEP_EPISODES if lockstep else per_job
    parts = pool.workers if env == "dream" else max(1, -(-episodes // per_job))
    chunks = [c for c in np.array_split(seeds, parts) if len(c)]
    results = pool.map([Job(params[None], chunk[None], env) for chunk in chunks])
    returns, _ = fill_failed(np.concatenate([r.returns.reshape(-1) for r in results]))
    return returns


def plot_fitness(path: Path, history: list[dict[str, Any]], evaluations: list[dict[str, Any]], title: str) -> None:
    """fitness.png: per generation the population's mean, best and worst fitness, the evaluations, and σ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = [row["generation"] for row in history]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.fill_between(
        gens,
        [r["fitness_min"] for r in history],
        [r["fitness_max"] for r in history],
        color="tab:blue",
        alpha=0.15,
        label="population min–max",
    )
    ax.plot(gens, [r["fitness_mean"] for r in history], color="tab:blue", label="population mean")
    ax.plot(gens, [r["fitness_max"] for r in history], color="tab:blue", lw=0.6, ls=":")
    if evaluations:
        ax.plot(
            [e["generation"] for e in evaluations],
            [e["mean"] for e in evaluations],
            "o-",
            color="tab:red",
            label=f"distribution mean, {evaluations[-1]['episodes']} selection episodes",
        )
    ax.set_xlabel("generation")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    sigma_ax = ax.twinx()
    sigma_ax.plot(gens, [r["sigma"] for r in history], color="tab:gray", lw=0.8, label="σ")
    sigma_ax.set_ylabel("σ (mean per-coordinate std)")
    lines = ax.get_legend_handles_labels()
    sigma_lines = sigma_ax.get_legend_handles_labels()
    ax.legend(lines[0] + sigma_lines[0], lines[1] + sigma_lines[1], loc="lower right", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def load_checkpoint(path: Path) -> SearchState:
    """Read checkpoint.pkl; a UserError if it is unreadable or of another format."""
    try:
        with open(path, "rb") as f:
            blob = pickle.load(f)
    except Exception as err:
        raise UserError(
            f"{path}: unreadable checkpoint ({type(err).__name__}: {err}); delete it to start afresh"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a checkpoint of this version; delete it to start afresh")
    return blob["state"]


def save_checkpoint(path: Path, state: SearchState) -> None:
    state.np_global_state = np.random.get_state()
    atomic_write(
        path, lambda f: pickle.dump({"format": CHECKPOINT_FORMAT, "state": state}, f, protocol=pickle.HIGHEST_PROTOCOL)
    )


def check_dream(run_dir: Path, task: Task) -> None:
    """A UserError unless M can be a dream env for `task`: it predicts done and holds initial_z."""
    weights = load_rnn_weights(run_dir / "rnn", task)
    if not bool(weights.get("predicts_done", task.rnn_predicts_done)):
        raise UserError(
            f"{run_dir / 'rnn'}: this {task.name} M predicts no done flag or reward, so it cannot be a "
            "dream env; train M with --dream-heads true (stage 4), or use --env real"
        )
    if "initial_z_mu" not in weights:
        raise UserError(f"{run_dir / 'rnn' / 'weights.npz'}: no initial_z (rerun stage 4, rnn.train)")


def model_fingerprints(run_dir: Path, task: Task, needs_m: bool) -> dict[str, str]:
    """Check V (and M when `needs_m`) load for `task`; return their fingerprints."""
    load_vae_weights(run_dir / "vae", task)
    models = {"vae": vae_fingerprint(run_dir / "vae")}
    if needs_m:
        load_rnn_weights(run_dir / "rnn", task)
        models["rnn"] = rnn_fingerprint(run_dir / "rnn")
    return models


def trained_models(params_file: Path, record: dict[str, Any], run_dir: Path, task: Task, shape: ControllerShape):
    """The fingerprints of `run_dir`'s V (and M) that the controller of `params_file` plays with; a UserError
    when it was trained with others."""
    models = model_fingerprints(run_dir, task, shape.uses_m or "rnn" in (record.get("models") or {}))
    if record.get("models") != models:
        raise UserError(
            f"{params_file}: this controller was trained with another V or M than {run_dir}/vae, "
            f"rnn now hold; retrain it (stage 5) or evaluate the run it came from"
        )
    return models


def record_inputs(config: TrainConfig, task: Task, models: dict[str, str]) -> dict[str, str]:
    """What the search read: V and M's fingerprints, with --init the starting controller's, with --worlds
    each other dream's M's."""
    inputs = dict(models)
    if config.init:
        inputs["init"] = params_sha256(read_params(params_path(config.init, task), task)[1])
    for i, world in enumerate(world_dirs(config.worlds), start=1):
        inputs[f"world{i}"] = rnn_fingerprint(world / "rnn")
    return inputs


def world_dirs(worlds: str) -> list[Path]:
    """--worlds → run directories."""
    return [Path(w) for w in worlds.split(",") if w]


def check_worlds(config: TrainConfig, task: Task, run_dir: Path) -> tuple[str, ...]:
    """--worlds checked: each a run directory whose M can be a dream for `task` and was trained on OUT's V's
    latents (the same V fingerprint); → their paths. A UserError otherwise."""
    dirs = world_dirs(config.worlds)
    if dirs and config.env != "dream":
        raise UserError("--worlds needs --env dream: other Ms are other dreams")
    own_v = vae_fingerprint(run_dir / "vae")
    for world in dirs:
        check_dream(world, task)
        if vae_fingerprint(world / "vae") != own_v:
            raise UserError(f"--worlds {world}: its M was trained on another V than {run_dir / 'vae'}")
    return tuple(str(w) for w in dirs)


def generation_row(
    state: SearchState, fitness: np.ndarray, lengths: np.ndarray, failures: int, seconds: float, worker_rss_mb: float
) -> dict[str, Any]:
    """The original's hist.json row with named fields, plus failed episodes and the largest worker's peak RSS."""
    return {
        "generation": state.generation + 1,
        "seconds": round(state.seconds + seconds, 2),
        "fitness_mean": float(fitness.mean()),
        "fitness_min": float(fitness.min()),
        "fitness_max": float(fitness.max()),
        "fitness_std": float(fitness.std()),
        "sigma": state.es.sigma,
        "length_mean": float(lengths.mean()),
        "length_max": int(lengths.max()),
        "failed_episodes": failures,
        "worker_peak_rss_mb": round(worker_rss_mb, 1),
    }


def progress_line(config: TrainConfig, state: SearchState, row: dict[str, Any], seconds: float) -> str:
    best = state.best
    best_text = f" | best eval {best['mean']:.1f} (gen {best['generation']})" if best else ""
    left = (config.generations - state.generation) * seconds
    failed = f" | {row['failed_episodes']} FAILED episodes" if row["failed_episodes"] else ""
    return (
        f"[stage 5] gen {state.generation}/{config.generations} | fitness mean {row['fitness_mean']:.1f} "
        f"max {row['fitness_max']:.1f} min {row['fitness_min']:.1f} | σ {row['sigma']:.4f} | "
        f"steps {row['length_mean']:.0f}/{row['length_max']} | {seconds:.1f} s{best_text}{failed} | "
        f"ETA {left / 60:.1f} min"
    )


def train(
    config: TrainConfig,
    shape: ControllerShape,
    pool,
    out_dir: Path,
    state: SearchState,
    on_generation: Callable[[SearchState], None] | None = None,
) -> SearchState:
    """Run generations until `config.generations`, writing every file and the checkpoint after each."""
    last_plot = 0.0
    where = f"in M's dream, τ = {config.tau:g}" if config.env == "dream" else f"in the real env ({config.backend})"
    title = f"{config.task} {shape.mode} controller {where}, CMA-ES {config.popsize} x {config.num_episode} episodes"
    while state.generation < config.generations:
        start = time.perf_counter()
        generation = state.generation + 1
        solutions = state.es.ask()
        seeds = training_seeds(config.seed, generation, config.popsize, config.num_episode, config.antithetic)
        results = pool.map(
            split_jobs(solutions, seeds, config.env, pool.workers, in_lockstep(config.env, config.backend))
        )
        returns, lengths, failures = collect(results)
        worker_rss = max(r.peak_rss_mb for r in results)
        fitness = returns.mean(axis=1)
        state.es.tell(fitness)
        if generation % config.eval_every == 0 or generation == config.generations:
            mean = state.es.mean
            eval_returns = evaluate_mean(
                pool,
                mean,
                config.eval_episodes,
                config.num_episode,
                config.eval_env,
                in_lockstep(config.eval_env, config.backend),
            )
            evaluation = {
                "generation": generation,
                "mean": float(eval_returns.mean()),
                "std": float(eval_returns.std()),
                "episodes": int(eval_returns.size),
            }
            state.evaluations.append(evaluation)
            if state.best is None or evaluation["mean"] > state.best["mean"]:
                state.best = {**evaluation, "params": mean}
                write_params(
                    out_dir / "best.json",
                    shape,
                    mean,
                    generation=generation,
                    evaluation=evaluation,
                    models=state.models,
                )
            write_json(out_dir / "evaluations.json", state.evaluations)
        seconds = time.perf_counter() - start
        row = generation_row(state, fitness, lengths, failures, seconds, worker_rss)
        state.history.append(row)
        state.generation = generation
        state.seconds += seconds
        write_json(out_dir / "history.json", state.history)
        write_params(out_dir / "mean.json", shape, state.es.mean, generation=generation, models=state.models)
        save_checkpoint(out_dir / CHECKPOINT, state)
        if time.perf_counter() - last_plot > PLOT_EVERY_SECONDS or state.generation == config.generations:
            plot_fitness(out_dir / "fitness.png", state.history, state.evaluations, title)
            last_plot = time.perf_counter()
        print(progress_line(config, state, row, seconds), flush=True)
        if on_generation is not None:
            on_generation(state)
    return state


def prepare(config: TrainConfig) -> tuple[Task, ControllerShape, Path, SearchState, RolloutSpec]:
    """Check flags and inputs, and load or start the search (rank 0 only)."""
    task = get_task(config.task)
    check_stage_flags(config, ("popsize", "num_episode", "generations", "eval_every", "eval_episodes"))
    if config.popsize < 2:
        raise UserError(f"--popsize must be at least 2, got {config.popsize}")
    if config.sigma_init <= 0:
        raise UserError(f"--sigma-init must be positive, got {config.sigma_init}")
    if config.max_steps < 0:
        raise UserError(f"--max-steps must be ≥ 0 (0 = the task's cap), got {config.max_steps}")
    shape = controller_shape(task, config.mode)
    config.mode = shape.mode
    config.name = config.name or shape.mode
    config.max_steps = config.max_steps or task.max_steps
    config.env = config.env or task.controller_trained_in
    config.backend = check_backend(task, config.backend, task.training_backend)
    config.eval_env = config.eval_env or config.env
    for flag, value in (("env", config.env), ("eval-env", config.eval_env)):
        if value not in ("real", "dream"):
            raise UserError(f"--{flag} must be 'real' or 'dream', got {value!r}")
    if config.tau <= 0:
        raise UserError(f"--tau must be positive, got {config.tau}")
    check_done_rule(config.dream_done)
    run_dir = Path(config.out)
    models = model_fingerprints(run_dir, task, shape.uses_m or "dream" in (config.env, config.eval_env))
    if "dream" in (config.env, config.eval_env):
        check_dream(run_dir, task)
    worlds = check_worlds(config, task, run_dir)
    out_dir = run_dir / "controller" / config.name
    x0 = None
    if config.init:
        init_shape, x0, _ = read_params(params_path(config.init, task), task)
        if init_shape != shape:
            raise UserError(f"--init {config.init}: a {init_shape.mode} controller, not {shape.mode}")
    record = stage_record(
        config, implied=implied_settings(task), inputs=record_inputs(config, task, models), n_params=shape.n_params
    )
    status = open_output(
        out_dir,
        record,
        stage="stage 5",
        restart=config.restart_on_change,
        resumable=RESUMABLE_SETTINGS,
        complete=lambda previous: (previous.get("result") or {}).get("generations", 0) >= config.generations,
    )
    ckpt = out_dir / CHECKPOINT
    if status != NEW and ckpt.exists():
        state = load_checkpoint(ckpt)
        state.settings = dataclasses.asdict(config)
        np.random.set_state(state.np_global_state)
    else:
        np.random.seed(config.seed)
        es = CMAES(
            shape.n_params,
            sigma_init=config.sigma_init,
            popsize=config.popsize,
            weight_decay=config.weight_decay,
            seed=config.seed,
            x0=x0,
        )
        state = SearchState(0, es, [], [], None, 0.0, dataclasses.asdict(config), models)
    spec = RolloutSpec(
        str(run_dir),
        task.name,
        shape.mode,
        config.max_steps,
        env=config.env,
        tau=config.tau,
        dream_done=config.dream_done,
        backend=config.backend,
        worlds=worlds,
    )
    return task, shape, out_dir, state, spec


def main(argv: Sequence[str] | None = None, on_generation: Callable[[SearchState], None] | None = None) -> int:
    comm = mpi_world()
    if comm is not None and comm.Get_rank() > 0:
        serve_mpi(comm)
        return 0
    with PoolScope(comm) as scope:
        config = parse_config(TrainConfig, argv)
        task, shape, out_dir, state, spec = prepare(config)
        if state.generation >= config.generations:
            print(
                f"[stage 5] {out_dir}: already trained for {state.generation} generations; nothing to do "
                "(raise --generations to continue)",
                flush=True,
            )
            return 0
        write_json(
            out_dir / RECORD,
            stage_record(
                config,
                implied=implied_settings(task),
                inputs=record_inputs(config, task, state.models),
                n_params=shape.n_params,
            ),
        )
        pool = scope.open(spec, SerialPool)
        where = (
            f"in M's dream at τ = {config.tau:g} (done: {config.dream_done})"
            if config.env == "dream"
            else f"in the real env ({config.backend})"
        )
        print(
            f"[stage 5] {task.name}: {shape.mode} controller ({shape.n_params:,} params) {where}, CMA-ES population "
            f"{config.popsize} x {config.num_episode} episodes, generations {state.generation + 1}.."
            f"{config.generations}, {pool.workers} rollout worker(s) → {out_dir}",
            flush=True,
        )
        state = train(config, shape, pool, out_dir, state, on_generation)
        best = state.best
        write_json(
            out_dir / RECORD,
            stage_record(
                config,
                implied=implied_settings(task),
                inputs=record_inputs(config, task, state.models),
                n_params=shape.n_params,
                result={
                    "generations": state.generation,
                    "seconds": round(state.seconds, 1),
                    "best_eval": {k: v for k, v in best.items() if k != "params"},
                },
            ),
        )
        print(
            f"[stage 5] done: best evaluation {best['mean']:.1f} ± {best['std']:.1f} over {best['episodes']} "
            f"episodes at generation {best['generation']} → {out_dir / 'best.json'}",
            flush=True,
        )
        return 0


if __name__ == "__main__":
    run(main)
