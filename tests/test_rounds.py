"""Iterative training (run.sh --rounds): C played with exploration, M and C continued, the rounds table."""

import json
import subprocess

import numpy as np
import pytest

from controller import train
from controller.agent import Agent, ExploringAgent
from controller.artifacts import params_path, params_sha256, write_params
from controller.es import CMAES
from controller.model import controller_shape
from controller.results import rounds
from env import extract
from env.common.cli import UserError
from env.common.presets import stage_flags
from env.episodes import episode_path, list_episodes, read_episode, write_episode
from env.tasks import get_task
from rnn import train as rnn_train
from rnn.model import load_rnn
from tests.conftest import ROOT
from tests.test_controller_stages import make_run
from tests.test_rnn_stages import write_fake_series

DOOM = get_task("doom")
SHAPE = controller_shape(DOOM)


@pytest.fixture(scope="module")
def doom_run(tmp_path_factory):
    """An untrained Doom V and M with a controller that leans left: stage 5's best.json of that run."""
    out = make_run(tmp_path_factory.mktemp("doom"), DOOM)
    params = np.random.default_rng(3).normal(0.0, 0.05, SHAPE.n_params)
    models = train.model_fingerprints(out, DOOM, needs_m=True)
    params_path(out, DOOM).parent.mkdir(parents=True)
    write_params(params_path(out, DOOM), SHAPE, params, models=models)
    return out, params


def agent_of(run_dir, params):
    agent = Agent.load(run_dir, DOOM, SHAPE)
    agent.set_params(params)
    return agent


def test_exploring_without_exploration_is_c_and_with_it_holds_random_segments_that_m_consumes(doom_run):
    out, params = doom_run
    frames = np.random.default_rng(0).integers(0, 256, (60, 64, 64, 3), dtype=np.uint8)

    def play(policy, seed):
        policy.reset(np.random.default_rng([seed, 1]))
        return np.array([policy.act(f) for f in frames])

    plain = agent_of(out, params)
    c_actions = play(plain, 7)
    calm = ExploringAgent(agent_of(out, params), 0.0)
    np.testing.assert_array_equal(play(calm, 7), c_actions)
    np.testing.assert_array_equal(calm.agent.h, plain.h)

    wild = ExploringAgent(agent_of(out, params), 1.0)
    actions = play(wild, 7)[:, 0]
    assert not np.allclose(actions, c_actions[:, 0])
    changes = np.flatnonzero(np.diff(actions)) + 1
    segments = np.diff(np.concatenate([[0], changes, [len(actions)]]))
    assert segments.min() >= 1 and segments[:-1].max() <= 10 and np.abs(actions).max() <= 1.0
    # M consumed the actions taken: V's samples and those actions fed through M's LSTM by hand.
    agent, rng = wild.agent, np.random.default_rng([7, 1])
    h, c = agent.rnn.initial_state(1)
    for t, (frame, a) in enumerate(zip(frames, actions)):
        z = agent.encoder.sample(frame[None], rng)
        x = np.concatenate([z, [[a]], [[1.0 if t == 0 else 0.0]]], axis=1).astype(np.float32)
        h, c = agent.rnn.lstm(x, h, c)
    np.testing.assert_array_equal(agent.h, h)
    np.testing.assert_array_equal(agent.c, c)


def test_a_mirrored_episode_is_c_on_flipped_frames_with_its_action_reflected_and_m_in_the_mirror(doom_run):
    out, params = doom_run
    frames = np.random.default_rng(1).integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    plain = agent_of(out, params)
    plain.reset(np.random.default_rng([5, 1]))
    flipped_actions = np.array([plain.act(f) for f in frames[:, :, ::-1]])
    mirrored = ExploringAgent(agent_of(out, params), 0.0, mirror=1.0)
    mirrored.reset(np.random.default_rng([5, 1]))
    actions = np.array([mirrored.act(f) for f in frames])
    assert np.abs(flipped_actions).min() > 0  # a sign that can be seen to flip
    np.testing.assert_array_equal(actions, -flipped_actions)  # Doom: left is -1, right +1
    np.testing.assert_array_equal(mirrored.agent.h, plain.h)  # M consumed the mirror world's own actions
    np.testing.assert_array_equal(mirrored.agent.c, plain.c)
    assert DOOM.mirror == (-1.0,) and get_task("carracing").mirror == (-1.0, 1.0, 1.0)  # steering only

    half = ExploringAgent(agent_of(out, params), 0.3, mirror=0.5)
    sides = []
    for seed in range(400):
        half.reset(np.random.default_rng([seed, 1]))
        sides.append(half.mirrored)
    assert 0.42 < np.mean(sides) < 0.58  # binomial(400, 0.5): ± 3.2 std
    never = ExploringAgent(agent_of(out, params), 0.3)
    never.reset(np.random.default_rng([5, 1]))
    assert not never.mirrored


