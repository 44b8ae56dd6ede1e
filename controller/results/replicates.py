"""Replicates: a task and preset's runs, one row per seed, their mean and spread across seeds beside the paper.

    python -m controller.results.replicates --task doom --preset small [--runs runs] [--out FILE]

Gathers the run directories under `--runs` whose `run.json` (written by run.sh) names the task and preset.
Per seed: the default controller's score on held-out real episodes (`eval/<mode>.json`), for Doom also in
M's dream (`eval/<mode>_dream.json`), and the random baseline (`eval/random.json`), each mean ± population
std (n). An evaluation counts under the report's rule (`controller.results.report.controllers`): only when
its params_sha256 matches the controller's best.json. The across-seed row is the mean of the per-seed means
± their sample std (ddof = 1), over the seeds that have that evaluation; a run missing one is listed as
incomplete with what it lacks. Writes the table to `--out` (default `RUNS/<task>-<preset>-replicates.md`),
the numbers to a .json beside it, and prints the table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from controller.model import default_mode
from controller.results.paper import CAR_TABLE1, DOOM_RANDOM, DOOM_TAU
from controller.results.report import controllers, random_baseline, round_dir, score
from env.common.cli import UserError, parse_config, run
from env.common.files import atomic_write, read_json, write_json
from env.tasks import Task, get_task

RUN_INFO = "run.json"
"""What run.sh writes into every run directory: task, preset, seed, np, command, commit."""
COLUMNS = ("real", "dream", "random")
"""Scores per seed: the controller in the real env, in M's dream (Doom only), the random policy."""


@dataclass
class ReplicatesConfig:
    """Tabulate a task and preset's runs by seed: per-seed scores, their mean ± std across seeds, the paper's."""

    task: str = field(default="", metadata={"help": "carracing or doom (required)"})
    preset: str = field(default="", metadata={"help": "the run.sh preset of the runs (required)"})
    runs: str = field(default="runs", metadata={"help": "directory holding the run directories"})
    name: str = field(
        default="", metadata={"help": "only run directories named NAME or NAME-seed<S> (default: any name)"}
    )
    seeds: str = field(
        default="", metadata={"help": "comma-separated seeds expected; one without a run is listed as incomplete"}
    )
    out: str = field(default="", metadata={"help": "markdown file (default RUNS/<task>-<preset>-replicates.md)"})
    rounds: int = field(
        default=0,
        metadata={
            "help": "score every run at this round of iterative training (a run that went further counts at "
            "round K; one that stopped short is incomplete); 0 = each run's last round as its run.json records"
        },
    )


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' → [0, 1, 2]; a UserError unless every item is a distinct non-negative integer."""
    items = text.split(",")
    if not all(re.fullmatch(r"0|[1-9][0-9]*", s) for s in items):
        raise UserError(f"--seeds must be comma-separated non-negative integers, got {text!r}")
    seeds = [int(s) for s in items]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds names a seed twice: {text!r}")
    return seeds


def gather(runs: Path, task: Task, preset: str, name: str = "") -> dict[int, tuple[Path, dict[str, Any]]]:
    """The run directories under `runs` whose run.json names `task` and `preset` → {seed: (dir, run.json)}."""
    if not runs.is_dir():
        raise UserError(f"{runs}: no such directory of runs")
    found: dict[int, tuple[Path, dict[str, Any]]] = {}
    for run_dir in sorted(p for p in runs.iterdir() if (p / RUN_INFO).is_file()):
        if name and not re.fullmatch(rf"{re.escape(name)}(-seed\d+)?", run_dir.name):
            continue
        info = read_json(run_dir / RUN_INFO)
        if not isinstance(info, dict) or not isinstance(info.get("seed"), int):
            raise UserError(f"{run_dir / RUN_INFO}: no integer 'seed' (it is written by run.sh)")
        if info.get("task") != task.name or info.get("preset") != preset:
            continue
        seed = info["seed"]
        if seed in found:
            raise UserError(
                f"seed {seed} has two run directories, {found[seed][0]} and {run_dir}: pass --name (or --runs) to "
                "choose one set of replicates"
            )
        found[seed] = (run_dir, info)
    return found


