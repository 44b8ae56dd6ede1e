"""The dream env: starts, ends, per-episode randomness, and the controller's view, against step-by-step references."""

import dataclasses

import numpy as np
import pytest

from controller.model import BatchController, Controller, controller_shape, features
from controller.rollouts import DreamRollouts, Job, RolloutSpec
from env.tasks import get_task
from rnn.dream import DreamBatch
from rnn.twin import RNNTwin, death_probability, sample_z, sample_z_from

DOOM = get_task("doom")


def doom_m(seed=0, done_bias=-4.0, initial_logvar=-2.0, starts=5):
    """A random Doom M (twin weights of the exported shapes); its done logit swings around done_bias so
    that episodes end after a few to a few hundred steps."""
    rng = np.random.default_rng(seed)
    u, n_in, n_out = DOOM.rnn_units, DOOM.z_size + 2, DOOM.z_size * 15 + 1
    w = {
        "lstm.kernel": rng.normal(0, 0.1, (n_in, 4 * u)),
        "lstm.recurrent_kernel": rng.normal(0, 0.05, (u, 4 * u)),
        "lstm.bias": rng.normal(0, 0.1, 4 * u),
        "mdn.kernel": rng.normal(0, 0.05, (u, n_out)),
        "mdn.bias": rng.normal(0, 0.1, n_out),
    }
    w["mdn.kernel"][:, 0] *= 10.0
    w["mdn.bias"][0] = done_bias
    w = {k: v.astype(np.float32) for k, v in w.items()}
    w["initial_z_mu"] = rng.normal(0, 1, (starts, DOOM.z_size)).astype(np.float32)
    w["initial_z_logvar"] = np.full((starts, DOOM.z_size), initial_logvar, np.float32)
    return RNNTwin(w, DOOM)


def save_m(rnn, run_dir):
    """Write `rnn`'s weights as stage 4 exports them into run_dir/rnn/ → rnn."""
    (run_dir / "rnn").mkdir(parents=True)
    np.savez(
        run_dir / "rnn" / "weights.npz",
        task=np.str_("doom"),
        **{
            "lstm.kernel": rnn.kernel,
            "lstm.recurrent_kernel": rnn.recurrent_kernel,
            "lstm.bias": rnn.bias,
            "mdn.kernel": rnn.head_kernel,
            "mdn.bias": rnn.head_bias,
            "initial_z_mu": rnn.initial_z[0],
            "initial_z_logvar": rnn.initial_z[1],
        },
    )
    return rnn


def play(rnn, seeds, tau=1.15, max_steps=2100, action=0.3, done_rule="threshold", world=None):
    """Step a DreamBatch with a constant action, recording each step's running rows → (dream, trace)."""
    dream = DreamBatch(rnn, np.asarray(seeds), tau, max_steps, done_rule=done_rule, world=world)
    trace = []
    while not dream.done:
        trace.append(
            {int(b): (dream.z[i].copy(), dream.h[i].copy(), dream.c[i].copy()) for i, b in enumerate(dream.active)}
        )
        dream.step(np.full((len(dream.active), 1), action, np.float32))
    return dream, trace


def test_episodes_start_from_initial_z_only():
    rnn = doom_m(initial_logvar=-60.0)
    dream = DreamBatch(rnn, np.arange(40), 1.0, 2100)
    mu = rnn.initial_z[0]
    matches = [np.flatnonzero(np.all(mu == z, axis=1)) for z in dream.z]
    assert all(len(m) == 1 for m in matches)
    assert len({int(m[0]) for m in matches}) == 5  # every recorded start is used, nothing else
    assert not dream.h.any() and not dream.c.any() and (dream.restart == 1).all()


def test_done_is_the_logit_threshold_and_the_cap():
    rnn = doom_m(done_bias=0.01)
    rnn.head_kernel[:, 0] = 0.0  # done logit = bias exactly: p(done) = 0.5025
    dream, _ = play(rnn, np.arange(50))
    assert (dream.lengths == 1).all()  # a threshold, not a coin flip: every episode ends at once
    never = doom_m(done_bias=-0.01)
    never.head_kernel[:, 0] = 0.0
    dream, _ = play(never, [0])
    assert (dream.lengths == 2100).all() and (dream.returns == 2100.0).all()
    dream, _ = play(never, np.arange(3), max_steps=40)
    assert (dream.lengths == 40).all()


