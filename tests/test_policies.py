"""The original's data-collection policies (ORIGINAL.md §4.1, §4.2) and C's action mapping."""

import numpy as np

from env.policies import cauchy_controller, controller_to_env_action, make_policy, repeat_uniform
from env.tasks import get_task

CAR = get_task("carracing")
DOOM = get_task("doom")


def test_car_action_mapping():
    np.testing.assert_allclose(controller_to_env_action(CAR, np.array([-0.5, -1.0, -0.3])), [-0.5, 0.0, 0.0])
    np.testing.assert_allclose(controller_to_env_action(CAR, np.array([0.9, 0.0, 0.4])), [0.9, 0.5, 0.4])
    np.testing.assert_allclose(controller_to_env_action(CAR, np.array([0.0, 1.0, 1.0])), [0.0, 1.0, 1.0])
    np.testing.assert_allclose(controller_to_env_action(DOOM, np.array([-0.7])), [-0.7])


def test_cauchy_controller_is_a_function_of_its_rng():
    a = [cauchy_controller(CAR, np.random.default_rng(3))(t) for t in range(5)]
    b = [cauchy_controller(CAR, np.random.default_rng(3))(t) for t in range(5)]
    np.testing.assert_array_equal(a, b)


def test_cauchy_controller_statistics():
    """s ~ U(0, 0.01) keeps most pre-activations near 0: gas ≈ 0.5, steer ≈ 0, brake often exactly 0;
    Cauchy tails give occasional large actions."""
    rng = np.random.default_rng(0)
    actions = np.array([cauchy_controller(CAR, rng)(t) for _ in range(400) for t in range(10)])
    assert actions.dtype == np.float32 and actions.shape == (4000, 3)
    assert np.all(actions[:, 0] >= -1) and np.all(actions[:, 0] <= 1)
    assert np.all(actions[:, 1:] >= 0) and np.all(actions[:, 1:] <= 1)
    assert abs(np.median(actions[:, 0])) < 0.05
    assert abs(np.median(actions[:, 1]) - 0.5) < 0.05
    assert 0.3 < np.mean(actions[:, 2] == 0.0) < 0.7  # brake = clip(tanh(.), 0, 1): off about half the time
    assert np.mean(np.abs(actions[:, 0]) > 0.5) > 0.01  # heavy tails


def test_repeat_uniform_holds_each_action_1_to_10_steps():
    rng = np.random.default_rng(1)
    actions = []
    for _ in range(50):
        policy = repeat_uniform(DOOM, rng)
        actions.extend(float(policy(t)[0]) for t in range(300))
    actions = np.array(actions)
    assert np.all(np.abs(actions) <= 1)
    change = np.flatnonzero(np.diff(actions) != 0) + 1
    runs = np.diff(change)
    assert runs.min() >= 1 and runs.max() <= 10
    assert set(np.unique(runs)) >= set(range(1, 6))
    assert abs(actions.mean()) < 0.1 and abs(np.mean(np.abs(actions)) - 0.5) < 0.05  # U(-1, 1)


def test_repeat_uniform_draws_a_fresh_action_at_step_0():
    """The original redraws when frame % repeat == 0, so step 0 always draws."""
    rng = np.random.default_rng(2)
    policy = repeat_uniform(DOOM, rng)
    first = policy(0)
    replay = np.random.default_rng(2)
    replay.integers(1, 11)
    assert first[0] == np.float32(replay.uniform(-1.0, 1.0))


def test_doom_baseline_draws_a_fresh_uniform_action_every_step():
    """The paper's random Doom agent changes action every step (no holding), uniform on [-1, 1]."""
    assert DOOM.baseline_policy == "uniform" and CAR.baseline_policy == "cauchy_controller"
    policy = make_policy(DOOM.baseline_policy, DOOM, np.random.default_rng(2))
    actions = np.array([policy(t) for t in range(4000)])
    assert actions.shape == (4000, 1) and actions.dtype == np.float32
    assert np.all(np.abs(actions) <= 1)
    assert np.mean(actions[1:, 0] == actions[:-1, 0]) == 0.0
    counts, _ = np.histogram(actions[:, 0], bins=4, range=(-1, 1))
    assert np.all(np.abs(counts - 1000) < 120)  # ±3.8σ of a binomial(4000, 1/4)
    np.testing.assert_array_equal(
        actions[:5, 0], np.random.default_rng(2).uniform(-1.0, 1.0, (5, 1))[:, 0].astype(np.float32)
    )
