"""Stage 7's report: the run's evaluations beside the paper's rows, from the files alone."""

import hashlib
import json

import numpy as np
import pytest

from controller.results import report
from env.common.cli import UserError
from env.common.stagelog import append_log


def write(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


PARAMS = [0.5, -1.0, 0.25]
SHA = hashlib.sha256(np.asarray(PARAMS, np.float64).tobytes()).hexdigest()


def evaluation(task, returns, sha=SHA, **extra):
    """A stage 6 result of `returns` for the controller whose parameters are PARAMS (or of fingerprint `sha`)."""
    returns = np.asarray(returns, float)
    return {
        "settings": {"task": task},
        "params_sha256": sha,
        "n": len(returns),
        "mean": float(returns.mean()),
        "std": float(returns.std()),
        "episodes": [{"seed": 1610612736 + k, "return": float(r), "length": 100} for k, r in enumerate(returns)],
        **extra,
    }


def controller(run, name, settings, generations):
    write(run / "controller" / name / "best.json", {"generation": generations, "params": PARAMS})
    write(run / "controller" / name / "config.json", {"settings": settings})
    write(
        run / "controller" / name / "history.json",
        [
            {"generation": g + 1, "seconds": 60.0 * (g + 1), "fitness_mean": 1.0, "sigma": 0.1}
            for g in range(generations)
        ],
    )


def test_doom_report_puts_dream_and_real_scores_beside_the_tau_row(tmp_path):
    run = tmp_path / "doom"
    controller(run, "zch", {"mode": "zch", "env": "dream", "tau": 1.15, "popsize": 32, "num_episode": 8}, 3)
    write(run / "eval" / "zch.json", evaluation("doom", [500, 700, 300, 900]))
    write(run / "eval" / "zch_dream.json", evaluation("doom", [1000, 800], tau=1.15))
    write(run / "eval" / "random.json", evaluation("doom", [200, 250, 150]))
    controller(run, "zch.previous", {"mode": "zch"}, 1)
    controller(run, "zch.previous.2", {"mode": "zch"}, 1)
    append_log(run, {"stage": 5, "name": "controller", "wall_seconds": 120.0, "cpu_seconds": 200.0})
    append_log(run, {"stage": 5, "name": "controller", "wall_seconds": 60.0, "cpu_seconds": 100.0})
    (run / "calibration.md").write_text("| policy | real |\n|---|---|\n| always left | 175 ± 53 (n=100) |\n")
    text, path = report.build(report.ReportConfig(out=str(run), task="doom", preset="small"))
    assert "Does the dream tell the truth?" in text and "| always left | 175 ± 53 (n=100) |" in text
    assert "crashed twice counts at the worst return of its evaluation, as in training: none did" in text
    assert path.read_text() == text
    row = next(line for line in text.splitlines() if line.startswith("| `zch` τ = 1.15"))
    # mean ± population std (n), as numpy computes them; the paper's τ = 1.15 row beside it.
    assert "| 900 ± 100 (n=2) | 600 ± 224 (n=4) | 918 ± 546 | 1092 ± 556 |" in row
    assert "32 × 8 episodes, 3 generations in the dream τ = 1.15" in row
    assert "| 200 ± 41 (n=3) | — | 210 ± 108 |" in text
    assert "| 5 train C (CMA-ES) | controller (2 run(s)) | 3.0 min | 5.0 min |" in text
    assert "zch.previous" not in text  # a superseded search is not reported
    assert (run / "eval" / "returns.png").stat().st_size > 1000


def test_car_report_names_table1_rows_by_mode_and_refuses_a_missing_run(tmp_path):
    run = tmp_path / "car"
    for mode, scores in (("zh", [400, 600]), ("z", [100, 300]), ("z_hidden", [700, 800])):
        controller(run, mode, {"mode": mode, "env": "real", "popsize": 16, "num_episode": 2}, 2)
        write(run / "eval" / f"{mode}.json", evaluation("carracing", scores))
    stale = json.loads((run / "eval" / "z_hidden.json").read_text())
    write(run / "eval" / "z_hidden.json", {**stale, "params_sha256": "0" * 64})  # an earlier controller's result
    text, _ = report.build(report.ReportConfig(out=str(run), task="carracing"))
    lines = text.splitlines()
    zh = next(i for i, line in enumerate(lines) if line.startswith("| `zh`"))
    z = next(i for i, line in enumerate(lines) if line.startswith("| `z` "))
    assert zh < z and "500 ± 100 (n=2) | 906 ± 21" in lines[zh] and "200 ± 100 (n=2) | 632 ± 251" in lines[z]
    assert "| random policy (Cauchy controller, the data-collection policy) | — |" in text
    hidden = next(line for line in lines if line.startswith("| `z_hidden`"))
    assert "| — | 788 ± 141 |" in hidden and "750" not in text
    with pytest.raises(UserError, match="no such run directory"):
        report.build(report.ReportConfig(out=str(tmp_path / "missing"), task="carracing"))
