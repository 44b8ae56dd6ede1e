"""Does M's dream tell the truth about the game? Fixed policies and the trained C scored in both (Doom).

    python -m controller.results.calibration --out runs/doom-small

For each policy — the paper's random agent (a uniform action every step), always no-op, the
data-collection policy (a uniform action held 1–10 steps), always left, always right, and the trained
controller — it plays `--episodes` held-out episodes in VizDoom and in M's dream at τ = 1.0 and at the
controller's training τ (stage 6, `OUT/eval/calib_<policy>*.json`; finished ones are reused), and
tabulates survival mean ± std (n) with the ratio dream ÷ real. A dream that tells the truth keeps
every ratio near 1; a policy the data never showed (pressed against a wall) is where it lies.

It also measures M's predicted death against the real one: on `--death-episodes` freshly recorded
episodes of the data-collection policy (seeds no training run uses, `OUT/calibration/record/`), V's
sampled z and the recorded actions are fed through M step by step, as in training; an episode's death
is caught when M's done logit is first > 0 within `--window` steps before it, premature when it fires
earlier (the dream would have ended the episode there), missed when it never fires. The same logits give
M's expected number of deaths per episode, the sum of its death probabilities (`rnn.twin.death_probability`)
over the episode's steps: 1 where M's hazard is calibrated, below 1 where M underrates the danger; and the
same sum in M's own dream of each episode (its first frame, then M's samples at the training τ, driven by
the recorded actions): below the first where M's dreamed trajectories are safer than the game's. Last, the
death probability over the `--window` steps before each death, on the game's frames and where M dreams
those steps itself from the same frames before them: how much of the danger M can see coming.

Writes `OUT/calibration.md` and `OUT/calibration.json`; stage 7's report includes the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from controller import evaluate
from controller.model import default_mode
from controller.results.replicates import summary
from controller.results.report import score
from controller.train import check_done_rule
from env import extract
from env.common.cli import UserError, check_stage_flags, parse_config, run
from env.common.files import atomic_write, read_json, write_json
from env.episodes import list_episodes, read_episode
from env.tasks import Task, get_task
from rnn.dream import TAU
from rnn.twin import RNNTwin, death_probability
from rnn.visualize import dream
from vae.twin import EncoderTwin

POLICIES = {
    "uniform": "random: a uniform action every step (the paper's baseline)",
    "noop": "always no-op",
    "repeat_uniform": "data collection: a uniform action held 1–10 steps",
    "left": "always left",
    "right": "always right",
}
"""The fixed policies calibrated (env.policies names) and how the table calls them."""
RECORD_SEED = 1_000_003
"""Stage 1's seed for the held-out recorded episodes (runs train on seeds 0, 1, 2, ...)."""


@dataclass
class CalibrationConfig:
    """Score fixed policies and the trained C in the real game and in M's dream; M's deaths against the real ones."""

    out: str = field(default="", metadata={"help": "run directory with V, M (stages 2, 4) and a controller (stage 5)"})
    task: str = field(default="doom", metadata={"help": "the task; the dream's survival calibration is Doom's"})
    name: str = field(default="", metadata={"help": "the controller, OUT/controller/NAME/; '' = the task's mode"})
    episodes: int = field(default=100, metadata={"help": "held-out episodes per score (real and dream)"})
    taus: str = field(default="", metadata={"help": "dream temperatures; '' = 1.0 and the controller's training τ"})
    dream_done: str = field(
        default="", metadata={"help": "the dream's done rule, threshold or sample; '' = the controller's training rule"}
    )
    death_episodes: int = field(default=50, metadata={"help": "recorded episodes for M's death prediction"})
    window: int = field(default=5, metadata={"help": "steps before a real death in which M's firing counts as caught"})
    workers: int = field(default=evaluate.EvaluateConfig.workers, metadata={"help": "processes for episodes"})


