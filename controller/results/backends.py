"""Are the car's two backends interchangeable for this pipeline? The same policies and V on both.

    python -m controller.results.backends --out runs/carracing-small [--names zh,zh_gym]

On each backend of the task (car: gymnasium, the scoring reference, and envpool, the training default):

- the random data-collection policy (the Cauchy controller) on `--episodes` held-out tracks;
- V's reconstruction loss on held-out frames of that backend: `--frame-episodes` episodes of the
  data-collection policy on seeds no run trains on, every `--frame-every`-th frame;
- every controller of `--names` (default: the task's mode) on the same held-out tracks, whatever
  backend trained it (its `config.json` says which).

Scores are stage 6's (`OUT/eval/NAME.json` on the reference backend, `NAME_<backend>.json` on the
others; finished ones are reused). For each policy the two means agree when they differ by less
than 2 standard errors of the difference (sample stds) or by less than 5 % of the reference's mean.

Writes `OUT/backends.md` and `OUT/backends.json`; stage 7's report includes the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from controller import evaluate
from controller.model import default_mode
from controller.results.replicates import summary
from controller.results.report import score
from env.common.cli import UserError, check_stage_flags, parse_config, run
from env.common.files import atomic_write, read_json, write_json
from env.policies import make_collection_policy
from env.tasks import Task, get_task
from env.wrappers import make_env

FRAME_SEED = 1_000_005
"""Seed of the held-out frames' episodes (runs train on seeds 0, 1, 2, ...; calibration records 1,000,003)."""
RELATIVE = 0.05
"""Two means also agree when they differ by less than this fraction of the reference's mean."""


@dataclass
class BackendsConfig:
    """Score the random policy, V and the trained controllers on each of the task's backends."""

    out: str = field(default="", metadata={"help": "run directory with V (stage 2) and controllers (stage 5)"})
    task: str = field(default="carracing", metadata={"help": "a task with more than one backend (carracing)"})
    names: str = field(default="", metadata={"help": "controllers, comma-separated; '' = the task's mode"})
    episodes: int = field(default=100, metadata={"help": "held-out tracks per score and backend"})
    frame_episodes: int = field(default=10, metadata={"help": "held-out episodes per backend for V's loss"})
    frame_every: int = field(default=10, metadata={"help": "V's loss on every N-th frame of those episodes"})
    max_steps: int = field(default=0, metadata={"help": "episode cap in env steps; 0 = the task's (car 1000)"})
    workers: int = field(default=evaluate.EvaluateConfig.workers, metadata={"help": "processes for episodes"})


