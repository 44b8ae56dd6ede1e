"""The dream's calibration: fixed policies played in M's dream as given, M's deaths classified against the real
ones, and the command's table against the evaluation files it reads."""

import json

import numpy as np
import pytest

from controller import train
from controller.agent import AGENT_STREAM
from controller.results import calibration
from controller.rollouts import DreamRollouts, Job, RolloutSpec
from env.policies import make_policy
from rnn.dream import DreamBatch
from rnn.twin import RNNTwin
from tests.test_controller_stages import DOOM, make_run


@pytest.fixture(scope="module")
def doom_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("doom"), DOOM)


@pytest.mark.parametrize("policy", ["left", "uniform", "repeat_uniform"])
def test_a_fixed_policy_plays_the_dream_as_the_same_policy_stepped_by_hand(doom_run, policy):
    seeds = np.arange(6, dtype=np.int64) + 1000
    spec = RolloutSpec(str(doom_run), "doom", "", 300, policy=policy, env="dream", tau=1.15)
    result = DreamRollouts(spec).run(Job(None, seeds[None]))

    rnn = RNNTwin.load(doom_run / "rnn", DOOM)
    dream = DreamBatch(rnn, seeds, 1.15, 300)
    policies = [make_policy(policy, DOOM, np.random.default_rng([int(s), AGENT_STREAM])) for s in seeds]
    while not dream.done:
        dream.step(np.stack([policies[b](dream.t) for b in dream.active]))
    np.testing.assert_array_equal(result.lengths[0], dream.lengths)
    np.testing.assert_array_equal(result.returns[0], dream.lengths)  # 1 per step survived
    if policy == "left":
        assert make_policy("left", DOOM, np.random.default_rng(0))(0).tolist() == [-1.0]


@pytest.mark.parametrize(
    "logits, died, outcome, alarms, steps",
    [
        ([-1, -1, -1, -1, 2, -1], True, "caught", 0, 3),  # fires 2 steps before the death, window 3
        ([-1, 3, -1, -1, -1, -1], True, "premature", 1, 3),  # the dream would have ended at step 1
        ([-1, -1, -1, -1, -1, -1], True, "missed", 0, 3),
        ([-1, 5, -1, -1, -1, 1], False, "survived", 2, 6),  # no real death: every firing is a false alarm
        ([2, 2], True, "caught", 0, 0),  # shorter than the window
    ],
)
def test_deaths_are_classified_by_ms_first_firing(logits, died, outcome, alarms, steps):
    assert calibration.classify(np.array(logits, np.float32), died, 3) == (outcome, alarms, steps)


def test_the_death_summary_counts_outcomes_and_sums_ms_death_probabilities():
    ln10 = float(np.log(10.0))
    episodes = [
        (np.array([-50.0, ln10, ln10], np.float32), True),  # p = 0, 1/2, 1/2: one expected death, caught
        (np.array([1.0, -50.0, -50.0, -50.0], np.float32), True),  # p = σ(1 − ln 10) at the start only: premature
        (np.array([-50.0, 1.0], np.float32), False),  # survived, one false alarm
    ]
    found = calibration.death_summary(episodes, window=2)
    assert (found["caught"], found["premature"], found["missed"], found["deaths"]) == (1, 1, 0, 2)
    assert found["false_alarm_rate"] == pytest.approx(2 / (1 + 2 + 2))  # steps before the windows: 1, 2, and 2
    assert found["expected_deaths"] == pytest.approx((1.0 + 1.0 / (1.0 + 10.0 / np.e)) / 2, rel=1e-6)


def test_the_table_holds_every_policy_real_and_dreamed_with_the_ratio(doom_run, tmp_path, capsys):
    out = tmp_path / "run"
    for stage in ("vae", "rnn"):
        (out / stage).mkdir(parents=True)
        for f in (doom_run / stage).iterdir():
            (out / stage / f.name).write_bytes(f.read_bytes())
    flags = ["--popsize", "4", "--num-episode", "2", "--max-steps", "40", "--eval-episodes", "2", "--generations", "1"]
    assert train.main(["--out", str(out), "--task", "doom", *flags]) == 0
    args = ["--out", str(out), "--episodes", "3", "--death-episodes", "2", "--workers", "1", "--taus", "0.5,1.15"]
    assert calibration.main(args) == 0
    found = json.loads((out / "calibration.json").read_text())
    assert [r["policy"] for r in found["rows"]] == ["uniform", "noop", "repeat_uniform", "left", "right", "zch"]
    text = (out / "calibration.md").read_text()
    for row in found["rows"]:
        stem = "zch" if row["policy"] == "zch" else f"calib_{row['policy']}"
        real = json.loads((out / "eval" / f"{stem}.json").read_text())
        lengths = [e["length"] for e in real["episodes"]]
        assert row["real"] == {"mean": pytest.approx(np.mean(lengths)), "std": pytest.approx(np.std(lengths)), "n": 3}
        for tau in ("0.50", "1.15"):
            dream = json.loads((out / "eval" / f"{stem}_dream_tau{tau}.json").read_text())
            assert dream["tau"] == float(tau) and row["dream"][tau]["mean"] == dream["mean"]
        ratio = row["dream"]["1.15"]["mean"] / row["real"]["mean"]
        line = next(
            line
            for line in text.splitlines()
            if line.startswith(f"| {calibration.POLICIES.get(row['policy'], 'trained C')}")
        )
        assert line.rstrip(" |").endswith(f"{ratio:.2f}")
    death = found["death"]
    assert death["episodes"] == 2 and death["caught"] + death["premature"] + death["missed"] == death["deaths"]
    assert death["expected_deaths"] is None or death["expected_deaths"] >= 0.0
    assert found["dream_done"] == "threshold"
    assert (out / "calibration" / "record" / "config.json").exists()

    capsys.readouterr()
    assert calibration.main(args) == 0  # a rerun reuses every evaluation
    assert capsys.readouterr().out.count("nothing to do") == 6 * 3 + 1
