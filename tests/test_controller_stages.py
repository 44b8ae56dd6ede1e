"""Stages 5 and 6 on untrained V and M: MPI vs serial, kill and resume, env crashes, evaluation, errors."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from controller import evaluate, rollouts, train
from controller.es import TEST_BASE, TRAIN_RANGE, heldout_seeds, selection_seeds
from env.tasks import get_task
from rnn.artifacts import fingerprint as rnn_fingerprint
from rnn.model import build_rnn, save_rnn
from tests.conftest import ROOT
from vae.model import build_vae, save_vae

CAR = get_task("carracing")
DOOM = get_task("doom")
PY = sys.executable
MPIRUN = os.path.join(os.path.dirname(PY), "mpirun")
TINY = ["--popsize", "4", "--num-episode", "2", "--max-steps", "15", "--eval-every", "2", "--eval-episodes", "3"]


def make_run(out, task, seed=0):
    """A run directory holding an untrained V and M of `task`, saved as stages 2 and 4 save them."""
    for stage in ("vae", "rnn"):
        (out / stage).mkdir(parents=True, exist_ok=True)
    save_vae(build_vae(task, seed=seed), out / "vae", task)
    initial = np.random.default_rng(seed).normal(size=(4, task.z_size)).astype(np.float32)
    save_rnn(
        build_rnn(task, seed=seed),
        out / "rnn",
        task,
        extra={"initial_z_mu": initial, "initial_z_logvar": np.full_like(initial, -2.0)},
    )
    for stage in ("vae", "rnn"):
        (out / stage / "config.json").write_text(json.dumps({"settings": {"task": task.name}}))
    return out


@pytest.fixture(scope="module")
def car_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("car"), CAR)


def run_module(module, *args, np_=1, timeout=300):
    command = [PY, "-m", module, *args] if np_ == 1 else [MPIRUN, "-np", str(np_), PY, "-m", module, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def history(out, name="zh"):
    rows = json.loads((out / "controller" / name / "history.json").read_text())
    return [{k: v for k, v in row.items() if k not in ("seconds", "worker_peak_rss_mb")} for row in rows]


def copy_models(src, dst):
    for stage in ("vae", "rnn"):
        (dst / stage).mkdir(parents=True)
        for f in (src / stage).iterdir():
            (dst / stage / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.slow
def test_mpirun_np3_killed_and_rerun_gives_the_serial_history(car_run, tmp_path):
    args = ["--task", "carracing", *TINY, "--generations", "4"]
    serial = run_module("controller.train", "--out", str(car_run), *args)
    assert serial.returncode == 0, serial.stderr

    out = copy_models(car_run, tmp_path / "mpi")
    command = [MPIRUN, "-np", "3", PY, "-m", "controller.train", "--out", str(out), *args]
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    hist = out / "controller" / "zh" / "history.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if hist.exists() and len(json.loads(hist.read_text())) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    killed_at = len(json.loads(hist.read_text()))
    assert 2 <= killed_at < 4, "the run finished before it could be killed"
    rerun = run_module("controller.train", "--out", str(out), *args, np_=3)
    assert rerun.returncode == 0, rerun.stderr
    # The kill may land between a generation's files and its checkpoint: that generation is replayed.
    resumed_at = int(re.search(r"generations (\d+)\.\.4, 2 rollout worker\(s\)", rerun.stdout).group(1))
    assert 2 <= resumed_at <= killed_at + 1

    serial_hist = history(car_run)[:4]
    assert history(out) == serial_hist
    for name in ("evaluations.json", "best.json"):
        assert (out / "controller" / "zh" / name).read_text() == (car_run / "controller" / "zh" / name).read_text()
    assert [row["generation"] for row in serial_hist] == [1, 2, 3, 4]
    best = json.loads((out / "controller" / "zh" / "best.json").read_text())
    assert best["generation"] in (2, 4) and len(best["params"]) == 867

    again = run_module("controller.train", "--out", str(out), *args, np_=3)
    assert again.returncode == 0 and "nothing to do" in again.stdout

    # Probe that the rollout process never imported TensorFlow: one more generation, played in this one process.
    probe = subprocess.run(
        [
            PY,
            "-c",
            "import sys; from controller import train; train.main(sys.argv[1:]); "
            "print('TF' if {'tensorflow', 'keras'} & set(sys.modules) else 'numpy only')",
            "--out",
            str(car_run),
            *args,
            "--generations",
            "5",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().endswith("numpy only")


def test_evaluate_plays_heldout_seeds_serially_in_processes_and_under_mpi(car_run, tmp_path):
    out = copy_models(car_run, tmp_path / "eval")
    assert train.main(["--out", str(out), "--task", "carracing", *TINY, "--generations", "2"]) == 0
    flags = ["--out", str(out), "--task", "carracing", "--episodes", "3", "--max-steps", "15"]
    assert evaluate.main([*flags, "--workers", "1", "--gif", "true"]) == 0
    serial = json.loads((out / "eval" / "zh.json").read_text())
    assert evaluate.main([*flags, "--workers", "2", "--force", "true"]) == 0
    parallel = json.loads((out / "eval" / "zh.json").read_text())
    mpi = run_module("controller.evaluate", *flags, "--force", "true", np_=3)
    assert mpi.returncode == 0, mpi.stderr
    assert "± " in mpi.stdout and "(n=3)" in mpi.stdout
    under_mpi = json.loads((out / "eval" / "zh.json").read_text())

    returns = [e["return"] for e in serial["episodes"]]
    assert serial["n"] == 3 and serial["mean"] == pytest.approx(np.mean(returns))
    assert serial["std"] == pytest.approx(np.std(returns))
    assert parallel["episodes"] == serial["episodes"] == under_mpi["episodes"]
    assert all(e["seed"] >= TEST_BASE and e["length"] == 15 for e in serial["episodes"])
    assert serial["params_file"].endswith("controller/zh/best.json") and serial["generation"] == 2
    assert serial["settings"]["episodes"] == 3 and serial["commit"]
    assert serial["gif"]["return"] == returns[0] and (out / "eval" / "zh.gif").stat().st_size > 1000

    assert evaluate.main([*flags, "--random", "true", "--workers", "1"]) == 0
    random = json.loads((out / "eval" / "random.json").read_text())
    assert random["policy"].startswith("random") and random["n"] == 3


def test_evaluate_skips_a_result_it_already_holds_and_replays_on_any_change(car_run, tmp_path, capsys):
    out = copy_models(car_run, tmp_path / "skip")
    assert train.main(["--out", str(out), "--task", "carracing", *TINY, "--generations", "1"]) == 0
    flags = ["--out", str(out), "--task", "carracing", "--episodes", "2", "--max-steps", "10", "--workers", "1"]
    path = out / "eval" / "zh.json"
    assert evaluate.main(flags) == 0
    first = path.stat().st_mtime_ns
    capsys.readouterr()
    assert evaluate.main([*flags[:-1], "2"]) == 0  # another worker count: same episodes
    assert "nothing to do" in capsys.readouterr().out and path.stat().st_mtime_ns == first
    assert evaluate.main([*flags, "--max-steps", "11"]) == 0
    assert (
        "nothing to do" not in capsys.readouterr().out and json.loads(path.read_text())["episodes"][0]["length"] == 11
    )
    # A new search (other seed) writes a new best.json: its evaluation is played again.
    assert (
        train.main(
            [
                "--out",
                str(out),
                "--task",
                "carracing",
                *TINY,
                "--generations",
                "1",
                "--seed",
                "5",
                "--restart-on-change",
                "true",
            ]
        )
        == 0
    )
    assert (out / "controller" / "zh.previous" / "checkpoint.pkl").exists()
    capsys.readouterr()
    assert evaluate.main([*flags, "--max-steps", "11"]) == 0
    assert "nothing to do" not in capsys.readouterr().out


class CrashingEnv:
    """Wraps a real env; raises inside `step` on chosen seeds (on every attempt, or on the first only)."""

    def __init__(self, env, crash_seeds, attempts):
        self.env, self.crash_seeds, self.attempts = env, crash_seeds, attempts
        self.seed = None

    def reset(self, seed=None, options=None):
        self.seed = seed
        if seed in self.crash_seeds:
            self.attempts[seed] = self.attempts.get(seed, 0) + 1
        return self.env.reset(seed=seed)

    def step(self, action):
        if self.seed in self.crash_seeds and (self.crash_seeds[self.seed] == "always" or self.attempts[self.seed] == 1):
            raise RuntimeError("simulated env crash")
        return self.env.step(action)

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()


def test_a_crashing_episode_is_retried_once_then_scored_failed(car_run, monkeypatch, capsys):
    spec = rollouts.RolloutSpec(str(car_run), "carracing", "zh", 15)
    params = np.zeros((1, 867))
    clean = rollouts.Rollouts(spec).run(rollouts.Job(params, np.array([[11, 12, 13]])))
    attempts = {}
    real_make_env = rollouts.make_env
    monkeypatch.setattr(
        rollouts,
        "make_env",
        lambda task, max_steps, backend: CrashingEnv(
            real_make_env(task, max_steps=max_steps, backend=backend), {11: "once", 12: "always"}, attempts
        ),
    )
    result = rollouts.Rollouts(spec).run(rollouts.Job(params, np.array([[11, 12, 13]])))
    assert attempts == {11: 2, 12: 2}
    assert result.returns[0, 0] == clean.returns[0, 0] and result.lengths[0, 0] == 15
    assert np.isnan(result.returns[0, 1]) and result.lengths[0, 1] == 0
    assert result.returns[0, 2] == clean.returns[0, 2]
    assert len(result.failures) == 1 and "seed 12" in result.failures[0]
    err = capsys.readouterr().err
    assert "retrying once" in err and "scored as failed" in err

    returns, failed = train.fill_failed(np.array([[1.0, np.nan], [3.0, -2.0]]))
    assert failed == 1 and returns[0, 1] == -2.0


def test_training_continues_past_a_failed_episode(car_run, tmp_path, monkeypatch, capsys):
    out = copy_models(car_run, tmp_path / "crash")
    seeds = train.training_seeds(0, 1, 4, 2, True)
    real_make_env = rollouts.make_env
    monkeypatch.setattr(
        rollouts,
        "make_env",
        lambda task, max_steps, backend: CrashingEnv(
            real_make_env(task, max_steps=max_steps, backend=backend), {int(seeds[0, 0]): "always"}, {}
        ),
    )
    args = ["--out", str(out), "--task", "carracing", *TINY, "--generations", "2", "--backend", "gymnasium"]
    assert train.main(args) == 0
    rows = history(out)
    assert [r["failed_episodes"] for r in rows] == [2, 0]  # the seed is shared by candidates 0 and 2
    assert "2 FAILED episodes" in capsys.readouterr().out
    assert seeds.max() < TRAIN_RANGE


def test_doom_trains_in_the_dream_by_default_the_same_under_mpi_and_plays_the_real_game(tmp_path):
    out = make_run(tmp_path / "serial", DOOM)
    args = [
        "--task",
        "doom",
        "--popsize",
        "6",
        "--num-episode",
        "3",
        "--generations",
        "2",
        "--eval-every",
        "1",
        "--eval-episodes",
        "4",
        "--max-steps",
        "60",
    ]
    assert train.main(["--out", str(out), *args]) == 0
    config = json.loads((out / "controller" / "zch" / "config.json").read_text())
    assert config["settings"]["env"] == "dream" and config["settings"]["tau"] == 1.15
    rows = history(out, "zch")
    assert all(1 <= r["length_mean"] <= 60 for r in rows)
    mpi = copy_models(out, tmp_path / "mpi")
    result = run_module("controller.train", "--out", str(mpi), *args, np_=3)
    assert result.returncode == 0, result.stderr
    assert history(mpi, "zch") == rows  # two workers, each a vectorised batch of half the population

    real_eval = run_module("controller.train", "--out", str(out), *args, "--eval-env", "real", "--name", "r")
    assert real_eval.returncode == 0, real_eval.stderr
    evaluations = json.loads((out / "controller" / "r" / "evaluations.json").read_text())
    assert len(evaluations) == 2 and all(e["episodes"] == 4 for e in evaluations)

    assert (
        evaluate.main(["--out", str(out), "--task", "doom", "--max-steps", "30", "--episodes", "2", "--workers", "1"])
        == 0
    )
    result = json.loads((out / "eval" / "zch.json").read_text())
    assert result["n"] == 2 and all(1 <= e["length"] <= 30 for e in result["episodes"])
    assert all(e["return"] == e["length"] for e in result["episodes"])  # +1 per tic alive


def test_a_controller_trained_under_the_sample_done_rule_is_scored_under_it_in_the_dream(tmp_path):
    out = make_run(tmp_path / "run", DOOM)
    flags = ["--task", "doom", "--popsize", "4", "--num-episode", "2", "--generations", "1", "--max-steps", "200"]
    assert train.main(["--out", str(out), *flags, "--eval-episodes", "2", "--dream-done", "sample"]) == 0
    settings = json.loads((out / "controller" / "zch" / "config.json").read_text())["settings"]
    assert settings["dream_done"] == "sample"
    common = ["--out", str(out), "--task", "doom", "--max-steps", "200", "--episodes", "6", "--workers", "1"]
    assert evaluate.main([*common, "--env", "dream"]) == 0
    assert evaluate.main([*common, "--env", "dream", "--dream-done", "threshold", "--result", "zch_threshold"]) == 0
    params = np.array(json.loads((out / "controller" / "zch" / "best.json").read_text())["params"])[None]
    seeds = heldout_seeds(0, 6)[None]
    for result, rule in (("zch_dream", "sample"), ("zch_threshold", "threshold")):
        found = json.loads((out / "eval" / f"{result}.json").read_text())
        assert found["settings"]["dream_done"] == rule
        spec = rollouts.RolloutSpec(str(out), "doom", "zch", 200, env="dream", dream_done=rule)
        want = rollouts.DreamRollouts(spec).run(rollouts.Job(params, seeds)).lengths[0]
        assert [e["length"] for e in found["episodes"]] == want.tolist()


def test_a_search_over_two_dreams_scores_half_of_each_candidates_episodes_in_each(tmp_path):
    out, other = make_run(tmp_path / "run", DOOM), make_run(tmp_path / "other", DOOM, seed=3)
    (other / "vae" / "weights.npz").write_bytes((out / "vae" / "weights.npz").read_bytes())  # one V, two Ms
    # Untrained Ms both end a step with p ≈ 1/11: give the other M a done bias that never ends an episode.
    with np.load(other / "rnn" / "weights.npz") as saved:
        weights = dict(saved)
    weights["mdn.bias"][0] = -50.0  # the done logit
    np.savez(other / "rnn" / "weights.npz", **weights)
    flags = ["--task", "doom", "--popsize", "4", "--num-episode", "4", "--generations", "1", "--max-steps", "200"]
    flags += ["--eval-episodes", "4", "--dream-done", "sample", "--worlds", str(other)]
    assert train.main(["--out", str(out), *flags]) == 0
    record = json.loads((out / "controller" / "zch" / "config.json").read_text())
    assert record["inputs"]["world1"] == rnn_fingerprint(other / "rnn")
    best = json.loads((out / "controller" / "zch" / "best.json").read_text())
    spec = rollouts.RolloutSpec(str(out), "doom", "zch", 200, env="dream", dream_done="sample")
    seeds = selection_seeds(4)
    # Evaluation jobs: one worker, one row of the 4 selection seeds; columns 0, 2 in OUT's dream, 1, 3 in the other's.
    want = rollouts.DreamRollouts(dataclasses.replace(spec, worlds=(str(other),)))
    lengths = want.run(rollouts.Job(np.array(best["params"])[None], seeds[None])).lengths[0]
    assert best["evaluation"]["mean"] == pytest.approx(lengths.mean())
    own = rollouts.DreamRollouts(spec).run(rollouts.Job(np.array(best["params"])[None], seeds[None])).lengths[0]
    assert lengths[0::2].tolist() == own[0::2].tolist() and lengths[1::2].tolist() == [200, 200]
    assert max(own) < 200

    elsewhere = make_run(tmp_path / "elsewhere", DOOM, seed=5)
    for extra, message in (
        (["--worlds", str(elsewhere)], "trained on another V"),
        (["--worlds", str(other), "--env", "real"], "--worlds needs --env dream"),
        (["--worlds", str(tmp_path / "none")], "weights.npz: missing"),
    ):
        result = run_module("controller.train", "--out", str(out), "--task", "doom", "--name", "x", *extra)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_user_errors_are_one_line_with_exit_2(car_run, tmp_path):
    trained = copy_models(car_run, tmp_path / "trained")
    assert train.main(["--out", str(trained), "--task", "carracing", *TINY, "--generations", "1"]) == 0
    doom_run = tmp_path / "doom"
    (doom_run / "vae").mkdir(parents=True)
    (doom_run / "vae" / "weights.npz").write_bytes((car_run / "vae" / "weights.npz").read_bytes())
    cases = [
        ("controller.evaluate", ["--out", str(tmp_path / "none")], "best.json: missing (run stage 5"),
        ("controller.train", ["--out", str(tmp_path / "none")], "weights.npz: missing (run stage 2"),
        ("controller.train", ["--out", str(doom_run), "--task", "doom"], "trained for 'carracing', not 'doom'"),
        ("controller.train", ["--out", str(car_run), "--mode", "zzz"], "unknown controller mode"),
        ("controller.train", ["--out", str(car_run), "--popsize", "1"], "--popsize must be at least 2"),
        ("controller.train", ["--out", str(trained), *TINY, "--generations", "9", "--seed", "5"], "--seed=0 (now 5)"),
    ]
    for module, args, message in cases:
        result = run_module(module, *args)
        assert result.returncode == 2, (module, args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    under_mpi = run_module("controller.train", "--out", str(tmp_path / "none"), np_=2, timeout=60)
    assert under_mpi.returncode != 0 and "weights.npz: missing" in under_mpi.stderr

    other = copy_models(car_run, tmp_path / "other")
    (other / "vae" / "vae.keras").unlink()
    save_vae(build_vae(CAR, seed=9), other / "vae", CAR)
    (other / "controller" / "zh").mkdir(parents=True)
    (other / "controller" / "zh" / "best.json").write_text((trained / "controller" / "zh" / "best.json").read_text())
    result = run_module("controller.evaluate", "--out", str(other))
    assert result.returncode == 2 and "trained with another V or M" in result.stderr


def test_tau_table_trains_scores_and_reuses_one_controller_per_temperature(tmp_path, capsys):
    from controller.results import tau_table

    out = make_run(tmp_path, DOOM)
    args = [
        "--out",
        str(out),
        "--taus",
        "0.5,1.15",
        "--episodes",
        "2",
        "--workers",
        "1",
        "--train-flags",
        "--popsize 2 --num-episode 1 --generations 1 --eval-episodes 1 --max-steps 40",
    ]
    assert tau_table.main(args) == 0
    table = (out / "tau_table.md").read_text()
    assert "| 0.50 |" in table and "| 1.15 |" in table and "1092 ± 556" in table and "210 ± 108" in table
    for name in ("zch_tau0.50", "zch_tau1.15"):
        assert json.loads((out / "eval" / f"{name}_dream.json").read_text())["tau"] in (0.5, 1.15)
        assert json.loads((out / "eval" / f"{name}.json").read_text())["n"] == 2
    rows = json.loads((out / "tau_table.json").read_text())["rows"]
    assert [r["tau"] for r in rows] == [0.5, 1.15] and all(r["generations"] == 1 for r in rows)
    capsys.readouterr()
    assert tau_table.main(args) == 0
    again = capsys.readouterr().out
    assert "already trained" in again and again.count("already holds this evaluation") == 5  # scored once


def test_the_car_trains_in_the_dream_of_an_m_with_dream_heads(car_run, tmp_path):
    from rnn import train as rnn_train
    from tests.test_rnn_stages import write_fake_series

    out = tmp_path / "car"
    (out / "vae").mkdir(parents=True)
    for f in (car_run / "vae").iterdir():
        (out / "vae" / f.name).write_bytes(f.read_bytes())
    write_fake_series(out, CAR, [12] * 4)
    plain = run_module("controller.train", "--out", str(car_run), "--env", "dream", *TINY)
    assert plain.returncode == 2 and "--dream-heads true" in plain.stderr
    assert (
        rnn_train.main(
            [
                "--task",
                "carracing",
                "--out",
                str(out),
                "--batch-size",
                "2",
                "--seq-len",
                "12",
                "--steps",
                "2",
                "--dream-heads",
                "true",
            ]
        )
        == 0
    )
    with np.load(out / "rnn" / "weights.npz") as weights:
        assert bool(weights["predicts_done"]) and bool(weights["predicts_reward"])
    assert train.main(["--out", str(out), "--task", "carracing", "--env", "dream", *TINY, "--generations", "1"]) == 0
    config = json.loads((out / "controller" / "zh" / "config.json").read_text())
    assert config["settings"]["env"] == "dream"
    assert (
        evaluate.main(
            ["--out", str(out), "--task", "carracing", "--episodes", "1", "--max-steps", "15", "--workers", "1"]
        )
        == 0
    )
    assert json.loads((out / "eval" / "zh.json").read_text())["episodes"][0]["length"] == 15