def replicate(seed: int, run_dir: Path, info: dict[str, Any], task: Task, at_round: int = 0) -> dict[str, Any]:
    """One run's scores {'real', 'dream', 'random'} (mean, std, n or None) and what it misses, by seed; scored
    at round `at_round` when > 0, else at the last round its run.json records."""
    mode = default_mode(task)
    rounds = at_round or int(info.get("rounds", 1))
    final = round_dir(run_dir, rounds)
    where = "" if rounds == 1 else f"round{rounds}/"
    entry: dict[str, Any] = {
        "seed": seed,
        "dir": str(run_dir),
        "run": info,
        "rounds": rounds,
        "tau": None,
        **{c: None for c in COLUMNS},
    }
    missing = []
    ctrl = next((c for c in controllers(final, task) if c["name"] == mode), None)
    if ctrl is None:
        missing.append(f"no {where}controller/{mode}/best.json (run stage 5)")
    else:
        settings = ctrl["settings"]
        entry["tau"] = settings.get("tau") if settings.get("env") == "dream" else None
        trained_seed = settings.get("seed", seed)
        if trained_seed != seed:
            missing.append(f"controller/{mode} was trained with seed {trained_seed}, not {seed} (rerun run.sh)")
        else:
            envs = ("real", "dream") if task.name == "doom" else ("real",)
            for env in envs:
                file = f"{where}eval/{mode}{'_dream' if env == 'dream' else ''}.json"
                if ctrl[env]:
                    entry[env] = summary(ctrl[env])
                elif (run_dir / file).exists():
                    missing.append(f"{file} evaluated another controller or τ (rerun stage 6)")
                else:
                    missing.append(f"no {file} (run stage 6)")
    random = random_baseline(run_dir, task)
    if random:
        entry["random"] = summary(random)
    else:
        missing.append("no eval/random.json (run stage 6)")
    entry["missing"] = missing
    return entry


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """An evaluation's headline: mean, population std and n of its episodes."""
    return {"mean": float(result["mean"]), "std": float(result["std"]), "n": int(result["n"])}


