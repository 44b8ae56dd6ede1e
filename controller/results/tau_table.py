"""The paper's temperature table for Doom: a controller trained in M's dream at each τ, scored in the dream
and in the real game, beside the published numbers (ORIGINAL.md §6.4).

    python -m controller.results.tau_table --out runs/doom --train-flags "--popsize 64 --generations 200"
    mpirun -np 9 python -m controller.results.tau_table --out runs/doom

For each τ it trains (stage 5, `OUT/controller/zch_tau<τ>/`; a finished one is reused, an interrupted
one resumes), plays the best controller for `--episodes` held-out episodes in the dream at that τ and
in VizDoom (stage 6, `OUT/eval/zch_tau<τ>_dream.json` and `zch_tau<τ>.json`), measures the random
policy on the same real seeds, and writes `OUT/tau_table.md` and `OUT/tau_table.json` with n and the
compute each controller took.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controller import evaluate, train
from controller.model import default_mode
from controller.pool import mpi_world, release_mpi_workers, serve_mpi_sessions
from controller.results.paper import DOOM_RANDOM as PAPER_RANDOM
from controller.results.paper import DOOM_TAU as PAPER
from controller.results.report import score
from env.common.cli import UserError, check_stage_flags, parse_config, run
from env.common.files import atomic_write, read_json, write_json
from env.tasks import get_task


@dataclass
class TauTableConfig:
    """Train and score a Doom controller per dream temperature (the paper's τ table)."""

    out: str = field(default="", metadata={"help": "run directory with a trained V and M (stages 2 and 4)"})
    task: str = field(default="doom", metadata={"help": "the task; the table is the paper's for doom"})
    taus: str = field(default="0.10,0.50,1.00,1.15,1.30", metadata={"help": "comma-separated temperatures"})
    episodes: int = field(default=100, metadata={"help": "held-out episodes per score (dream and real; paper: 100)"})
    train_flags: str = field(
        default="", metadata={"help": 'extra controller.train flags for every τ, e.g. "--popsize 16 --generations 50"'}
    )
    workers: int = field(
        default=evaluate.EvaluateConfig.workers, metadata={"help": "evaluation processes without mpirun"}
    )


def main(argv: Sequence[str] | None = None) -> int:
    comm = mpi_world()
    if comm is not None and comm.Get_rank() > 0:
        serve_mpi_sessions(comm)
        return 0
    try:
        return table(parse_config(TauTableConfig, argv))
    finally:
        if comm is not None:
            release_mpi_workers(comm)


def table(config: TauTableConfig) -> int:
    task = get_task(config.task)
    check_stage_flags(config, ("episodes", "workers"))
    try:
        taus = [float(t) for t in config.taus.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--taus must be comma-separated numbers, got {config.taus!r}") from None
    if not taus or min(taus) <= 0:
        raise UserError(f"--taus must be positive numbers, got {config.taus!r}")
    out = Path(config.out)
    common = ["--task", task.name, "--out", str(out)]
    extra = shlex.split(config.train_flags)
    eval_flags = [*common, "--episodes", str(config.episodes), "--workers", str(config.workers)]
    rows = []
    for tau in taus:
        name = f"{default_mode(task)}_tau{tau:.2f}"
        print(f"=== τ = {tau:.2f}: {name} ===", flush=True)
        train.main([*common, *extra, "--env", "dream", "--tau", str(tau), "--name", name])
        best = read_json(out / "controller" / name / "best.json")
        history = read_json(out / "controller" / name / "history.json")
        settings = read_json(out / "controller" / name / "config.json")["settings"]
        results = {}
        for env, file in (("dream", f"{name}_dream.json"), ("real", f"{name}.json")):
            evaluate.main([*eval_flags, "--name", name, "--env", env, "--tau", str(tau)])
            results[env] = read_json(out / "eval" / file)
        steps = sum(r["length_mean"] for r in history) * settings["popsize"] * settings["num_episode"]
        rows.append(
            {
                "tau": tau,
                "name": name,
                "dream": results["dream"],
                "real": results["real"],
                "generations": len(history),
                "best_generation": best["generation"],
                "train_seconds": history[-1]["seconds"],
                "train_agent_steps": int(steps),
                "popsize": settings["popsize"],
                "num_episode": settings["num_episode"],
            }
        )
    evaluate.main([*eval_flags, "--random", "true"])
    random = read_json(out / "eval" / "random.json")

    lines = [
        "| τ | score in dream (ours) | score in real env (ours) | paper: dream | paper: real | generations "
        "(best at) | training |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        paper = PAPER.get(round(row["tau"], 2), ("—", "—"))
        lines.append(
            f"| {row['tau']:.2f} | {score(row['dream'])} | {score(row['real'])} | {paper[0]} | {paper[1]} | "
            f"{row['generations']} ({row['best_generation']}) | {row['train_seconds'] / 60:.1f} min, "
            f"{row['train_agent_steps'] / 1e6:.1f} M dream steps, {row['popsize']} x {row['num_episode']} |"
        )
    lines.append(f"| random policy | — | {score(random)} | — | {PAPER_RANDOM} | — | — |")
    text = (
        f"Doom TakeCover: controllers trained in M's dream at each τ, scored on {config.episodes} held-out "
        f"episodes (mean ± population std); paper: 100 real episodes.\n\n" + "\n".join(lines) + "\n"
    )
    atomic_write(out / "tau_table.md", lambda f: f.write(text), mode="w")
    write_json(
        out / "tau_table.json",
        {
            "rows": [
                {
                    k: (v if k not in ("dream", "real") else {m: v[m] for m in ("mean", "std", "n")})
                    for k, v in r.items()
                }
                for r in rows
            ],
            "random": {m: random[m] for m in ("mean", "std", "n")},
            "paper": {str(k): v for k, v in PAPER.items()},
            "settings": vars(config),
        },
    )
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    run(main)
