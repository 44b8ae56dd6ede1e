"""envpool's CarRacing as a second backend: its batch plays each episode as that episode alone, and stage 5's
lockstep workers score every episode as one-at-a-time play does, whatever the batch and the number of workers."""

import numpy as np
import pytest
from test_controller_stages import CAR, DOOM, make_run

import controller.rollouts as rollouts
from controller import train
from controller.rollouts import LOCKSTEP_EPISODES, Job, LockstepRollouts, Rollouts, RolloutSpec
from env.common.cli import UserError
from env.extract import main as extract_main
from env.tasks import check_backend
from env.wrappers import CarRacingBatch, EnvpoolCarRacingEnv, make_env

SLOW, FAST = np.array([0.0, 0.1, 0.0], np.float32), np.array([0.0, 0.5, 0.0], np.float32)
"""Constant actions: crawling stays on the playfield for 300 steps; half throttle straight ahead leaves it
(seed 3: at step 271, reward -100)."""


@pytest.fixture(scope="module")
def car_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("car"), CAR)


def play_alone(seed, action, max_steps):
    env = EnvpoolCarRacingEnv(CAR, max_steps=max_steps)
    obs, _ = env.reset(seed=seed)
    frames, rewards = [obs], []
    while True:
        obs, reward, terminated, truncated, _ = env.step(action)
        frames.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            env.close()
            return np.stack(frames), np.array(rewards), terminated


def test_a_batch_plays_each_episode_as_it_plays_alone_and_finished_ones_leave():
    seeds, actions = [3, 8, 3], [FAST, SLOW, SLOW]
    batch = CarRacingBatch(CAR, seeds, max_steps=300)
    frames = [[f] for f in batch.reset()]
    rewards = [[] for _ in seeds]
    ended = {}
    while len(batch.active):
        active = batch.active
        obs, reward, terminated, truncated = batch.step(np.stack([actions[b] for b in active]))
        for row, b in enumerate(active):
            frames[b].append(obs[row])
            rewards[b].append(reward[row])
            if terminated[row] or truncated[row]:
                ended[b] = bool(terminated[row])
    batch.close()
    assert ended == {0: True, 1: False, 2: False}  # off the playfield; the cap; the cap
    assert len(rewards[0]) == 271 and rewards[0][-1] == -100.0 and len(rewards[1]) == 300
    for b, seed in enumerate(seeds):
        want_frames, want_rewards, terminated = play_alone(seed, actions[b], 300)
        np.testing.assert_array_equal(np.stack(frames[b]), want_frames)
        np.testing.assert_array_equal(np.array(rewards[b]), want_rewards)
        assert terminated == ended[b]
    assert not np.array_equal(frames[0][0], frames[1][0])  # each seed its own track


def test_envpool_and_gymnasium_derive_a_track_from_the_seed_alike_but_draw_other_tracks():
    gym_env, pool_env = make_env(CAR, backend="gymnasium"), make_env(CAR, backend="envpool")
    for env in (gym_env, pool_env):
        env.reset(seed=11)
        first = env.render().copy()
        env.reset(seed=12)
        env.reset(seed=11)
        np.testing.assert_array_equal(env.render(), first)
    gym_obs, _ = gym_env.reset(seed=11)
    pool_obs, _ = pool_env.reset(seed=11)
    assert gym_obs.shape == pool_obs.shape == (64, 64, 3) and pool_obs.dtype == np.uint8
    assert not np.array_equal(gym_obs, pool_obs)  # other generators: other tracks
    for env in (gym_env, pool_env):
        env.close()


def test_backends_are_chosen_from_the_task_table():
    assert check_backend(CAR, "") == "gymnasium" and check_backend(CAR, "", CAR.training_backend) == "envpool"
    assert check_backend(DOOM, "", DOOM.training_backend) == "vizdoom"
    with pytest.raises(UserError, match="doom is played by vizdoom, not 'envpool'"):
        check_backend(DOOM, "envpool")
    with pytest.raises(ValueError, match="full_episode"):
        EnvpoolCarRacingEnv(CAR, full_episode=True)


def test_stage_1_refuses_envpool_for_the_cars_full_episodes(tmp_path):
    with pytest.raises(UserError, match="plays carracing episodes on past the env's termination"):
        extract_main(["--out", str(tmp_path), "--task", "carracing", "--backend", "envpool", "--episodes", "1"])