def ratio(dream: dict[str, Any] | None, real: dict[str, Any] | None) -> float | None:
    """Mean survival in the dream ÷ in the real game (None when either is missing)."""
    if not dream or not real or not real["mean"]:
        return None
    return float(dream["mean"]) / float(real["mean"])


def classify(logits: np.ndarray, died: bool, window: int) -> tuple[str, int, int]:
    """One episode's done logits float [T] (step t predicts the end after action t) → (outcome, false alarms,
    steps before the window). Outcome: 'survived' (no real death), else by M's first logit > 0: 'caught' within
    the last `window` steps, 'premature' before them, 'missed' never."""
    cut = max(len(logits) - window, 0) if died else len(logits)
    alarms = int((logits[:cut] > 0).sum())
    fired = np.flatnonzero(logits > 0)
    if not died:
        return "survived", alarms, cut
    if len(fired) == 0:
        return "missed", alarms, cut
    return ("premature" if fired[0] < cut else "caught"), alarms, cut


def done_logits(rnn: RNNTwin, z: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """M's done logit float [T] fed latents z [T, z] and actions [T, A] from a zero state, restart on the first
    step; step t predicts the end after action t."""
    restart = np.zeros((len(z), 1), np.float32)
    restart[0] = 1.0
    x = np.concatenate([z, actions, restart], axis=1)[:, None, :]
    h, c = rnn.initial_state(1)
    logits = np.empty(len(z), np.float32)
    for t in range(len(z)):
        h, c = rnn.lstm(x[t], h, c)
        logits[t] = rnn.head(h).done_logit[0]
    return logits


def teacher_forced_logits(encoder: EncoderTwin, rnn: RNNTwin, episode: dict[str, Any]) -> np.ndarray:
    """M's done logit float [T] along a recorded episode, fed V's sampled z and the recorded actions as in
    training (restart on the first step); step t predicts the end after action t."""
    mu, logvar = encoder(episode["obs"])
    rng = np.random.default_rng([int(episode["seed"]), 3])
    z = (mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape)).astype(np.float32)
    return done_logits(rnn, z, episode["action"])


