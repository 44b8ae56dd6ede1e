"""Scale presets: the one place where `smoke` and `small` shrink the original's counts.

`paper` passes the stage defaults (the original code's values) through unchanged. run.sh asks this
module for each stage's flags: `python -m env.common.presets --task T --preset P --stage S --np N`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from env.common.cli import UserError, run
from env.tasks import TASKS

PRESETS: dict[str, dict[str, dict[str, dict[str, object]]]] = {
    "smoke": {
        "carracing": {
            "extract": {"episodes": 4, "max_steps": 150},
            "vae": {"epochs": 1, "batch_size": 20},
            "rnn": {"steps": 4, "batch_size": 4, "seq_len": 150},
            "controller": {
                "popsize": 4,
                "num_episode": 1,
                "generations": 2,
                "eval_every": 2,
                "eval_episodes": 2,
                "max_steps": 100,
            },
            "evaluate": {"episodes": 4, "max_steps": 100},
        },
        "doom": {
            "extract": {"episodes": 4, "max_steps": 300},
            "vae": {"epochs": 1, "batch_size": 20},
            "rnn": {"epochs": 2, "batch_size": 4, "seq_len": 50},
            "controller": {
                "popsize": 4,
                "num_episode": 2,
                "generations": 2,
                "eval_every": 2,
                "eval_episodes": 4,
                "max_steps": 300,
            },
            "evaluate": {"episodes": 4, "max_steps": 300},
            "round-extract": {"episodes": 4},
            "round-rnn": {"epochs": 1},
            "round-controller": {"generations": 1, "eval_every": 1},
        },
    },
    "small": {
        "carracing": {
            "extract": {"episodes": 32},
            "vae": {"epochs": 3},
            "rnn": {"steps": 200, "batch_size": 25},
            "controller": {"popsize": 16, "num_episode": 4, "generations": 30, "eval_every": 10, "eval_episodes": 32},
        },
        "doom": {
            "extract": {"episodes": 400},
            "vae": {"epochs": 8, "max_frames": 32000},
            "rnn": {"steps": 600, "batch_size": 20, "death_weight": 10},
            "controller": {
                "popsize": 32,
                "num_episode": 8,
                "generations": 30,
                "eval_every": 10,
                "eval_episodes": 128,
                "dream_done": "sample",
            },
            "run": {"rounds": 3},
            "round-extract": {"episodes": 200, "mirror": 0.5},
            "round-rnn": {"steps": 400},
            "round-controller": {"init": ""},
        },
    },
    "paper": {
        "carracing": {"extract": {"episodes": 10_000}},
        "doom": {
            "extract": {"episodes": 10_000},
            "round-extract": {"episodes": 1_000},
            "round-rnn": {"epochs": 40},
            "round-controller": {"generations": 200},
        },
    },
}
"""preset → task → stage → flag values. Stages: extract, vae, series, rnn, controller (stage 5) and
evaluate (stage 6, also the random baseline). Anything not named here is the stage's default.
Iterative training's later rounds (`run.sh --rounds`, Doom) run `round-extract`, `round-rnn` and
`round-controller`: the flags of extract, rnn and controller, with these values on top (after run.sh's own,
so `init: ''` trains each round's C afresh from 0 instead of continuing the last round's). `run` holds
run.sh's own defaults for the preset (`rounds`; 1, the original's single pass, where absent)."""

PARALLEL_STAGES = ("extract", "evaluate")
"""Stages that take `--workers`: with --np N they use min(N, cores) processes (stage 5 runs under mpirun)."""


ROUND = "round-"
"""The prefix of a later round's stage (iterative training)."""


def stage_flags(task: str, preset: str, stage: str, np_workers: int) -> list[str]:
    """Command-line flags for `stage` of `task` at `preset`."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    base = stage.removeprefix(ROUND)
    values = {**PRESETS[preset][task].get(base, {}), **PRESETS[preset][task].get(stage, {})}
    if base in PARALLEL_STAGES and np_workers > 1:
        values.setdefault("workers", min(np_workers, os.cpu_count() or 1))
    return [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--np", type=int, default=1)
    args = parser.parse_args(argv)
    print(" ".join(stage_flags(args.task, args.preset, args.stage, args.np)))
    return 0


if __name__ == "__main__":
    run(main)