def test_lockstep_scores_each_episode_as_one_at_a_time_play(car_run):
    spec = RolloutSpec(str(car_run), "carracing", "zh", 250, backend="envpool")
    params = np.random.default_rng(0).normal(0, 0.3, (3, 867))
    seeds = np.arange(100, 106).reshape(3, 2)
    lockstep = LockstepRollouts(spec)
    together = lockstep.run(Job(params, seeds))
    assert len(set(together.returns.ravel().round(6))) == 6
    one_by_one = Rollouts(spec)  # the Agent, one episode after another on EnvpoolCarRacingEnv
    for i in range(3):
        alone = one_by_one.run(Job(params[i : i + 1], seeds[i : i + 1]))
        np.testing.assert_array_equal(alone.lengths[0], together.lengths[i])
        np.testing.assert_allclose(alone.returns[0], together.returns[i], atol=1e-6)
        for e in range(2):
            single = lockstep.run(Job(params[i : i + 1], seeds[i : i + 1, e : e + 1]))
            assert single.returns[0, 0] == together.returns[i, e] and single.lengths[0, 0] == together.lengths[i, e]
    one_by_one.close()


def test_lockstep_plays_the_random_baseline_as_one_at_a_time_play(car_run):
    spec = RolloutSpec(str(car_run), "carracing", "", 300, backend="envpool", policy="cauchy_controller")
    seeds = np.array([[21, 22, 23, 24]])
    together = LockstepRollouts(spec).run(Job(None, seeds))
    alone = Rollouts(spec).run(Job(None, seeds))
    np.testing.assert_array_equal(together.returns, alone.returns)
    np.testing.assert_array_equal(together.lengths, alone.lengths)


def test_lockstep_jobs_are_the_same_for_any_number_of_workers():
    params = np.zeros((16, 5))
    seeds = np.arange(64).reshape(16, 4)
    shapes = {
        workers: [
            (job.params.shape[0], tuple(job.seeds.ravel()))
            for job in train.split_jobs(params, seeds, "real", workers, True)
        ]
        for workers in (1, 2, 7, 64)
    }
    assert shapes[1] == shapes[2] == shapes[7] == shapes[64]
    assert [k for k, _ in shapes[1]] == [LOCKSTEP_EPISODES // 4] * 4


def test_a_lockstep_job_that_raises_is_played_again_once_then_scored_failed(car_run, monkeypatch, capsys):
    spec = RolloutSpec(str(car_run), "carracing", "zh", 20, backend="envpool")
    params = np.zeros((1, 867))
    clean = LockstepRollouts(spec).run(Job(params, np.array([[5, 6]])))
    calls = {"n": 0}
    real_step = CarRacingBatch.step

    def flaky(self, actions):
        calls["n"] += 1
        if calls["n"] in fail_on:
            raise RuntimeError("simulated env crash")
        return real_step(self, actions)

    monkeypatch.setattr(rollouts.CarRacingBatch, "step", flaky)
    fail_on = {3}
    again = LockstepRollouts(spec).run(Job(params, np.array([[5, 6]])))
    np.testing.assert_array_equal(again.returns, clean.returns)
    assert "playing it again" in capsys.readouterr().err
    calls["n"], fail_on = 0, {3, 10}
    failed = LockstepRollouts(spec).run(Job(params, np.array([[5, 6]])))
    assert np.isnan(failed.returns).all() and (failed.lengths == 0).all() and len(failed.failures) == 1
    assert "scored as failed" in capsys.readouterr().err


def test_stage_5_trains_the_car_on_envpool_and_records_it(car_run, tmp_path):
    import json
    import shutil

    out = tmp_path / "run"
    shutil.copytree(car_run, out)
    args = ["--out", str(out), "--task", "carracing", "--popsize", "4", "--num-episode", "2", "--max-steps", "15"]
    args += ["--generations", "1", "--eval-every", "1", "--eval-episodes", "3"]
    assert train.main(args) == 0
    record = json.loads((out / "controller" / "zh" / "config.json").read_text())
    assert record["settings"]["backend"] == "envpool" and record["implied"] == {"backend": "gymnasium"}
    # a run recorded before --backend existed trained on gymnasium: continuing it on envpool is a change
    del record["settings"]["backend"]
    (out / "controller" / "zh" / "config.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="--backend='gymnasium' \\(now 'envpool'\\)"):
        train.main([*args[:-6], "--generations", "2", "--eval-every", "1", "--eval-episodes", "3"])