def agreement(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Two scores (mean, population std, n) → the difference, its standard error and whether they agree."""
    diff = float(other["mean"]) - float(reference["mean"])
    se = math.sqrt(sum(float(s["std"]) ** 2 * s["n"] / (s["n"] - 1) / s["n"] for s in (reference, other) if s["n"] > 1))
    relative = abs(diff) / abs(float(reference["mean"])) if reference["mean"] else math.inf
    return {
        "difference": diff,
        "se": se,
        "z": abs(diff) / se if se else math.inf,
        "relative": relative,
        "agree": bool(abs(diff) < 2 * se or relative < RELATIVE),
    }


def held_out_frames(
    task: Task, backend: str, episodes: int, every: int, max_steps: int
) -> tuple[list[np.ndarray], list[int]]:
    """Frames of `episodes` data-collection episodes on `backend` (every `every`-th) → (frames per episode, lengths).
    Episodes end at the env's termination or at `max_steps`, on both backends alike."""
    env = make_env(task, max_steps=max_steps, backend=backend)
    frames, lengths = [], []
    try:
        for index in range(episodes):
            seeds = np.random.SeedSequence([FRAME_SEED, index])
            policy = make_collection_policy(task, np.random.default_rng(seeds))
            obs, _ = env.reset(seed=int(seeds.generate_state(1)[0] & 0x7FFFFFFF))
            kept = []
            for t in range(max_steps):
                if t % every == 0:
                    kept.append(obs)
                obs, _, terminated, truncated, _ = env.step(policy(t))
                if terminated or truncated:
                    break
            frames.append(np.stack(kept))
            lengths.append(t + 1)
    finally:
        env.close()
    return frames, lengths


def reconstruction(run_dir: Path, task: Task, config: BackendsConfig) -> dict[str, dict[str, Any]]:
    """V's reconstruction loss (squared error summed per frame, V's training loss) on each backend's held-out frames:
    the per-episode mean's mean ± population std over episodes, n episodes and the frame count."""
    from vae.model import load_vae

    vae = load_vae(run_dir / "vae", task)
    found = {}
    for backend in task.backends:
        frames, lengths = held_out_frames(
            task, backend, config.frame_episodes, config.frame_every, config.max_steps or task.max_steps
        )
        per_episode = []
        for episode in frames:
            x = episode.astype(np.float32) / 255.0
            mu, _ = vae.encoder(x, training=False)
            y = np.asarray(vae.decoder(mu, training=False))
            per_episode.append(float(np.mean(np.sum(np.square(x - y), axis=(1, 2, 3)))))
        found[backend] = {
            "mean": float(np.mean(per_episode)),
            "std": float(np.std(per_episode)),
            "n": len(per_episode),
            "frames": int(sum(len(f) for f in frames)),
            "mean_length": float(np.mean(lengths)),
        }
        print(f"[backends] V on {backend}: recon {found[backend]['mean']:.1f} (n={len(per_episode)})", flush=True)
    return found


def result_name(task: Task, stem: str, backend: str) -> str:
    """Stage 6's result file for `stem` on `backend`: the reference backend keeps stage 6's name."""
    return stem if backend == task.scoring_backend else f"{stem}_{backend}"


def trained_on(run_dir: Path, task: Task, name: str) -> str:
    """Where controller `name` was trained: 'on <backend>' (its stage 5 record; records from before backends: the
    reference) or 'in M's dream'."""
    record = run_dir / "controller" / name / "config.json"
    if not (run_dir / "controller" / name / "best.json").exists() or not record.exists():
        raise UserError(f"{run_dir / 'controller' / name}: no trained controller (run stage 5, controller.train)")
    config = read_json(record)
    if config.get("settings", {}).get("env", "real") != "real":
        return "in M's dream"
    return "on " + (config.get("settings", {}).get("backend") or task.scoring_backend)


def compare(config: BackendsConfig) -> dict[str, Any]:
    """Play what is still missing on every backend, then gather the table's numbers."""
    task = get_task(config.task)
    if len(task.backends) < 2:
        raise UserError(f"{task.name} has one backend ({task.backends[0]}): nothing to compare")
    run_dir = Path(config.out)
    names = [n for n in config.names.split(",") if n] if config.names else [default_mode(task)]
    trained = {name: trained_on(run_dir, task, name) for name in names}
    common = ["--task", task.name, "--out", str(run_dir), "--episodes", str(config.episodes)]
    common += ["--workers", str(config.workers), "--max-steps", str(config.max_steps)]
    rows = []
    for stem, flags, label in [
        ("random", ["--random", "true"], "random data-collection policy"),
        *[(n, ["--name", n], f"controller `{n}`, trained {trained[n]}") for n in names],
    ]:
        scores = {}
        for backend in task.backends:
            print(f"=== backends: {stem} on {backend} ===", flush=True)
            result = result_name(task, stem, backend)
            evaluate.main([*common, *flags, "--backend", backend, "--result", result])
            scores[backend] = read_json(run_dir / "eval" / f"{result}.json")
        reference = scores[task.scoring_backend]
        checks = {b: agreement(reference, s) for b, s in scores.items() if b != task.scoring_backend}
        rows.append({"policy": stem, "label": label, "scores": scores, "agreement": checks})
    return {"backends": list(task.backends), "rows": rows, "reconstruction": reconstruction(run_dir, task, config)}


def table(found: dict[str, Any], task: Task) -> list[str]:
    """The comparison as markdown lines."""
    backends = found["backends"]
    others = [b for b in backends if b != task.scoring_backend]
    head = " | ".join(backends) + " | " + " | ".join(f"{b} − {task.scoring_backend} (SE)" for b in others)
    lines = [f"| policy | {head} | agree |", "|---|" + "---|" * (len(backends) + len(others) + 1)]
    for row in found["rows"]:
        cells = [score(row["scores"][b]) for b in backends]
        checks = [row["agreement"][b] for b in others]
        cells += [f"{c['difference']:+.1f} ({c['se']:.1f}; {100 * c['relative']:.1f} %)" for c in checks]
        lines.append(
            f"| {row['label']} | " + " | ".join(cells) + f" | {'yes' if all(c['agree'] for c in checks) else 'no'} |"
        )
    recon = found["reconstruction"]
    cells = [f"{recon[b]['mean']:.1f} ± {recon[b]['std']:.1f} (n = {recon[b]['n']})" for b in backends]
    diffs = [f"{recon[b]['mean'] - recon[task.scoring_backend]['mean']:+.1f}" for b in others]
    lines.append("| V's reconstruction loss on held-out frames | " + " | ".join(cells + diffs) + " | |")
    frames = ", ".join(f"{recon[b]['frames']} frames on {b}" for b in backends)
    lines += [
        "",
        "Returns: mean ± population std (n held-out tracks, the same seeds on every backend). Two means agree "
        f"when they differ by less than 2 standard errors of the difference or by less than {100 * RELATIVE:g} % "
        f"of the {task.scoring_backend} mean. V's loss (squared error summed over a 64×64×3 frame in [0, 1], decoded "
        f"from μ): per-episode means over n episodes of the data-collection policy ({frames}).",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(BackendsConfig, argv)
    check_stage_flags(config, ("episodes", "frame_episodes", "frame_every", "workers"))
    if config.max_steps < 0:
        raise UserError(f"--max-steps must be ≥ 0 (0 = the task's cap), got {config.max_steps}")
    task = get_task(config.task)
    found = compare(config)
    text = "\n".join(table(found, task)) + "\n"
    run_dir = Path(config.out)
    atomic_write(run_dir / "backends.md", lambda f: f.write(text), mode="w")
    write_json(
        run_dir / "backends.json",
        {
            **found,
            "rows": [{**r, "scores": {b: summary(s) for b, s in r["scores"].items()}} for r in found["rows"]],
        },
    )
    print(text, end="", flush=True)
    print(f"[backends] → {run_dir / 'backends.md'}", flush=True)
    return 0


if __name__ == "__main__":
    run(main)
