"""Iterative training, round by round: the data M saw, M's losses, and C's scores in the game and the dream.

    python -m controller.results.rounds --task doom --out runs/doom-small --rounds 3

Round 1 is the run directory itself (the original's single pass: random-policy data, M, C in the dream);
round R ≥ 2 is `OUT/round<R>/` (`run.sh --rounds`): episodes of round R − 1's controller played in VizDoom
with exploration (and mirrored, with `--mirror`), M continued on every round's data, C continued or trained
afresh in the new dream. For each round it
reads what stages 1 and 4-6 wrote and tabulates the real and dream scores (mean ± std, n) with their ratio.
Writes `OUT/rounds.md` and `OUT/rounds.json`; stage 7's report includes the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from controller.model import default_mode
from controller.results.calibration import ratio
from controller.results.replicates import summary
from controller.results.report import read_optional, round_dir, score
from env.common.cli import UserError, parse_config, run
from env.common.files import atomic_write, write_json
from env.common.rundir import RECORD
from env.episodes import list_episodes, read_episode
from env.tasks import Task, get_task
from env.wrappers import DOOM_THRESHOLD


@dataclass
class RoundsConfig:
    """Tabulate the rounds of iterative training of a run directory."""

    out: str = field(default="", metadata={"help": "run directory (round 1); later rounds in OUT/round<R>/"})
    task: str = field(default="doom", metadata={"help": "the task"})
    rounds: int = field(default=0, metadata={"help": "rounds to tabulate; 0 = every OUT/round<R>/ found"})


def sides(record: Path, task: Task) -> dict[str, float] | None:
    """The share of a record's steps whose action moves left (a < -1/3) and right (a > 1/3): where a round's
    players took M's data. None for an empty record."""
    actions = [read_episode(p, task, ["action"])["action"][:, 0] for p in list_episodes(record)]
    if not actions:
        return None
    a = np.concatenate(actions)
    return {"left": float(np.mean(a < -DOOM_THRESHOLD)), "right": float(np.mean(a > DOOM_THRESHOLD))}


def round_row(run_dir: Path, r: int, name: str, task: Task) -> dict[str, Any]:
    """One round's data, M and C as stages 1 and 4-6 recorded them (None where a stage has not run)."""
    record = run_dir / "record"
    collected = (read_optional(record / RECORD) or {}).get("settings") or {}
    rnn = read_optional(run_dir / "rnn" / RECORD) or {}
    controller = read_optional(run_dir / "controller" / name / RECORD) or {}
    real = read_optional(run_dir / "eval" / f"{name}.json")
    dream = read_optional(run_dir / "eval" / f"{name}_dream.json")
    metrics = (rnn.get("result") or {}).get("metrics") or {}
    return {
        "round": r,
        "dir": str(run_dir),
        "new_episodes": len(list_episodes(record)) if record.exists() else 0,
        "mirror": collected.get("mirror", 0.0),
        "sides": sides(record, task) if record.exists() else None,
        "m_episodes": (rnn.get("inputs") or {}).get("episodes"),
        "m_frames": (rnn.get("inputs") or {}).get("frames"),
        "m_steps": (rnn.get("result") or {}).get("steps"),
        "nll": (rnn.get("result") or {}).get("nll"),
        "done_loss": metrics.get("done_loss"),
        "generations": (controller.get("result") or {}).get("generations"),
        "real": summary(real) if real else None,
        "dream": summary(dream) if dream else None,
        "tau": dream.get("tau") if dream else None,
        "dream_over_real": ratio(summary(dream) if dream else None, summary(real) if real else None),
    }


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown table of the rounds."""
    lines = [
        "| round | new episodes (played by) | their steps left, right | M trained on | M updates | M NLL, done loss "
        "| C generations | real VizDoom | dream | dream ÷ real |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        who = "random policy" if row["round"] == 1 else f"round {row['round'] - 1}'s C, exploring"
        if row["round"] > 1 and row["mirror"]:
            who += f", {row['mirror']:.0%} mirrored"
        moved = f"{row['sides']['left']:.0%}, {row['sides']['right']:.0%}" if row["sides"] else "—"
        data = f"{row['m_episodes']} episodes ({row['m_frames']:,} frames)" if row["m_frames"] else "—"
        m = f"{row['nll']}, {row['done_loss']}" if row["nll"] is not None else "—"
        r = f"{row['dream_over_real']:.2f}" if row["dream_over_real"] is not None else "—"
        lines.append(
            f"| {row['round']} | {row['new_episodes']} ({who}) | {moved} | {data} | {row['m_steps'] or '—'} | {m} "
            f"| {row['generations'] or '—'} | {score(row['real'])} | {score(row['dream'])} | {r} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(RoundsConfig, argv)
    task = get_task(config.task)
    out = Path(config.out)
    if not out.is_dir():
        raise UserError(f"{out}: no such run directory")
    if config.rounds < 0:
        raise UserError(f"--rounds must be ≥ 0 (0 = every round found), got {config.rounds}")
    count = config.rounds
    if count == 0:
        count = 1
        while round_dir(out, count + 1).is_dir():
            count += 1
    name = default_mode(task)
    rows = [round_row(round_dir(out, r), r, name, task) for r in range(1, count + 1)]
    lines = table(rows)
    lines += [
        "",
        "Scores: survival steps, mean ± population std (n held-out episodes, the same seeds every round); "
        "dream at the training τ. Steps left, right: the share of the new episodes' steps whose action "
        "moved the player left (a < -1/3) and right (a > 1/3). M NLL: per z element on the first batches; done loss: M's weighted BCE.",
    ]
    text = "\n".join(lines) + "\n"
    atomic_write(out / "rounds.md", lambda f: f.write(text), mode="w")
    write_json(out / "rounds.json", {"rounds": rows})
    print(text, end="", flush=True)
    return 0


if __name__ == "__main__":
    run(main)