def dreamed_episode(
    encoder: EncoderTwin, rnn: RNNTwin, episode: dict[str, Any], tau: float, context: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """M's own dream of a recorded episode: V's sampled z of the first `context` frames, then M's samples at
    temperature τ, driven by the recorded actions → (z float32 [T, z], M's done logit float [T] along it).
    The context's z are the same draws for every `context` (one generator per episode)."""
    steps = len(episode["action"])
    mu, logvar = encoder(episode["obs"][:context])
    mu = np.concatenate([mu, np.repeat(mu[-1:], steps - context, 0)])
    logvar = np.concatenate([logvar, np.repeat(logvar[-1:], steps - context, 0)])
    rng = np.random.default_rng([int(episode["seed"]), 5])
    z = dream(rnn, rnn.task, mu, logvar, episode["action"], context, tau, rng)
    return z, done_logits(rnn, z, episode["action"])


def dreamed_ending(
    encoder: EncoderTwin, rnn: RNNTwin, episode: dict[str, Any], tau: float, steps: int
) -> tuple[float, float]:
    """M's death probability summed over an episode's last `steps` steps → (on V's sampled z of the game's
    frames, with M dreaming those steps itself from the same z before them)."""
    total = len(episode["action"])
    context = max(1, total - steps)
    game = death_probability(dreamed_episode(encoder, rnn, episode, tau, context=total)[1])
    dreamed = death_probability(dreamed_episode(encoder, rnn, episode, tau, context=context)[1])
    return float(game[context:].sum()), float(dreamed[context:].sum())


def death_summary(episodes: Sequence[tuple[np.ndarray, bool]], window: int) -> dict[str, Any]:
    """(done logits [T], died) per recorded episode → counts of caught, premature and missed deaths, the false
    alarm rate before the windows, and M's expected deaths per dying episode (its death probabilities summed)."""
    outcomes = {"caught": 0, "premature": 0, "missed": 0, "survived": 0}
    alarms = quiet_steps = 0
    expected = []
    for logits, died in episodes:
        outcome, false_alarms, steps = classify(logits, died, window)
        if died:
            expected.append(float(death_probability(logits).sum()))
        outcomes[outcome] += 1
        alarms, quiet_steps = alarms + false_alarms, quiet_steps + steps
    deaths = outcomes["caught"] + outcomes["premature"] + outcomes["missed"]
    return {
        "episodes": deaths + outcomes["survived"],
        "deaths": deaths,
        "window": window,
        **{k: v for k, v in outcomes.items() if k != "survived"},
        "false_alarm_rate": alarms / quiet_steps if quiet_steps else None,
        "expected_deaths": float(np.mean(expected)) if expected else None,
    }


def mean_or_none(values: Sequence[float]) -> float | None:
    """The mean of `values`, None where there are none (a run whose recorded episodes never died)."""
    return float(np.mean(values)) if values else None


def death_prediction(run_dir: Path, task: Task, window: int, tau: float) -> dict[str, Any]:
    """M's done logit on the recorded episodes of OUT/calibration/record/ (teacher-forced) → death_summary, with
    M's expected deaths per dying episode in its own dream at τ along the same actions (`dreamed_deaths`) and
    the death probability over the last `window` steps before a death, on the game's frames and dreamed."""
    encoder = EncoderTwin.load(run_dir / "vae", task)
    rnn = RNNTwin.load(run_dir / "rnn", task)
    episodes, dreamed, endings = [], [], []
    for path in list_episodes(run_dir / "calibration" / "record"):
        episode = read_episode(path, task, fields=("obs", "action", "done", "seed"))
        died = bool(episode["done"][-1])
        episodes.append((teacher_forced_logits(encoder, rnn, episode), died))
        if died:
            dreamed.append(float(death_probability(dreamed_episode(encoder, rnn, episode, tau)[1]).sum()))
            endings.append(dreamed_ending(encoder, rnn, episode, tau, window))
    return {
        **death_summary(episodes, window),
        "dreamed_deaths": mean_or_none(dreamed),
        "dream_tau": tau,
        "ending_game": mean_or_none([game for game, _ in endings]),
        "ending_dreamed": mean_or_none([dreamed_ for _, dreamed_ in endings]),
    }


def calibrate(config: CalibrationConfig) -> dict[str, Any]:
    """Play every policy where it is still missing, then gather the table's numbers."""
    task = get_task(config.task)
    run_dir = Path(config.out)
    name = config.name or default_mode(task)
    trained_config = run_dir / "controller" / name / "config.json"
    if not trained_config.exists():
        raise UserError(f"{run_dir / 'controller' / name}: no trained controller (run stage 5, controller.train)")
    settings = read_json(trained_config)["settings"]
    train_tau = float(settings.get("tau", TAU))
    rule = check_done_rule(config.dream_done or settings.get("dream_done", "threshold"))
    taus = [float(t) for t in config.taus.split(",")] if config.taus else sorted({1.0, train_tau})
    common = ["--task", task.name, "--out", str(run_dir), "--episodes", str(config.episodes)]
    common += ["--workers", str(config.workers)]
    rows = []
    for policy in [*POLICIES, name]:
        flags = ["--name", name] if policy == name else ["--policy", policy, "--name", f"calib_{policy}"]
        stem = name if policy == name else f"calib_{policy}"
        print(f"=== calibration: {policy} ===", flush=True)
        evaluate.main([*common, *flags])
        dreams = {}
        for tau in taus:
            result = f"{stem}_dream_tau{tau:.2f}" + ("" if rule == "threshold" else f"_{rule}")
            dream_flags = ["--env", "dream", "--tau", str(tau), "--dream-done", rule, "--result", result]
            evaluate.main([*common, *flags, *dream_flags])
            dreams[f"{tau:.2f}"] = read_json(run_dir / "eval" / f"{result}.json")
        real = read_json(run_dir / "eval" / f"{stem}.json")
        rows.append(
            {"policy": policy, "label": POLICIES.get(policy, f"trained C `{name}`"), "real": real, "dream": dreams}
        )
    extract.main(
        [
            "--task",
            task.name,
            "--out",
            str(run_dir / "calibration"),
            "--episodes",
            str(config.death_episodes),
            "--seed",
            str(RECORD_SEED),
            "--workers",
            str(config.workers),
        ]
    )
    death = death_prediction(run_dir, task, config.window, train_tau)
    return {"taus": taus, "train_tau": train_tau, "dream_done": rule, "rows": rows, "death": death}


def table(found: dict[str, Any], episodes: int) -> list[str]:
    """The calibration as markdown lines."""
    taus = [f"{t:.2f}" for t in found["taus"]]
    lines = [
        "| policy | real | " + " | ".join(f"dream τ = {t} | dream ÷ real" for t in taus) + " |",
        "|---|---|" + "---|---|" * len(taus),
    ]
    for row in found["rows"]:
        cells = []
        for t in taus:
            dream = row["dream"][t]
            r = ratio(dream, row["real"])
            cells += [score(dream), "—" if r is None else f"{r:.2f}"]
        lines.append(f"| {row['label']} | {score(row['real'])} | " + " | ".join(cells) + " |")
    d = found["death"]
    rate = "—" if d["false_alarm_rate"] is None else f"{100 * d['false_alarm_rate']:.2f} %"
    expected = "—" if d.get("expected_deaths") is None else f"{d['expected_deaths']:.2f}"
    dreamed = "—" if d.get("dreamed_deaths") is None else f"{d['dreamed_deaths']:.2f}"
    lines += [
        "",
        f"Survival in steps, mean ± population std (n) over {episodes} held-out episodes per cell; "
        f"the controller trained at τ = {found['train_tau']:g}; the dream's done rule: {found['dream_done']}.",
        "",
        f"M's predicted death on {d['episodes']} held-out recorded episodes ({d['deaths']} deaths): "
        f"caught within {d['window']} steps before the death {d['caught']}, fired earlier {d['premature']}, "
        f"never fired {d['missed']}; M's done logit > 0 on {rate} of the steps before those windows; "
        f"M's expected deaths per dying episode (its death probabilities summed over the episode): {expected} "
        f"on the game's frames, {dreamed} in its own dream at τ = {d.get('dream_tau', found['train_tau']):g} "
        "along the same actions (1 where the dream is as deadly as the game).",
    ]
    if d.get("ending_game") is not None:
        lines[-1] += (
            f" Over the last {d['window']} steps before each death: {d['ending_game']:.3f} on the game's frames, "
            f"{d['ending_dreamed']:.3f} where M dreams those steps itself from the frames before them."
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(CalibrationConfig, argv)
    check_stage_flags(config, ("episodes", "death_episodes", "window", "workers"))
    if get_task(config.task).name != "doom":
        raise UserError("the calibration is Doom's: its dream pays 1 per step survived, as the game")
    found = calibrate(config)
    text = "\n".join(table(found, config.episodes)) + "\n"
    run_dir = Path(config.out)
    atomic_write(run_dir / "calibration.md", lambda f: f.write(text), mode="w")
    write_json(
        run_dir / "calibration.json",
        {
            **found,
            "rows": [
                {
                    "policy": r["policy"],
                    "label": r["label"],
                    "real": summary(r["real"]),
                    "dream": {t: summary(d) for t, d in r["dream"].items()},
                }
                for r in found["rows"]
            ],
        },
    )
    print(text, end="", flush=True)
    print(f"[calibration] → {run_dir / 'calibration.md'}", flush=True)
    return 0


if __name__ == "__main__":
    run(main)