def test_death_probability_undoes_the_done_losss_weight():
    # The weighted BCE at death frequency p, w·p·softplus(−l) + (1 − p)·softplus(l), minimised on a fine grid of
    # logits: σ(l* − ln 10) must give p back.
    grid = np.linspace(-12.0, 12.0, 240_001)
    for p in (0.002, 0.01, 0.0909, 0.3, 0.9):
        loss = 10.0 * p * np.logaddexp(0.0, -grid) + (1.0 - p) * np.logaddexp(0.0, grid)
        assert death_probability(grid[np.argmin(loss)]) == pytest.approx(p, rel=1e-3)
    assert death_probability(0.0) == pytest.approx(1.0 / 11.0)  # the original's threshold
    assert death_probability(np.log(10.0)) == pytest.approx(0.5)
    assert np.isfinite(death_probability(np.array([-800.0, 800.0]))).all()


def test_the_sample_rule_ends_episodes_with_the_death_probability():
    # A constant logit of ln(10/9): the threshold ends every episode at once; `sample` ends each step with
    # p = σ(ln(10/9) − ln 10) = 0.1, so lengths are geometric: mean 1/p = 10, P(length > 20) = 0.9^20.
    rnn = doom_m(done_bias=float(np.log(10.0 / 9.0)))
    rnn.head_kernel[:, 0] = 0.0
    dream, _ = play(rnn, np.arange(50), max_steps=2100)
    assert (dream.lengths == 1).all()
    dream, _ = play(rnn, np.arange(4000), max_steps=2100, done_rule="sample")
    assert dream.lengths.mean() == pytest.approx(10.0, rel=0.05)
    assert (dream.lengths > 20).mean() == pytest.approx(0.9**20, abs=0.02)
    again, _ = play(rnn, np.arange(4000), max_steps=2100, done_rule="sample")
    np.testing.assert_array_equal(again.lengths, dream.lengths)  # each episode's draws come from its seed
    with pytest.raises(ValueError, match="done rule"):
        DreamBatch(rnn, np.arange(2), 1.15, 100, done_rule="coin")


def test_the_sample_rule_leaves_the_trajectory_of_the_threshold_rule():
    # Same seeds, a done logit that never ends an episode under either rule within the cap: identical z, h, c.
    rnn = doom_m(done_bias=-60.0)
    rnn.head_kernel[:, 0] = 0.0
    a, trace_a = play(rnn, np.arange(3), max_steps=150)
    b, trace_b = play(rnn, np.arange(3), max_steps=150, done_rule="sample")
    np.testing.assert_array_equal(a.lengths, b.lengths)
    for step_a, step_b in zip(trace_a, trace_b):
        for k in step_a:
            for x, y in zip(step_a[k], step_b[k]):
                np.testing.assert_array_equal(x, y)


def test_a_batch_gives_each_episodes_own_trajectory_and_finished_ones_leave():
    rnn = doom_m()
    seeds = np.arange(100, 108)
    batch, batch_trace = play(rnn, seeds, max_steps=300)
    assert len(set(batch.lengths.tolist())) > 3 and batch.lengths.min() < 300
    for b, seed in enumerate(seeds):
        alone, alone_trace = play(rnn, [seed], max_steps=300)
        assert alone.lengths[0] == batch.lengths[b]
        for t in range(alone.lengths[0]):
            for got, want in zip(batch_trace[t][b], alone_trace[t][0]):
                np.testing.assert_allclose(got, want, atol=1e-5)
        assert all(b not in step for step in batch_trace[batch.lengths[b] :])


