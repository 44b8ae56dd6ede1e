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


TIE = 1e-4
"""Logits this close to a dimension's largest are a tie at τ = 1e-6: float round-off between the twin and Keras
(≈ 1e-6, machine-dependent) decides which of them the dream draws. An untrained M's logits differ by ≈ 1e-3."""


def assert_most_likely_steps(z, out, steps):
    """At τ → 0 each dreamed z_{t+1} is the mean of every dimension's most likely component of the head's
    output `out` [T, NOUT] at t (of one of them, where several tie)."""
    from rnn.model import split_params

    for t in steps:
        mix_logits, means, _ = (np.asarray(a)[0] for a in split_params(out[None, t], DOOM.z_size, True)[:3])
        best = np.take_along_axis(means, mix_logits.argmax(-1)[:, None], -1)[:, 0]
        tied = mix_logits >= mix_logits.max(-1, keepdims=True) - TIE
        assert tied.sum() < 1.5 * DOOM.z_size  # ties are rare: the check below stays the argmax's almost everywhere
        error = np.where(tied, np.abs(z[t + 1][:, None] - means), np.inf).min(-1)
        np.testing.assert_array_less(error, 1e-2, err_msg=f"step {t}: z {z[t + 1]}, most likely means {best}")


def test_ms_own_dream_of_a_recorded_episode_follows_its_most_likely_latents_at_a_tiny_temperature(doom_run):
    from rnn.model import load_rnn
    from vae.twin import EncoderTwin

    rng = np.random.default_rng(3)
    steps = 10
    episode = {
        "obs": rng.integers(0, 256, (steps, 64, 64, 3), dtype=np.uint8),
        "action": rng.uniform(-1, 1, (steps, 1)).astype(np.float32),
        "seed": 7,
    }
    encoder = EncoderTwin.load(doom_run / "vae", DOOM)
    z, logits = calibration.dreamed_episode(encoder, RNNTwin.load(doom_run / "rnn", DOOM), episode, tau=1e-6)
    mu, logvar = encoder(episode["obs"][:1])
    assert np.all(np.abs(z[0] - mu[0]) < 6 * np.exp(0.5 * logvar[0]))  # the first frame's encoding
    model = load_rnn(doom_run / "rnn", DOOM)
    restart = np.zeros((steps, 1), np.float32)
    restart[0] = 1.0
    x = np.concatenate([z, episode["action"], restart], axis=1)[None]
    out = np.asarray(model(x)[0])[0]  # Keras on the whole dreamed sequence
    np.testing.assert_allclose(logits, out[:, 0], atol=1e-4)  # the done logit leads the head's output
    assert_most_likely_steps(z, out, range(steps - 1))


def test_the_dreamed_ending_keeps_the_games_latents_before_it_and_dreams_the_rest(doom_run):
    from rnn.model import load_rnn
    from vae.twin import EncoderTwin

    rng = np.random.default_rng(4)
    steps, last = 12, 4
    episode = {
        "obs": rng.integers(0, 256, (steps, 64, 64, 3), dtype=np.uint8),
        "action": rng.uniform(-1, 1, (steps, 1)).astype(np.float32),
        "seed": 9,
    }
    encoder = EncoderTwin.load(doom_run / "vae", DOOM)
    rnn = RNNTwin.load(doom_run / "rnn", DOOM)
    model = load_rnn(doom_run / "rnn", DOOM)
    mu, logvar = encoder(episode["obs"])
    draws = np.random.default_rng([9, 5]).standard_normal(mu.shape).astype(np.float32)  # one per frame, in order
    game_z = mu + np.exp(0.5 * logvar) * draws
    z, _ = calibration.dreamed_episode(encoder, rnn, episode, tau=1e-6, context=steps - last)
    np.testing.assert_allclose(z[: steps - last], game_z[: steps - last], atol=1e-5)

    def keras_ending(latents):  # Keras on the whole sequence → the death probabilities of the last steps
        restart = np.zeros((steps, 1), np.float32)
        restart[0] = 1.0
        out = np.asarray(model(np.concatenate([latents, episode["action"], restart], axis=1)[None])[0])[0]
        return out, 1 / (1 + np.exp(np.log(10.0) - out[:, 0]))

    out, _ = keras_ending(z)
    assert_most_likely_steps(z, out, range(steps - last - 1, steps - 1))  # the dreamed steps
    game, dreamed = calibration.dreamed_ending(encoder, rnn, episode, 1e-6, last)
    assert game == pytest.approx(keras_ending(game_z)[1][-last:].sum(), rel=1e-3)
    assert dreamed == pytest.approx(keras_ending(z)[1][-last:].sum(), rel=1e-3)


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
    assert death["dream_tau"] == 1.15 and (death["dreamed_deaths"] is None) == (death["deaths"] == 0)
    assert (death["ending_game"] is None) == (death["ending_dreamed"] is None) == (death["deaths"] == 0)
    assert found["dream_done"] == "threshold"
    assert (out / "calibration" / "record" / "config.json").exists()

    capsys.readouterr()
    assert calibration.main(args) == 0  # a rerun reuses every evaluation
    assert capsys.readouterr().out.count("nothing to do") == 6 * 3 + 1