@pytest.mark.parametrize("flag", [["--mirror", "1.5"], ["--mirror", "-0.1"], ["--explore", "2"]])
def test_stage_1_refuses_a_chance_outside_0_1(tmp_path, flag):
    with pytest.raises(UserError, match="must lie in \\[0, 1\\]"):
        extract.main(["--task", "doom", "--out", str(tmp_path), "--episodes", "1", "--workers", "1", *flag])


def test_stage_1_plays_a_controller_records_its_episodes_and_refuses_another(doom_run, tmp_path):
    out, params = doom_run
    args = ["--task", "doom", "--episodes", "2", "--max-steps", "150", "--workers", "1", "--explore", "0"]
    round_dir = tmp_path / "round2"
    assert extract.main([*args, "--out", str(round_dir), "--play", str(out), "--round", "2"]) == 0
    record = json.loads((round_dir / "record" / "config.json").read_text())
    assert set(record["inputs"]) == {"controller", "vae", "rnn"}
    paths = list_episodes(round_dir / "record")
    assert len(paths) == 2
    config = extract.ExtractConfig(seed=0, round=2)
    for index, path in enumerate(paths):
        episode = read_episode(path, DOOM)
        attempt = next(
            a
            for a in range(extract.MAX_ATTEMPTS)
            if int(extract.episode_seeds(config, index, a).generate_state(1)[0] & 0x7FFFFFFF) == episode["seed"]
        )
        agent = agent_of(out, params)
        agent.reset(np.random.default_rng(extract.episode_seeds(config, index, attempt)))
        replayed = np.array([agent.act(frame) for frame in episode["obs"]])
        np.testing.assert_allclose(replayed, episode["action"], atol=1e-6)  # explore 0: C's own actions
    first = extract.episode_seeds(extract.ExtractConfig(seed=0), 0, 0).generate_state(1)[0]
    assert first != extract.episode_seeds(config, 0, 0).generate_state(1)[0]  # round 2 plays other seeds

    changed = dict(json.loads(params_path(out, DOOM).read_text()))
    changed["params"] = [v + 0.01 for v in changed["params"]]
    other = tmp_path / "other"
    make_run(other, DOOM, seed=1)
    params_path(other, DOOM).parent.mkdir(parents=True)
    params_path(other, DOOM).write_text(json.dumps(changed))
    with pytest.raises(UserError, match="another V or M"):  # trained with the first run's V and M
        extract.main([*args, "--out", str(tmp_path / "r3"), "--play", str(other)])
    changed["models"] = train.model_fingerprints(other, DOOM, needs_m=True)
    params_path(other, DOOM).write_text(json.dumps(changed))
    with pytest.raises(UserError, match="other settings or inputs"):
        extract.main([*args, "--out", str(round_dir), "--play", str(other), "--round", "2"])


def test_stage_4_continues_from_an_earlier_m_on_every_rounds_series(tmp_path):
    first, second = tmp_path / "r1", tmp_path / "r2"
    write_fake_series(first, DOOM, [9, 12, 8, 11, 10])
    write_fake_series(second, DOOM, [10, 10], seed=1)
    base = ["--task", "doom", "--batch-size", "2", "--seq-len", "5"]
    assert rnn_train.main([*base, "--out", str(first), "--steps", "3"]) == 0
    start = load_rnn(first / "rnn", DOOM).get_weights()
    args = [
        *base,
        "--out",
        str(second),
        "--steps",
        "1",
        "--learning-rate",
        "1e-9",
        "--more-series",
        str(first / "series"),
    ]
    assert rnn_train.main([*args, "--seed", "1", "--init", str(first / "rnn")]) == 0
    record = json.loads((second / "rnn" / "config.json").read_text())
    assert record["inputs"]["episodes"] == 7 and record["inputs"]["frames"] == 70
    assert record["inputs"]["init"]
    after = load_rnn(second / "rnn", DOOM).get_weights()
    assert max(float(np.abs(a - b).max()) for a, b in zip(after, start)) < 1e-6  # one update of 1e-9
    fresh = tmp_path / "fresh"
    write_fake_series(fresh, DOOM, [10, 10], seed=1)
    assert rnn_train.main([*base, "--out", str(fresh), "--steps", "1", "--learning-rate", "1e-9", "--seed", "1"]) == 0
    assert max(float(np.abs(a - b).max()) for a, b in zip(load_rnn(fresh / "rnn", DOOM).get_weights(), start)) > 0.01


def test_cma_es_starts_at_the_initial_controller(doom_run, tmp_path):
    out, params = doom_run
    es = CMAES(5, sigma_init=0.1, popsize=6, weight_decay=0.01, seed=0, x0=np.arange(5.0))
    np.testing.assert_array_equal(es.mean, np.arange(5.0))
    candidates = es.ask()
    assert np.abs(candidates.mean(axis=0) - np.arange(5.0)).max() < 0.5

    config = train.TrainConfig(
        out=str(out), task="doom", name="continued", popsize=4, num_episode=1, generations=1, init=str(out)
    )
    _, _, _, state, _ = train.prepare(config)
    np.testing.assert_array_equal(state.es.mean, params)
    assert train.record_inputs(config, DOOM, state.models)["init"] == params_sha256(params)