def test_the_controller_sees_z_c_h_with_ms_state_before_z_as_in_the_real_env():
    rnn = doom_m(done_bias=-5.0)
    shape = controller_shape(DOOM)
    dream, trace = play(rnn, [7], max_steps=12, action=-0.6)
    # Reference: M from zero state eats (z_t, a_t, restart_t) with restart 1 only at t = 0; z_{t+1} from its
    # mixture with the episode's noise. The controller's input at t is [z_t, c_t, h_t], c_t, h_t before z_t.
    h, c = rnn.initial_state(1)
    z = trace[0][0][0][None]
    for t in range(12):
        got = features(shape, *(row[None] for row in trace[t][0]))
        np.testing.assert_allclose(got, np.concatenate([z, c, h], axis=1), atol=1e-5)
        assert got.shape == (1, 1088) and (t > 0 or not got[:, 64:].any())
        params, h, c = rnn.step(np.concatenate([z, [[-0.6, 1.0 if t == 0 else 0.0]]], axis=1).astype(np.float32), h, c)
        if t + 1 < 12:
            z = trace[t + 1][0][0][None]
            assert np.abs(z - params.mu.max(axis=-1)).max() < 50  # drawn from this step's mixture


def test_the_sampler_with_given_noise_is_the_rngs_sampler():
    rnn = doom_m()
    params, _, _ = rnn.step(np.zeros((3, 66), np.float32), *rnn.initial_state(3))
    a = sample_z(params, 1.15, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    b = sample_z_from(params, 1.15, rng.random((3, 64)), rng.standard_normal((3, 64)))
    np.testing.assert_array_equal(a, b)


def test_batch_controller_matches_one_controller_per_row():
    for task, mode in ((DOOM, "zch"), (get_task("carracing"), "z_hidden")):
        shape = controller_shape(task, mode)
        params = np.random.default_rng(0).normal(0, 0.2, (3, shape.n_params))
        f = np.random.default_rng(1).normal(size=(7, shape.input_size)).astype(np.float32)
        which = np.array([0, 2, 1, 1, 0, 2, 2])
        want = np.stack([Controller(shape, params[w])(f[i : i + 1])[0] for i, w in enumerate(which)])
        np.testing.assert_allclose(BatchController(shape, params)(f, which), want, atol=1e-5)


def test_dream_rollouts_score_each_candidate_by_survival(tmp_path):
    save_m(doom_m(), tmp_path)
    rollouts = DreamRollouts(RolloutSpec(str(tmp_path), "doom", "zch", 2100, env="dream", tau=1.15))
    params = np.random.default_rng(0).normal(0, 0.1, (4, 1088))
    seeds = np.arange(12).reshape(4, 3)
    together = rollouts.run(Job(params, seeds))
    assert together.returns.shape == (4, 3) and (together.returns == together.lengths).all()
    for i in range(4):
        alone = rollouts.run(Job(params[i : i + 1], seeds[i : i + 1]))
        np.testing.assert_array_equal(alone.lengths[0], together.lengths[i])


def test_in_another_ms_dream_z_and_ends_are_its_and_c_sees_its_own_ms_state():
    own, world = doom_m(seed=0), doom_m(seed=1, done_bias=-3.0)
    seeds = np.arange(20, 26)
    for rule in ("threshold", "sample"):
        mixed, mixed_trace = play(own, seeds, max_steps=300, action=-0.4, done_rule=rule, world=world)
        alone, alone_trace = play(world, seeds, max_steps=300, action=-0.4, done_rule=rule)
        np.testing.assert_array_equal(mixed.lengths, alone.lengths)  # the world's ends, the world's noise
        assert len(set(mixed.lengths.tolist())) > 2 and mixed.lengths.min() < 300
        for b in range(len(seeds)):
            # Reference: C's M from zero state eats the world's z_t, a_t and restart (1 at t = 0 only).
            h, c = own.initial_state(1)
            for t in range(int(mixed.lengths[b])):
                z, got_h, got_c = mixed_trace[t][b]
                np.testing.assert_array_equal(z, alone_trace[t][b][0])
                np.testing.assert_allclose(got_h, h[0], atol=1e-5)
                np.testing.assert_allclose(got_c, c[0], atol=1e-5)
                x = np.concatenate([z[None], [[-0.4, 1.0 if t == 0 else 0.0]]], axis=1).astype(np.float32)
                _, h, c = own.step(x, h, c)
    same, same_trace = play(own, seeds, max_steps=300, world=own)
    plain, plain_trace = play(own, seeds, max_steps=300)
    np.testing.assert_array_equal(same.lengths, plain.lengths)
    for got, want in zip(same_trace, plain_trace):
        for b in want:
            for a, e in zip(got[b], want[b]):
                np.testing.assert_array_equal(a, e)


def test_dream_rollouts_alternate_episodes_between_the_worlds(tmp_path):
    own, world = save_m(doom_m(seed=0), tmp_path / "own"), save_m(doom_m(seed=1, done_bias=-3.0), tmp_path / "world")
    spec = RolloutSpec(str(tmp_path / "own"), "doom", "zch", 400, env="dream", tau=1.15)
    both = DreamRollouts(dataclasses.replace(spec, worlds=(str(tmp_path / "world"),)))
    params = np.random.default_rng(0).normal(0, 0.1, (3, 1088))
    seeds = np.arange(30, 42).reshape(3, 4)
    got = both.run(Job(params, seeds))
    own_only = DreamRollouts(spec).run(Job(params, seeds[:, 0::2]))
    np.testing.assert_array_equal(got.lengths[:, 0::2], own_only.lengths)
    for i in range(3):  # the odd episodes: C (on its own M's state) in the other M's dream
        dream = DreamBatch(own, seeds[i, 1::2], 1.15, 400, world=world)
        controller = BatchController(controller_shape(DOOM), params[i : i + 1])
        while not dream.done:
            y = controller(
                features(controller_shape(DOOM), dream.z, dream.h, dream.c), np.zeros(len(dream.active), int)
            )
            dream.step(y)
        np.testing.assert_array_equal(got.lengths[i, 1::2], dream.lengths)
    assert not np.array_equal(got.lengths[:, 1::2], DreamRollouts(spec).run(Job(params, seeds[:, 1::2])).lengths)


def test_an_m_without_a_done_head_is_no_dream():
    car = get_task("carracing")
    weights = {
        "lstm.kernel": np.zeros((35, 1024)),
        "lstm.recurrent_kernel": np.zeros((256, 1024)),
        "lstm.bias": np.zeros(1024),
        "mdn.kernel": np.zeros((256, 480)),
        "mdn.bias": np.zeros(480),
    }
    with pytest.raises(ValueError, match="predicts no done"):
        DreamBatch(RNNTwin({k: v.astype(np.float32) for k, v in weights.items()}, car), np.arange(2), 1.0, 1000)


def test_a_car_dream_pays_ms_predicted_rewards_and_has_no_restart_input():
    car = get_task("carracing")
    rng = np.random.default_rng(0)
    n_out = 2 + 32 * 15
    w = {
        "lstm.kernel": rng.normal(0, 0.1, (35, 1024)),
        "lstm.recurrent_kernel": rng.normal(0, 0.05, (256, 1024)),
        "lstm.bias": rng.normal(0, 0.1, 1024),
        "mdn.kernel": rng.normal(0, 0.05, (256, n_out)),
        "mdn.bias": rng.normal(0, 0.1, n_out),
    }
    w["mdn.kernel"][:, 0] *= 10.0
    w["mdn.bias"][0] = -4.0
    w = {k: v.astype(np.float32) for k, v in w.items()}
    w.update(
        initial_z_mu=rng.normal(size=(3, 32)).astype(np.float32),
        initial_z_logvar=np.full((3, 32), -2.0, np.float32),
        predicts_done=np.bool_(True),
        predicts_reward=np.bool_(True),
    )
    rnn = RNNTwin(w, car)
    dream = DreamBatch(rnn, np.arange(4), 1.0, 1000)
    assert dream.restart.shape == (4, 0)
    rewards = np.zeros(4)
    h, c = dream.h.copy(), dream.c.copy()
    action = np.tile(np.float32([0.1, 0.5, 0.0]), (4, 1))
    while not dream.done:
        rows = dream.active
        params, h, c = rnn.step(np.concatenate([dream.z, action[: len(rows)]], axis=1), dream.h, dream.c)
        rewards[rows] += params.reward
        dream.step(action[: len(rows)])
    np.testing.assert_allclose(dream.returns, rewards, rtol=1e-5)
    assert (dream.lengths < 1000).any() and not np.allclose(dream.returns, dream.lengths)
