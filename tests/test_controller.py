"""C, the agent's step order, CMA-ES and the seed ranges: against the paper's counts and numpy references."""

import numpy as np
import pytest

from controller import model as controller_model
from controller.agent import AGENT_STREAM, Agent
from controller.es import CMAES, SELECTION_BASE, TEST_BASE, TRAIN_RANGE, heldout_seeds, selection_seeds, training_seeds
from controller.model import Controller, controller_shape
from env.common.cli import UserError
from env.policies import controller_to_env_action
from env.tasks import get_task
from rnn.twin import RNNTwin
from vae.twin import EncoderTwin

CAR = get_task("carracing")
DOOM = get_task("doom")


@pytest.mark.parametrize(
    "task, mode, count",
    [
        (CAR, "z", 99),
        (CAR, "zh", 867),
        (CAR, "zch", 1635),
        (CAR, "z_hidden", 1443),
        (CAR, "zc", 867),
        (DOOM, "zch", 1088),
    ],
)
def test_parameter_counts_match_the_paper(task, mode, count):
    assert controller_shape(task, mode).n_params == count


def test_default_modes_and_the_count_command(capsys):
    assert controller_shape(CAR).mode == "zh" and controller_shape(DOOM).mode == "zch"
    assert controller_shape(DOOM).bias is False
    assert controller_model.main(["--task", "doom"]) == 0
    assert "1,088 parameters" in capsys.readouterr().out
    with pytest.raises(UserError, match="unknown controller mode"):
        controller_shape(CAR, "zzz")


def test_linear_layout_is_bias_first_then_row_major_weights():
    shape = controller_shape(CAR, "zh")
    params = np.random.default_rng(0).normal(size=shape.n_params)
    f = np.random.default_rng(1).normal(size=(5, 288))
    bias, weight = params[:3], params[3:].reshape(288, 3)
    assert np.allclose(Controller(shape, params)(f), np.tanh(f @ weight + bias))
    assert weight[1, 0] == params[3 + 3]  # row-major: the second feature's first output


def test_hidden_layout_and_doom_without_bias():
    shape = controller_shape(CAR, "z_hidden")
    p = np.random.default_rng(0).normal(size=shape.n_params)
    f = np.random.default_rng(1).normal(size=(4, 32))
    b1, w1 = p[:40], p[40 : 40 + 32 * 40].reshape(32, 40)
    rest = p[40 + 32 * 40 :]
    b2, w2 = rest[:3], rest[3:].reshape(40, 3)
    assert np.allclose(Controller(shape, p)(f), np.tanh(np.tanh(f @ w1 + b1) @ w2 + b2))

    doom = controller_shape(DOOM)
    p = np.random.default_rng(2).normal(size=doom.n_params)
    f = np.random.default_rng(3).normal(size=(2, 1088))
    assert np.allclose(Controller(doom, p)(f), np.tanh(f @ p.reshape(1088, 1)))
    with pytest.raises(ValueError, match="1088 parameters"):
        Controller(doom, p[:-1])


