"""Stage 7: the run's report against the paper, `OUT/report.md`, regenerated from the run's files and printed.

    python -m controller.results.report --task carracing --out runs/carracing-small --preset small

It reads what stages 1-6 wrote (nothing is re-run): every controller evaluated on held-out real episodes
(`eval/<name>.json`: mean ± population std, n), the random baseline on the same seeds, the dream score
for Doom, the τ table when `controller.results.tau_table` was run, CMA-ES history, and the wall and CPU time of
each stage (`stages.json`, written by run.sh). Headlines are means over all evaluation episodes, never a
best single episode. It draws `eval/returns.png`, a histogram of the evaluation returns, and embeds the
stage plots: fitness curve, V reconstructions, real vs dreamed frames, the first evaluation episode.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.artifacts import params_sha256
from controller.model import default_mode
from controller.results.paper import CAR_OTHERS, CAR_TABLE1, DOOM_RANDOM, DOOM_TAU
from env.common.cli import UserError, parse_config, run
from env.common.files import atomic_write, git_commit, read_json
from env.common.hardware import cpu_model
from env.common.stagelog import read_log
from env.tasks import Task, get_task

DREAM_STRIP = "dream_ep000000_tau1.00.png"
"""The strip run.sh draws in stage 7: `rnn.visualize --episode 0 --tau 1.0 --context 10`."""
STAGE_NAMES = {
    1: "collect rollouts",
    2: "train V",
    3: "encode series",
    4: "train M",
    5: "train C (CMA-ES)",
    6: "evaluate",
    7: "report",
}


@dataclass
class ReportConfig:
    """Write OUT/report.md: our evaluation beside the paper's tables (stage 7)."""

    out: str = field(default="", metadata={"help": "run directory"})
    task: str = field(default="carracing", metadata={"help": "carracing or doom"})
    preset: str = field(default="", metadata={"help": "the run.sh preset that produced the run, for the header"})


def score(result: dict[str, Any] | None) -> str:
    """An evaluation as 'mean ± population std (n=…)', rounded to whole steps or points; '—' when missing."""
    if not result:
        return "—"
    return f"{result['mean']:.0f} ± {result['std']:.0f} (n={result['n']})"


def crashed_episodes(found: list[dict[str, Any]], random: dict[str, Any] | None) -> str:
    """How many evaluation episodes crashed twice, per evaluation that had any ('none' when none did)."""
    results = [(c["name"] + suffix, c[env]) for c in found for env, suffix in (("real", ""), ("dream", " (dream)"))]
    counts = [(name, r.get("failed_episodes", 0)) for name, r in results + [("random", random)] if r]
    crashed = [f"{k} of {name}" for name, k in counts if k]
    return ", ".join(crashed) if crashed else "none did"


def round_dir(out: Path, r: int) -> Path:
    """Where round r of iterative training lives: the run directory for round 1, OUT/round<r>/ after."""
    return Path(out) if r <= 1 else Path(out) / f"round{r}"


def read_optional(path: Path) -> Any:
    return read_json(path) if path.exists() else None


def controllers(run_dir: Path, task: Task) -> list[dict[str, Any]]:
    """Each trained controller (default mode first) with its settings, history and evaluations.

    An evaluation counts only when it played this controller (its params_sha256 matches best.json) and,
    in the dream, at the τ the controller was trained at; any other is None (with a line saying so)."""
    found = []
    for ctrl_dir in sorted((run_dir / "controller").glob("*/")):
        if not (ctrl_dir / "best.json").exists() or ".previous" in ctrl_dir.name:
            continue
        config = read_optional(ctrl_dir / "config.json") or {}
        settings = config.get("settings", {})
        history = read_optional(ctrl_dir / "history.json") or []
        best = read_json(ctrl_dir / "best.json")
        sha = params_sha256(best.get("params", []))
        evaluations = {}
        for env, file in (("real", f"{ctrl_dir.name}.json"), ("dream", f"{ctrl_dir.name}_dream.json")):
            result = read_optional(run_dir / "eval" / file)
            evaluations[env] = result if result and result.get("params_sha256") == sha else None
            if result and evaluations[env] is None:
                print(
                    f"[stage 7] {run_dir / 'eval' / file} evaluated an earlier {ctrl_dir.name}; left out "
                    "(rerun stage 6)",
                    flush=True,
                )
        tau = settings.get("tau") if settings.get("env") == "dream" else None
        if evaluations["dream"] and evaluations["dream"].get("tau") != tau:
            evaluations["dream"] = None
        found.append(
            {
                "name": ctrl_dir.name,
                "dir": ctrl_dir,
                "settings": settings,
                "history": history,
                "best": best,
                **evaluations,
            }
        )
    default = default_mode(task)
    return sorted(found, key=lambda c: (c["name"] != default, c["name"]))