def across_seeds(means: Sequence[float]) -> dict[str, Any] | None:
    """Per-seed means [k] → their mean and sample std (ddof = 1; None for one seed) and k, or None if k = 0."""
    if not means:
        return None
    values = np.asarray(means, np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    return {"mean": float(values.mean()), "std": std, "seeds": len(values), "ddof": 1}


def across_cell(stats: dict[str, Any] | None) -> str:
    """The across-seed row's cell: '**mean ± std** (k seeds)', or '—' when no seed has the score."""
    if not stats:
        return "—"
    k = stats["seeds"]
    if stats["std"] is None:
        return f"**{stats['mean']:.0f}** (1 seed: no spread)"
    return f"**{stats['mean']:.0f} ± {stats['std']:.0f}** ({k} seeds)"


def paper_scores(task: Task, tau: float | None) -> dict[str, str]:
    """The paper's published score per column for the default controller ('—' where it has none)."""
    if task.name == "carracing":
        return {"real": CAR_TABLE1[default_mode(task)][1], "dream": "—", "random": "—"}
    dream, real = DOOM_TAU.get(round(tau, 2), ("—", "—")) if tau is not None else ("—", "—")
    return {"real": real, "dream": dream, "random": DOOM_RANDOM}


def build(config: ReplicatesConfig) -> tuple[str, dict[str, Any], Path]:
    """Gather the runs, write the markdown table and its .json → (table text, numbers, markdown path)."""
    if not config.task or not config.preset:
        raise UserError("--task and --preset are required")
    task = get_task(config.task)
    runs = Path(config.runs)
    expected = parse_seeds(config.seeds) if config.seeds else None
    found = gather(runs, task, config.preset, config.name)
    if expected is not None:
        found = {s: found[s] for s in expected if s in found}
    if not found:
        where = f"{runs}/{config.name}[-seed<S>]" if config.name else f"{runs}/*"
        raise UserError(
            f"no run directory {where} has a run.json for {task.name} at preset {config.preset!r} (make them with "
            f"./run.sh {task.name} --preset {config.preset} --seeds 0,1,2)"
        )
    if config.rounds < 0:
        raise UserError(f"--rounds must be ≥ 0 (0 = each run's own), got {config.rounds}")
    entries = [replicate(seed, *found[seed], task, config.rounds) for seed in sorted(found)]
    absent = [s for s in expected or () if s not in found]
    columns = COLUMNS if task.name == "doom" else ("real", "random")
    across = {c: across_seeds([e[c]["mean"] for e in entries if e[c]]) for c in columns}
    taus = {e["tau"] for e in entries if e["tau"] is not None}
    tau = taus.pop() if len(taus) == 1 else None
    paper = paper_scores(task, tau)
    numbers = {
        "task": task.name,
        "preset": config.preset,
        "mode": default_mode(task),
        "tau": tau,
        "runs": str(runs),
        "replicates": entries,
        "across_seeds": across,
        "absent_seeds": absent,
        "paper": {c: paper[c] for c in columns},
    }
    text = table(task, config.preset, runs, entries, absent, across, paper, tau)
    out = Path(config.out) if config.out else runs / f"{task.name}-{config.preset}-replicates.md"
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: no such directory for --out")
    atomic_write(out, lambda f: f.write(text), mode="w")
    write_json(out.with_suffix(".json"), numbers)
    return text, numbers, out


def table(
    task: Task,
    preset: str,
    runs: Path,
    entries: list[dict[str, Any]],
    absent: list[int],
    across: dict[str, dict[str, Any] | None],
    paper: dict[str, str],
    tau: float | None,
) -> str:
    """The markdown page: the per-seed rows, the across-seed row, the paper's row, the incomplete runs."""
    mode = default_mode(task)
    if task.name == "doom":
        dream = f"`{mode}`, in M's dream" + (f" (τ = {tau:g})" if tau is not None else "")
        headers = {"real": f"`{mode}`, real VizDoom", "dream": dream, "random": "random policy, real VizDoom"}
    else:
        headers = {"real": f"`{mode}`, real CarRacing-v3", "random": "random policy (Cauchy controller)"}
    columns = list(across)
    commits = sorted({str(e["run"].get("commit", "unknown")) for e in entries})
    lines = [
        f"# Replicates: {task.name}, preset `{preset}`",
        "",
        f"The run directories under `{runs}` whose `run.json` names {task.name} and preset `{preset}` "
        f"(commit {', '.join(commits)}); table written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        "Each seed's score is the mean ± population std over its n held-out episodes; every seed plays the "
        "same held-out test seeds. The across-seed row is the mean of the per-seed means ± their sample std "
        "(ddof = 1), over the seeds with that evaluation. An evaluation counts only when its params_sha256 "
        "matches the controller's best.json (it played the controller now in the run). The paper's numbers "
        "are one run's mean ± std over 100 episodes, not a spread across seeds. A run of iterative training "
        "(`run.sh --rounds K`) is scored by its last round's controller (`OUT/round<K>/`; with `--rounds K`, every "
        "run by round K's), the random policy in the run directory.",
        "",
        "| seed | run | " + " | ".join(headers[c] for c in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for e in entries:
        run = f"`{Path(e['dir']).name}`" + (f" (round {e['rounds']})" if e["rounds"] > 1 else "")
        lines.append(f"| {e['seed']} | {run} | " + " | ".join(score(e[c]) for c in columns) + " |")
    n_seeds = len(entries)
    lines.append(
        f"| **across seeds** | {n_seeds} run(s) | " + " | ".join(across_cell(across[c]) for c in columns) + " |"
    )
    lines.append("| paper | one run, 100 episodes | " + " | ".join(paper[c] for c in columns) + " |")
    incomplete = [e for e in entries if e["missing"]]
    if incomplete or absent:
        lines += ["", "Incomplete (left out of the across-seed row where a score is missing):", ""]
        lines += [f"- seed {e['seed']} (`{Path(e['dir']).name}`): {'; '.join(e['missing'])}" for e in incomplete]
        lines += [
            f"- seed {s}: no run directory (run ./run.sh {task.name} --preset {preset} --seed {s})" for s in absent
        ]
    else:
        lines += ["", f"All {n_seeds} run(s) are complete."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(ReplicatesConfig, argv)
    text, _, path = build(config)
    print(text, end="", flush=True)
    print(f"[replicates] table → {path} (numbers → {path.with_suffix('.json')})", flush=True)
    return 0


if __name__ == "__main__":
    run(main)