def random_twins(task, seed=0):
    """Twins with random weights of the exported shapes (their parity with Keras is tested in test_vae/test_rnn)."""
    rng = np.random.default_rng(seed)
    enc = {}
    for name, k, cin, cout in (
        ("enc_conv1", 4, 3, 32),
        ("enc_conv2", 4, 32, 64),
        ("enc_conv3", 4, 64, 128),
        ("enc_conv4", 4, 128, 256),
    ):
        enc[f"{name}.kernel"] = rng.normal(0, 0.1, (k, k, cin, cout)).astype(np.float32)
        enc[f"{name}.bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
    for name in ("enc_fc_mu", "enc_fc_log_var"):
        enc[f"{name}.kernel"] = rng.normal(0, 0.05, (1024, task.z_size)).astype(np.float32)
        enc[f"{name}.bias"] = rng.normal(0, 0.1, task.z_size).astype(np.float32)
    u, n_in = task.rnn_units, task.z_size + task.action_dim + len(task.rnn_extra_inputs)
    n_out = task.z_size * 15 + int(task.rnn_predicts_done)
    rnn = {
        "lstm.kernel": rng.normal(0, 0.1, (n_in, 4 * u)),
        "lstm.recurrent_kernel": rng.normal(0, 0.1, (u, 4 * u)),
        "lstm.bias": rng.normal(0, 0.1, 4 * u),
        "mdn.kernel": rng.normal(0, 0.1, (u, n_out)),
        "mdn.bias": np.zeros(n_out),
    }
    return EncoderTwin(enc), RNNTwin({k: v.astype(np.float32) for k, v in rnn.items()}, task)


@pytest.mark.parametrize("task", [CAR, DOOM], ids=["carracing", "doom"])
def test_agent_follows_the_originals_step_order(task):
    encoder, rnn = random_twins(task)
    shape = controller_shape(task)
    params = np.random.default_rng(4).normal(0, 0.3, shape.n_params)
    agent = Agent(task, shape, encoder, rnn)
    agent.set_params(params)
    frames = np.random.default_rng(5).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    agent.reset(np.random.default_rng([7, AGENT_STREAM]))
    actions = [agent.act(frame) for frame in frames]

    # Reference, written out step by step: z_t sampled from V, C on M's state before z_t, then M eats (z_t, a_t).
    c_net = Controller(shape, params)
    rng = np.random.default_rng([7, AGENT_STREAM])
    h, c = np.zeros((1, task.rnn_units), np.float32), np.zeros((1, task.rnn_units), np.float32)
    for t, frame in enumerate(frames):
        mu, logvar = encoder(frame[None])
        z = mu + np.exp(logvar / 2) * rng.standard_normal(mu.shape, dtype=np.float32)
        state = {"z": z, "c": c, "h": h}
        y = c_net(np.concatenate([state[k] for k in task.controller_features], axis=1))[0]
        a = controller_to_env_action(task, y)
        np.testing.assert_array_equal(actions[t], a)
        extra = [np.array([[1.0 if t == 0 else 0.0]], np.float32)] if task.name == "doom" else []
        _, h, c = rnn.step(np.concatenate([z, a[None], *extra], axis=1), h, c)
        assert not np.allclose(z, mu)  # a sample, not the mean
    np.testing.assert_array_equal(agent.h, h)


def test_z_only_modes_do_not_need_m():
    encoder, _ = random_twins(CAR)
    for mode in ("z", "z_hidden"):
        agent = Agent(CAR, controller_shape(CAR, mode), encoder, None)
        agent.set_params(np.zeros(controller_shape(CAR, mode).n_params))
        agent.reset(np.random.default_rng(0))
        np.testing.assert_array_equal(agent.act(np.zeros((64, 64, 3), np.uint8)), [0.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="RNNTwin"):
        Agent(CAR, controller_shape(CAR, "zh"), encoder, None)


def test_cma_cost_is_minus_reward_plus_an_l2_penalty():
    es = CMAES(4, sigma_init=0.1, popsize=4, weight_decay=0.01, seed=0)
    es.solutions = np.array([[0.0] * 4, [1.0] * 4, [2.0, 0, 0, 0], [0.0] * 4])
    costs = es.costs(np.array([10.0, 10.0, 10.0, 3.0]))
    np.testing.assert_allclose(costs, [-10.0, -10.0 + 0.01, -10.0 + 0.01, -3.0])
    assert costs[1] > costs[0]  # equal reward: the larger weights cost more (the original rewarded them)


def test_cma_maximises_reward():
    es = CMAES(5, sigma_init=0.5, popsize=12, weight_decay=0.0, seed=3)
    for _ in range(80):
        x = es.ask()
        es.tell(-np.sum((x - 1.0) ** 2, axis=1))
    np.testing.assert_allclose(es.mean, np.ones(5), atol=0.05)
    assert es.sigma < 0.1


def test_antithetic_pairs_share_seeds_and_the_seed_ranges_are_disjoint():
    seeds = training_seeds(0, 3, 8, 5, antithetic=True)
    assert seeds.shape == (8, 5)
    np.testing.assert_array_equal(seeds[:4], seeds[4:])
    assert len(np.unique(seeds[:4])) == 20
    np.testing.assert_array_equal(seeds, training_seeds(0, 3, 8, 5, antithetic=True))
    assert not np.intersect1d(seeds, training_seeds(0, 4, 8, 5, antithetic=True)).size
    assert not np.intersect1d(seeds, training_seeds(1, 3, 8, 5, antithetic=True)).size
    assert len(np.unique(training_seeds(0, 3, 8, 5, antithetic=False))) == 40
    assert len(np.unique(training_seeds(0, 3, 7, 5, antithetic=True))) == 35  # odd population: no pairs
    assert seeds.min() >= 0 and seeds.max() < TRAIN_RANGE
    sel, test = selection_seeds(1024), heldout_seeds(0, 100)
    assert sel.min() >= TRAIN_RANGE and sel.max() < TEST_BASE == SELECTION_BASE + 2**29
    assert test.min() >= TEST_BASE and test.max() < 2**31 - 1
    with pytest.raises(ValueError):
        heldout_seeds(2**29, 100)