def random_baseline(run_dir: Path, task: Task) -> dict[str, Any] | None:
    """The random policy's evaluation `eval/random.json` (None when missing); a UserError if it is another task's."""
    path = run_dir / "eval" / "random.json"
    random = read_optional(path)
    if random and random.get("settings", {}).get("task", task.name) != task.name:
        raise UserError(f"{path} is a {random['settings']['task']!r} result, not {task.name!r}")
    return random


def plot_returns(path: Path, evaluations: list[tuple[str, dict[str, Any]]], task: Task) -> None:
    """A histogram of every evaluation episode's return, one series per evaluated policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    values = [[e["return"] for e in result["episodes"] if e["return"] is not None] for _, result in evaluations]
    low, high = min(min(v) for v in values), max(max(v) for v in values)
    for (label, result), v in zip(evaluations, values):
        ax.hist(v, bins=30, range=(low, high), alpha=0.55, label=f"{label}: {score(result)}")
    ax.set_xlabel("return" if task.name == "carracing" else "steps survived")
    ax.set_ylabel("episodes")
    ax.set_title(f"{task.name}: returns of the held-out evaluation episodes")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def stage_table(run_dir: Path) -> list[str]:
    entries = read_log(run_dir)
    if not entries:
        return ["(no `stages.json`: the stages were not run through run.sh)"]
    lines = ["| stage | steps | wall time | CPU time |", "|---|---|---|---|"]
    total_wall = total_cpu = 0.0
    for stage in sorted({e["stage"] for e in entries}):
        mine = [e for e in entries if e["stage"] == stage]
        wall, cpu = sum(e["wall_seconds"] for e in mine), sum(e["cpu_seconds"] for e in mine)
        total_wall, total_cpu = total_wall + wall, total_cpu + cpu
        names = ", ".join(dict.fromkeys(e["name"] for e in mine))
        lines.append(
            f"| {stage} {STAGE_NAMES.get(stage, '')} | {names} ({len(mine)} run(s)) | {wall / 60:.1f} min | "
            f"{cpu / 60:.1f} min |"
        )
    lines.append(f"| **total** | | **{total_wall / 60:.1f} min** | **{total_cpu / 60:.1f} min** |")
    lines.append("")
    lines.append("Times add up every run of a stage (a rerun that finds a stage complete costs seconds).")
    return lines


def controller_settings(c: dict[str, Any]) -> str:
    s = c["settings"]
    backend = f" ({s['backend']})" if s.get("backend") else ""
    where = f"dream τ = {s.get('tau')}" if s.get("env") == "dream" else f"real env{backend}"
    return (
        f"{s.get('popsize')} × {s.get('num_episode')} episodes, {len(c['history'])} generations in the "
        f"{where}, best mean at generation {c['best'].get('generation')}"
    )


def build(config: ReportConfig) -> tuple[str, Path]:
    task = get_task(config.task)
    run_dir = Path(config.out)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    found = controllers(run_dir, task)
    evaluated = [c for c in found if c["real"]]
    random = random_baseline(run_dir, task)
    lines = [
        f"# World Models reproduction: {task.name}" + (f", preset `{config.preset}`" if config.preset else ""),
        "",
        f"Run `{run_dir}`; report written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on "
        f"{os.cpu_count()} × {cpu_model()}, commit {git_commit() or 'unknown'}.",
        "",
    ]
    first_eval = evaluated[0]["real"] if evaluated else random
    if first_eval:
        seeds = [e["seed"] for e in first_eval["episodes"]]
        lines += [
            f"Every score is the mean ± population std over n held-out real episodes (test seeds "
            f"{seeds[0]}..{seeds[-1]}, never used in training or selection); the paper's are over 100. "
            f"An episode whose env crashed twice counts at the worst return of its evaluation, as in "
            f"training: {crashed_episodes(found, random)}.",
            "",
        ]

    lines += ["## Results", ""]
    if task.name == "carracing":
        lines += [
            "| controller | ours (real CarRacing-v3) | paper (CarRacing-v0, Table 1) | how it was trained |",
            "|---|---|---|---|",
        ]
        for c in found:
            paper = CAR_TABLE1.get(c["settings"].get("mode", c["name"]), ("", "—"))
            lines.append(f"| `{c['name']}` {paper[0]} | {score(c['real'])} | {paper[1]} | {controller_settings(c)} |")
        lines.append(f"| random policy (Cauchy controller, the data-collection policy) | {score(random)} | — | — |")
        lines += [""] + ["Table 1's other methods: " + ", ".join(f"{m} {s}" for m, s in CAR_OTHERS) + "."]
        backends = run_dir / "backends.md"
        if backends.exists():
            title = "### The same policies and V on both backends (`controller.results.backends`)"
            lines += ["", title, "", backends.read_text().strip()]
    else:
        lines += [
            "| controller | ours, in the dream | ours, real VizDoom | paper, dream | paper, real | "
            "how it was trained |",
            "|---|---|---|---|---|---|",
        ]
        for c in found:
            tau = c["settings"].get("tau") if c["settings"].get("env") == "dream" else None
            paper = DOOM_TAU.get(round(tau, 2), ("—", "—")) if tau is not None else ("—", "—")
            label = f"`{c['name']}`" + (f" τ = {tau:g}" if tau is not None else "")
            lines.append(
                f"| {label} | {score(c['dream'])} | {score(c['real'])} | {paper[0]} | {paper[1]} | "
                f"{controller_settings(c)} |"
            )
        lines.append(f"| random policy (uniform action every step) | — | {score(random)} | — | {DOOM_RANDOM} | — |")
        tau_table = run_dir / "tau_table.md"
        if tau_table.exists():
            lines += ["", "### The τ table (`controller.results.tau_table`)", "", tau_table.read_text().strip()]
        rounds = run_dir / "rounds.md"
        if rounds.exists():
            title = "### Iterative training, round by round (`run.sh --rounds`, `controller.results.rounds`)"
            lines += ["", title, "", rounds.read_text().strip()]
        calibration = run_dir / "calibration.md"
        if calibration.exists():
            title = "### Does the dream tell the truth? (`controller.results.calibration`)"
            lines += ["", title, "", calibration.read_text().strip()]
    lines.append("")

    lines += ["## Compute", ""] + stage_table(run_dir) + [""]
    for c in found:
        if c["history"]:
            last = c["history"][-1]
            lines.append(
                f"- `{c['name']}`: {len(c['history'])} generations, {last['seconds'] / 60:.1f} min of "
                f"CMA-ES wall time; last population mean {last['fitness_mean']:.1f}, σ {last['sigma']:.4f}."
            )
    lines.append("")

    lines += ["## Plots", ""]
    evaluations = [(c["name"], c["real"]) for c in evaluated] + ([("random", random)] if random else [])
    if evaluations:
        hist = run_dir / "eval" / "returns.png"
        plot_returns(hist, evaluations, task)
        lines += ["Returns of the evaluation episodes:", "", f"![evaluation returns]({hist.relative_to(run_dir)})", ""]
    pictures = [
        (
            c["dir"] / "fitness.png",
            f"CMA-ES fitness of `{c['name']}` (population mean, min–max, evaluations of the distribution mean, σ)",
        )
        for c in found
    ]
    pictures += [(run_dir / "vae" / "recon.png", "V: real frames (top) and their reconstructions (bottom)")]
    pictures += [
        (
            run_dir / "rnn" / DREAM_STRIP,
            "M: real frames (top), V's reconstructions, and M's dream at τ = 1 after 10 real frames (bottom)",
        )
    ]
    pictures += [
        (run_dir / "eval" / f"{c['name']}.gif", f"`{c['name']}`: the first evaluation episode") for c in evaluated
    ]
    for path, caption in pictures:
        if path.exists():
            lines += [f"{caption}:", "", f"![{caption}]({path.relative_to(run_dir)})", ""]
    text = "\n".join(lines).rstrip() + "\n"
    path = run_dir / "report.md"
    atomic_write(path, lambda f: f.write(text), mode="w")
    return text, path


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(ReportConfig, argv)
    if not config.out:
        raise UserError("--out is required (the run directory)")
    text, path = build(config)
    print(text, end="", flush=True)
    print(f"[stage 7] report → {path}", flush=True)
    return 0


if __name__ == "__main__":
    run(main)