def test_presets_give_later_rounds_their_own_counts_on_top_of_the_stage():
    assert stage_flags("doom", "small", "round-rnn", 3) == ["--steps=400", "--batch-size=20", "--death-weight=10"]
    assert stage_flags("doom", "small", "round-extract", 1) == ["--episodes=200", "--mirror=0.5"]
    assert not any(f.startswith("--mirror") for f in stage_flags("doom", "paper", "round-extract", 1))
    fresh = stage_flags("doom", "small", "round-controller", 3)
    assert fresh == [*stage_flags("doom", "small", "controller", 3), "--init="]  # C afresh each round
    assert train.parse_config(train.TrainConfig, ["--init", "RUN", *fresh]).init == ""  # the last flag wins
    flags = stage_flags("doom", "paper", "round-controller", 3)
    assert "--generations=200" in flags and not any(f.startswith("--popsize") for f in flags)


def eval_file(path, returns):
    returns = np.asarray(returns, float)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mean": returns.mean(), "std": returns.std(), "n": len(returns), "tau": 1.15}))


def test_the_rounds_table_reads_each_rounds_data_m_and_scores(tmp_path):
    # Per episode, round 1 moves left on 1 step of 4 (-0.5) and right on 1 (0.9); round 2 left on 1 (-0.34),
    # right on 2 (0.5), and -0.3 is inside the no-op band.
    moves = {1: [-0.5, 0.0, 0.2, 0.9], 2: [0.5, 0.5, -0.3, -0.34]}
    for r, (real, dream) in enumerate((([100, 300], [900, 1100]), ([400, 600], [450, 550])), start=1):
        d = rounds.round_dir(tmp_path, r)
        (d / "record").mkdir(parents=True)
        for i in range(3 * r):
            frames = np.zeros((4, 64, 64, 3), np.uint8)
            action = np.array(moves[r], np.float32)[:, None]
            write_episode(
                episode_path(d / "record", i), DOOM, frames, action, np.ones(4, np.float32), np.eye(4)[3] > 0, i
            )
        if r == 2:
            (d / "record" / "config.json").write_text(json.dumps({"settings": {"explore": 0.3, "mirror": 0.5}}))
        (d / "rnn").mkdir()
        (d / "rnn" / "config.json").write_text(
            json.dumps(
                {
                    "inputs": {"episodes": 3 * r * r, "frames": 1000 * r},
                    "result": {"steps": 50, "nll": 0.9, "metrics": {"done_loss": 0.03}},
                }
            )
        )
        eval_file(d / "eval" / "zch.json", real)
        eval_file(d / "eval" / "zch_dream.json", dream)
    assert rounds.main(["--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "rounds.json").read_text())["rounds"]
    assert [r["new_episodes"] for r in rows] == [3, 6]
    assert [r["real"]["mean"] for r in rows] == [200.0, 500.0]
    assert [round(r["dream_over_real"], 3) for r in rows] == [5.0, 1.0]
    text = (tmp_path / "rounds.md").read_text()
    assert [r["sides"] for r in rows] == [{"left": 0.25, "right": 0.25}, {"left": 0.25, "right": 0.5}]
    assert "| 1 | 3 (random policy) | 25%, 25% | 3 episodes (1,000 frames) |" in text
    assert "| 2 | 6 (round 1's C, exploring, 50% mirrored) | 25%, 50% | 12 episodes (2,000 frames) |" in text
    assert "500 ± 100 (n=2)" in text and "1000 ± 100 (n=2)" in text


@pytest.mark.slow
def test_run_sh_doom_smoke_with_two_rounds(tmp_path):
    out = tmp_path / "doom"
    result = subprocess.run(
        [str(ROOT / "run.sh"), "doom", "--preset", "smoke", "--np", "1", "--rounds", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    second = out / "round2"
    assert (second / "vae").resolve() == (out / "vae").resolve()
    assert len(list_episodes(second / "record")) == 4
    rnn = json.loads((second / "rnn" / "config.json").read_text())
    assert rnn["inputs"]["episodes"] == 8 and rnn["settings"]["init"] == str(out / "rnn")
    controller = json.loads((second / "controller" / "zch" / "config.json").read_text())
    assert controller["inputs"]["init"] and controller["settings"]["generations"] == 1
    rows = json.loads((out / "rounds.json").read_text())["rounds"]
    assert [r["round"] for r in rows] == [1, 2] and all(r["real"]["n"] == 4 and r["dream"]["n"] == 4 for r in rows)
    assert "Iterative training, round by round" in (out / "report.md").read_text()
    again = subprocess.run(
        [str(ROOT / "run.sh"), "doom", "--preset", "smoke", "--np", "1", "--rounds", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0 and "nothing to do" in again.stdout
