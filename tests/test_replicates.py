"""Replicates: run.sh's --seed / --seeds / default --np and run.json, and the across-seed table."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from controller.results import replicates
from env.common.cli import UserError
from tests.conftest import ROOT
from tests.test_report import PARAMS, SHA, evaluation, write

RUN_SH = str(ROOT / "run.sh")


def doom_run(runs, name, seed, real=None, dream=None, random=None, preset="small", task="doom", sha=SHA):
    """A hand-made run directory: run.json, a trained `zch` (dream, τ = 1.15) and the evaluations given."""
    run = runs / name
    write(run / "run.json", {"task": task, "preset": preset, "seed": seed, "np": 3, "command": "./run.sh"})
    settings = {"mode": "zch", "env": "dream", "tau": 1.15, "seed": seed, "popsize": 4, "num_episode": 2}
    write(run / "controller" / "zch" / "best.json", {"generation": 2, "params": PARAMS})
    write(run / "controller" / "zch" / "config.json", {"settings": settings})
    if real is not None:
        write(run / "eval" / "zch.json", evaluation(task, real, sha))
    if dream is not None:
        write(run / "eval" / "zch_dream.json", evaluation(task, dream, tau=1.15))
    if random is not None:
        write(run / "eval" / "random.json", evaluation(task, random))
    return run


def test_replicates_table_takes_mean_and_std_across_seeds_and_lists_incomplete_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    doom_run(runs, "doom-small", 0, real=[500, 700], dream=[1000, 1400], random=[200, 220])
    doom_run(runs, "doom-small-seed1", 1, real=[300, 350, 400], dream=[900, 1000], random=[180, 260])
    doom_run(runs, "doom-small-seed2", 2, real=[900, 1000], dream=[800, 1000], random=[210, 230], sha="0" * 64)
    doom_run(runs, "doom-small-seed3", 3, real=[100, 200], dream=[2000, 2100])  # stage 6's random baseline missing
    doom_run(runs, "doom-smoke", 0, real=[1, 2], dream=[1, 2], random=[1, 2], preset="smoke")  # another preset
    (runs / "notes").mkdir()  # a directory without run.json is not a run

    text, numbers, path = replicates.build(replicates.ReplicatesConfig(task="doom", preset="small", runs=str(runs)))
    assert path == runs / "doom-small-replicates.md" and path.read_text() == text
    assert json.loads(path.with_suffix(".json").read_text())["across_seeds"] == numbers["across_seeds"]
    assert [e["seed"] for e in numbers["replicates"]] == [0, 1, 2, 3]

    # Seed 2's real evaluation played an earlier controller: it is left out, and so is seed 3's missing baseline.
    expect = {
        "real": [600.0, 350.0, 150.0],
        "dream": [1200.0, 950.0, 900.0, 2050.0],
        "random": [210.0, 220.0, 220.0],
    }
    for column, means in expect.items():
        got = numbers["across_seeds"][column]
        assert got["seeds"] == len(means)
        assert got["mean"] == pytest.approx(np.mean(means)) and got["std"] == pytest.approx(np.std(means, ddof=1))
    mean, std = np.mean(expect["real"]), np.std(expect["real"], ddof=1)
    row = next(line for line in text.splitlines() if line.startswith("| **across seeds**"))
    assert f"**{mean:.0f} ± {std:.0f}** (3 seeds)" in row and "(4 seeds)" in row
    assert "| paper | one run, 100 episodes | 1092 ± 556 | 918 ± 546 | 210 ± 108 |" in text
    assert "| 1 | " in text and "350 ± 41 (n=3)" in text
    seed2 = next(line for line in text.splitlines() if line.startswith("- seed 2 "))
    assert "eval/zch.json evaluated another controller" in seed2
    assert "- seed 3 " in text and "no eval/random.json (run stage 6)" in text
    assert "- seed 0 " not in text and "doom-smoke`" not in text
    assert "evaluated an earlier zch" in capsys.readouterr().out  # the report's rule says so as it skips one


def test_a_run_of_iterative_training_is_scored_by_its_last_round(tmp_path):
    runs = tmp_path / "runs"
    first = doom_run(runs, "doom-small", 0, real=[150, 250], dream=[1500, 1700], random=[200, 220])
    info = json.loads((first / "run.json").read_text())
    write(first / "run.json", {**info, "rounds": 3})
    doom_run(first, "round3", 0, real=[600, 800], dream=[900, 1100])
    doom_run(runs, "doom-small-seed1", 1, real=[300, 500], dream=[800, 1000], random=[200, 220])
    write(runs / "doom-small-seed1" / "run.json", {**info, "seed": 1, "rounds": 3})  # round 3 not run yet
    text, numbers, _ = replicates.build(replicates.ReplicatesConfig(task="doom", preset="small", runs=str(runs)))
    seed0, seed1 = numbers["replicates"]
    assert seed0["rounds"] == 3 and seed0["real"]["mean"] == 700.0 and seed0["dream"]["mean"] == 1000.0
    assert seed0["random"]["mean"] == 210.0  # the random policy is the run directory's
    assert seed1["real"] is None and "no round3/controller/zch/best.json (run stage 5)" in seed1["missing"]
    assert "| 0 | `doom-small` (round 3) | 700 ± 100 (n=2) |" in text


def test_rounds_flag_scores_every_run_at_that_round(tmp_path):
    runs = tmp_path / "runs"
    first = doom_run(runs, "doom-small", 0, real=[150, 250], random=[200, 220])  # run.json without rounds
    doom_run(first, "round3", 0, real=[600, 800])
    doom_run(first, "round5", 0, real=[500, 700])  # extended past the preset's 3 rounds
    doom_run(runs, "doom-small-seed1", 1, real=[300, 500], random=[200, 220])  # stopped after round 1
    config = replicates.ReplicatesConfig(task="doom", preset="small", runs=str(runs), rounds=3)
    _, numbers, _ = replicates.build(config)
    seed0, seed1 = numbers["replicates"]
    assert seed0["rounds"] == 3 and seed0["real"]["mean"] == 700.0
    assert seed1["real"] is None and "no round3/controller/zch/best.json (run stage 5)" in seed1["missing"]
    _, numbers, _ = replicates.build(replicates.ReplicatesConfig(task="doom", preset="small", runs=str(runs)))
    assert numbers["replicates"][0]["real"]["mean"] == 200.0  # without --rounds: what run.json records (1)
    with pytest.raises(UserError, match="--rounds must be ≥ 0"):
        replicates.build(replicates.ReplicatesConfig(task="doom", preset="small", runs=str(runs), rounds=-1))


def test_replicates_with_expected_seeds_lists_a_missing_run_and_refuses_ambiguity(tmp_path, capsys):
    runs = tmp_path / "runs"
    doom_run(runs, "try-seed0", 0, real=[500], dream=[900], random=[200])
    doom_run(runs, "other-seed0", 0, real=[10], dream=[20], random=[30])
    out = tmp_path / "table.md"
    config = replicates.ReplicatesConfig(task="doom", preset="small", runs=str(runs), seeds="0,4", out=str(out))
    with pytest.raises(UserError, match="seed 0 has two run directories"):
        replicates.build(config)
    argv = ["--task", "doom", "--preset", "small", "--runs", str(runs), "--seeds", "0,4", "--out", str(out)]
    assert replicates.main([*argv, "--name", "try"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# Replicates: doom, preset `small`") and out.read_text() in text
    assert "- seed 4: no run directory" in text and "(1 seed: no spread)" in text
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert numbers["absent_seeds"] == [4] and numbers["across_seeds"]["real"]["std"] is None
    for argv, message in (
        (["--task", "doom", "--preset", "paper", "--runs", str(runs)], "no run directory"),
        (["--task", "doom", "--preset", "small", "--runs", str(tmp_path / "none")], "no such directory"),
        (["--task", "doom", "--preset", "small", "--runs", str(runs), "--seeds", "0,x"], "non-negative integers"),
        (["--preset", "small", "--runs", str(runs)], "--task and --preset are required"),
    ):
        with pytest.raises(UserError, match=message):
            replicates.main(argv)


def test_run_sh_defaults_np_to_cores_plus_one_and_writes_run_json(tmp_path):
    out = tmp_path / "run"
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(
            [RUN_SH, "doom", "--preset", "smoke", "--seed", "7", "--out", str(out)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while not (out / "run.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # run.json is written just before stage 1 starts; stop there
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    info = json.loads((out / "run.json").read_text())
    cores = len(os.sched_getaffinity(0))
    assert {k: info[k] for k in ("task", "preset", "seed", "np", "rounds")} == {
        "task": "doom",
        "preset": "smoke",
        "seed": 7,
        "np": cores + 1,
        "rounds": 1,  # the smoke preset's: no iterative training unless --rounds asks
    }
    assert info["command"].endswith(f"doom --preset smoke --seed 7 --out {out}")
    assert f"seed 7, --np {cores + 1} → {out}" in (tmp_path / "log").read_text()


@pytest.mark.slow
def test_two_seeds_collect_different_episodes_train_different_models_and_are_tabulated(tmp_path):
    """`./run.sh doom --preset smoke --seeds 0,1`: two complete runs, then the replicates table of both."""
    out = tmp_path / "run"
    with open(tmp_path / "log", "w") as log:
        result = subprocess.run(
            [RUN_SH, "doom", "--preset", "smoke", "--seeds", "0,1", "--np", "1", "--out", str(out)],
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=1200,
        )
    assert result.returncode == 0, (tmp_path / "log").read_text()[-3000:]
    runs = {seed: tmp_path / f"run-seed{seed}" for seed in (0, 1)}
    for seed, run in runs.items():
        assert json.loads((run / "run.json").read_text())["seed"] == seed
        commands = {e["name"]: e["command"] for e in json.loads((run / "stages.json").read_text())}
        for name in ("extract", "vae", "rnn", "controller"):
            assert f"--seed {seed}" in commands[name]
        assert "--seed" not in commands["evaluate"]  # every seed plays the same held-out episodes

    episodes = [np.load(run / "record" / "ep_000000.npz") for run in runs.values()]
    assert not np.array_equal(episodes[0]["action"], episodes[1]["action"])
    assert int(episodes[0]["seed"]) != int(episodes[1]["seed"])
    vae = [np.load(run / "vae" / "weights.npz") for run in runs.values()]
    names = [k for k in vae[0].files if vae[0][k].dtype.kind == "f"]
    assert names and not all(np.array_equal(vae[0][k], vae[1][k]) for k in names)
    params = [json.loads((run / "controller" / "zch" / "best.json").read_text())["params"] for run in runs.values()]
    assert params[0] != params[1]
    evals = [json.loads((run / "eval" / "zch.json").read_text()) for run in runs.values()]
    assert [e["seed"] for e in evals[0]["episodes"]] == [e["seed"] for e in evals[1]["episodes"]]

    table = (tmp_path / "run-replicates.md").read_text()
    numbers = json.loads((tmp_path / "run-replicates.json").read_text())
    assert [e["seed"] for e in numbers["replicates"]] == [0, 1] and not any(e["missing"] for e in numbers["replicates"])
    means = [e["mean"] for e in evals]
    real = numbers["across_seeds"]["real"]
    assert real["seeds"] == 2 and real["mean"] == pytest.approx(np.mean(means))
    assert real["std"] == pytest.approx(np.std(means, ddof=1))
    assert f"**{np.mean(means):.0f} ± {np.std(means, ddof=1):.0f}** (2 seeds)" in table
    assert "All 2 run(s) are complete." in table and "1092 ± 556" in table
