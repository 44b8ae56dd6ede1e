"""M: counts, serialisation, the mixture and done losses against numpy, temperature sampling
statistics, the restart reset, the learning-rate schedule and the numpy step twin."""

import keras
import numpy as np
import pytest

from env.common.cli import UserError
from env.tasks import get_task
from rnn.model import (
    MDNRNN,
    DecayToFloor,
    build_rnn,
    done_loss,
    ending_weights,
    export_weights,
    input_size,
    load_rnn,
    mixture_nll,
    output_size,
    save_rnn,
    split_params,
)
from rnn.twin import MixtureParams, RNNTwin, sample_z

CAR = get_task("carracing")
DOOM = get_task("doom")


def randomised(model, seed=0):
    """Perturb every weight so that biases are non-zero and gates are not symmetric."""
    rng = np.random.default_rng(seed)
    model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(1)
    return {"carracing": randomised(build_rnn(CAR, seed=1)), "doom": randomised(build_rnn(DOOM, seed=2), 1)}


def test_parameter_counts_match_the_paper(models):
    car, doom = models["carracing"], models["doom"]
    assert car.count_params() == 422_368
    assert (car.lstm.count_params(), car.head.count_params()) == (299_008, 123_360)
    assert doom.count_params() == 1_678_785
    assert (doom.lstm.count_params(), doom.head.count_params()) == (1_185_792, 492_993)
    assert (input_size(CAR), output_size(CAR)) == (35, 480)
    assert (input_size(DOOM), output_size(DOOM)) == (66, 961)


@pytest.mark.parametrize("task", [CAR, DOOM], ids=lambda t: t.name)
def test_save_and_load_give_identical_outputs(models, task, tmp_path):
    model = models[task.name]
    (tmp_path / "config.json").write_text(f'{{"settings": {{"task": "{task.name}"}}}}')
    save_rnn(model, tmp_path, task)
    loaded = load_rnn(tmp_path, task)
    assert isinstance(loaded, MDNRNN)
    x = np.random.default_rng(3).normal(size=(2, 7, input_size(task))).astype(np.float32)
    a, (ha, ca) = model(x)
    b, (hb, cb) = loaded(x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(ca), np.asarray(cb))
    other = DOOM if task is CAR else CAR
    with pytest.raises(UserError, match=f"trained for '{task.name}', not '{other.name}'"):
        load_rnn(tmp_path, other)


def test_car_m_runs_the_fused_lstm_layer_and_matches_the_cell_loop(models):
    import keras

    car = models["carracing"]
    assert type(car.lstm) is keras.layers.LSTM  # cuDNN's kernel where a GPU is present
    assert type(models["doom"].lstm) is keras.layers.RNN  # the restart cell needs the step loop
    loop = keras.layers.RNN(keras.layers.LSTMCell(256), return_sequences=True, return_state=True)
    x = np.random.default_rng(4).normal(size=(2, 9, input_size(CAR))).astype(np.float32)
    loop(x)
    loop.set_weights(car.lstm.get_weights())
    fused, h, c = car.lstm(x)
    reference, h_ref, c_ref = loop(x)
    np.testing.assert_allclose(np.asarray(fused), np.asarray(reference), atol=1e-6)
    np.testing.assert_allclose(np.asarray(c), np.asarray(c_ref), atol=1e-6)


def test_loading_needs_only_the_named_weights(models, tmp_path):
    (tmp_path / "config.json").write_text('{"settings": {"task": "carracing"}}')
    save_rnn(models["carracing"], tmp_path, CAR)
    (tmp_path / "rnn.keras").write_bytes(b"a Keras file of another layer layout")
    x = np.random.default_rng(5).normal(size=(1, 4, input_size(CAR))).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(load_rnn(tmp_path, CAR)(x)[0]), np.asarray(models["carracing"](x)[0]))
    weights = dict(np.load(tmp_path / "weights.npz"))
    weights["mdn.bias"] = weights["mdn.bias"][:-1]
    np.savez(tmp_path / "weights.npz", **weights)
    with pytest.raises(UserError, match="mdn.bias has shape"):
        load_rnn(tmp_path, CAR)


def test_head_layout_is_logits_means_logstds_per_dimension_after_the_done_logit():
    z = 3
    params = np.arange(1 + z * 15, dtype=np.float32)[None]
    logits, mu, logstd, done = (np.asarray(v) for v in split_params(params, z, predicts_done=True))
    assert done[0] == 0.0
    np.testing.assert_array_equal(logits[0, 1], np.arange(16, 21))  # dimension 1: elements 1 + 15 .. 1 + 19
    np.testing.assert_array_equal(mu[0, 1], np.arange(21, 26))
    np.testing.assert_array_equal(logstd[0, 2], np.arange(41, 46))


def numpy_mixture_nll(z, logits, mu, logstd):
    """Independent reference: −logsumexp_k [log π_k + log N(z; μ_k, σ_k)], mean over elements."""
    log_pi = logits - logits.max(-1, keepdims=True)
    log_pi = log_pi - np.log(np.exp(log_pi).sum(-1, keepdims=True))
    log_n = -0.5 * ((z[..., None] - mu) / np.exp(logstd)) ** 2 - logstd - 0.5 * np.log(2 * np.pi)
    terms = log_pi + log_n
    top = terms.max(-1, keepdims=True)
    return float(-(top[..., 0] + np.log(np.exp(terms - top).sum(-1))).mean())


def test_mixture_nll_against_a_numpy_logsumexp_reference():
    rng = np.random.default_rng(0)
    shape = (4, 6, 32)
    z = rng.normal(size=shape).astype(np.float32)
    logits, mu = rng.normal(size=(*shape, 5)).astype(np.float32), rng.normal(size=(*shape, 5)).astype(np.float32)
    logstd = rng.uniform(-2, 1, (*shape, 5)).astype(np.float32)
    assert float(mixture_nll(z, logits, mu, logstd)) == pytest.approx(
        numpy_mixture_nll(z, logits, mu, logstd), rel=1e-5
    )
    # Far-out targets: finite, as logsumexp keeps it (no exp-then-log underflow).
    far = np.full(shape, 40.0, np.float32)
    assert np.isfinite(float(mixture_nll(far, logits, mu, logstd)))
    assert float(mixture_nll(far, logits, mu, logstd)) == pytest.approx(
        numpy_mixture_nll(far, logits, mu, logstd), rel=1e-4
    )


def test_one_component_mixture_is_the_gaussian_log_density():
    z = np.array([[0.3, -1.2]], np.float32)
    mu = np.zeros((1, 2, 5), np.float32)
    mu[..., 2] = [0.5, -1.0]
    logstd = np.full((1, 2, 5), 3.0, np.float32)
    logstd[..., 2] = [np.log(0.7), np.log(2.0)]
    logits = np.full((1, 2, 5), -1e4, np.float32)
    logits[..., 2] = 0.0
    sigma = np.array([0.7, 2.0])
    gaussian = -0.5 * ((z[0] - [0.5, -1.0]) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)
    assert float(mixture_nll(z, logits, mu, logstd)) == pytest.approx(-gaussian.mean(), rel=1e-5)


def test_done_loss_weights_positives_ten_times():
    logit = np.array([[0.5, -2.0, 3.0]], np.float32)
    target = np.array([[1.0, 0.0, 0.0]], np.float32)
    bce = -(target * np.log(1 / (1 + np.exp(-logit))) + (1 - target) * np.log(1 - 1 / (1 + np.exp(-logit))))
    expected = ((1 + 9 * target) * bce).mean()
    assert float(done_loss(logit, target)) == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(float(done_loss(np.array([200.0, -200.0]), np.array([0.0, 1.0]))))


def mixture_1d(logits, mu, logstd):
    shape = (1, 1, 5)
    return MixtureParams(
        np.reshape(logits, shape).astype(np.float32),
        np.reshape(mu, shape).astype(np.float32),
        np.reshape(logstd, shape).astype(np.float32),
        None,
    )


def test_temperature_near_zero_picks_the_most_likely_components_mean():
    params = mixture_1d([0.1, 2.0, 0.3, 1.9, -1.0], [-3, 1.5, 0, 4, 2], [0, -1, 0, 0, 0])
    draws = [sample_z(params, 1e-6, np.random.default_rng(s))[0, 0] for s in range(50)]
    np.testing.assert_allclose(draws, 1.5, atol=1e-2)


def test_temperature_one_matches_the_mixtures_mean_and_variance():
    logits, mu, logstd = (
        np.array([0.0, 1.0, -0.5, 0.3, 0.2]),
        np.array([-2, 0, 3, 1, -1.0]),
        np.log(np.array([0.5, 1.0, 0.3, 2.0, 0.8])),
    )
    pi = np.exp(logits) / np.exp(logits).sum()
    mean = (pi * mu).sum()
    var = (pi * (np.exp(logstd) ** 2 + mu**2)).sum() - mean**2
    n = 200_000
    params = MixtureParams(
        np.tile(logits, (n, 1, 1)).astype(np.float32),
        np.tile(mu, (n, 1, 1)).astype(np.float32),
        np.tile(logstd, (n, 1, 1)).astype(np.float32),
        None,
    )
    draws = sample_z(params, 1.0, np.random.default_rng(0))[:, 0]
    assert abs(draws.mean() - mean) < 5 * np.sqrt(var / n)
    assert abs(draws.var() - var) < 0.02 * var
    # τ divides the logits: at τ = 2, component frequencies follow softmax(logits / 2); the variance
    # of each component is scaled by τ.
    hot = sample_z(
        MixtureParams(params.logits, params.mu, np.full_like(params.logstd, -20.0), None), 2.0, np.random.default_rng(1)
    )[:, 0]
    expected = np.exp(logits / 2) / np.exp(logits / 2).sum()
    observed = np.array([(np.abs(hot - m) < 1e-3).mean() for m in mu])
    np.testing.assert_allclose(observed, expected, atol=0.005)


def test_decay_to_floor_matches_the_original_log():
    schedule = DecayToFloor(1e-3, 0.99999)
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(24_380)) == pytest.approx(0.000786, abs=1e-6)  # WME doomrnn log at step 24,380
    assert float(DecayToFloor(1e-3, 1.0)(4000)) == pytest.approx(1e-3)


def test_restart_zeroes_the_keras_lstm_state(models):
    model = models["doom"]
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 12, 66)).astype(np.float32)
    x[..., -1] = 0.0
    x[0, 5, -1] = 1.0
    whole, _ = model(x)
    suffix, _ = model(x[:, 5:])
    np.testing.assert_allclose(np.asarray(whole)[:, 5:], np.asarray(suffix), atol=1e-5)
    x[0, 5, -1] = 0.0
    assert not np.allclose(np.asarray(model(x)[0])[:, 5:], np.asarray(suffix), atol=1e-3)


@pytest.mark.parametrize("task", [CAR, DOOM], ids=lambda t: t.name)
def test_numpy_twin_matches_keras_over_100_steps(models, task):
    model = models[task.name]
    twin = RNNTwin({**export_weights(model), "task": np.str_(task.name)}, task)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 100, input_size(task))).astype(np.float32)
    if task.rnn_extra_inputs:
        x[..., -1] = 0.0
        x[:, 0, -1] = 1.0
        x[0, 50, -1] = 1.0  # a restart in the middle of sequence 0
    keras_out, (keras_h, keras_c) = model(x)
    keras_out = np.asarray(keras_out)
    h, c = twin.initial_state(2)
    for t in range(100):
        params, h, c = twin.step(x[:, t], h, c)
        reference = split_params(keras_out[:, t], task.z_size, task.rnn_predicts_done)
        for ours, theirs in zip((params.logits, params.mu, params.logstd), reference[:3]):
            np.testing.assert_allclose(ours, np.asarray(theirs), atol=1e-5)
        if task.rnn_predicts_done:
            np.testing.assert_allclose(params.done_logit, np.asarray(reference[3]), atol=1e-5)
    np.testing.assert_allclose(h, np.asarray(keras_h), atol=1e-5)
    np.testing.assert_allclose(c, np.asarray(keras_c), atol=1e-5)


def test_m_trains_on_sampled_z_and_death_targets_the_step_before_a_restart(models):
    """LESSONS 5 and 7: z is a fresh sample of N(mu, exp(logvar)) per batch, and the done target of
    input t is restart[t + 1] (the agent died at step t)."""
    model = models["doom"]
    n, steps = 64, 10
    mu = np.random.default_rng(0).normal(size=(n, steps, 64)).astype(np.float32)
    restart = np.zeros((n, steps), np.float32)
    restart[:, 0] = restart[:, 6] = 1.0
    batch = {
        "mu": mu,
        "logvar": np.full_like(mu, np.log(4.0)),
        "action": np.zeros((n, steps, 1), np.float32),
        "restart": restart,
    }
    inputs, z_next, done_next = (np.asarray(v) for v in model.sequences(batch))
    assert inputs.shape == (n, steps - 1, 66) and z_next.shape == (n, steps - 1, 64)
    noise = np.concatenate([inputs[..., :64] - mu[:, :-1], z_next - mu[:, 1:]]).ravel()
    assert abs(noise.std() - 2.0) < 0.05 and abs(noise.mean()) < 0.05
    np.testing.assert_array_equal(inputs[0, :, -1], restart[0, :-1])  # the flag rides with its own frame
    np.testing.assert_array_equal(done_next[0], restart[0, 1:])
    assert done_next[0, 5] == 1.0 and done_next[0].sum() == 1.0
    again = np.asarray(model.sequences(batch)[0])
    assert not np.allclose(again[..., :64], inputs[..., :64])  # re-sampled on every call


def test_car_dream_heads_add_done_and_reward_in_front_of_the_mixture():
    model = randomised(build_rnn(CAR, seed=3, dream_heads=True), 2)
    assert model.count_params() == 422_368 + 2 * 257 and output_size(CAR, dream_heads=True) == 482
    twin = RNNTwin(
        {
            **export_weights(model),
            "task": np.str_("carracing"),
            "predicts_done": np.bool_(True),
            "predicts_reward": np.bool_(True),
        },
        CAR,
    )
    x = np.random.default_rng(6).normal(size=(2, 30, 35)).astype(np.float32)
    out = np.asarray(model(x)[0])
    h, c = twin.initial_state(2)
    for t in range(30):
        params, h, c = twin.step(x[:, t], h, c)
        np.testing.assert_allclose(params.done_logit, out[:, t, 0], atol=1e-5)
        np.testing.assert_allclose(params.reward, out[:, t, 1], atol=1e-5)
        np.testing.assert_allclose(params.logits, out[:, t, 2:].reshape(2, 32, 15)[..., :5], atol=1e-5)

    n, steps = 3, 8
    rng = np.random.default_rng(1)
    batch = {
        "mu": rng.normal(size=(n, steps, 32)).astype(np.float32),
        "logvar": np.full((n, steps, 32), -20.0, np.float32),
        "action": rng.normal(size=(n, steps, 3)).astype(np.float32),
        "reward": rng.normal(size=(n, steps)).astype(np.float32),
        "done": np.zeros((n, steps), np.float32),
    }
    batch["done"][1, 4] = 1.0
    inputs, z_next, done_next = (np.asarray(v) for v in model.sequences(batch))
    np.testing.assert_array_equal(done_next, batch["done"][:, :-1])  # the step whose action ended the episode
    losses = {k: float(v) for k, v in model.losses_of(batch, training=False).items()}
    params = np.asarray(model(inputs)[0])
    want_reward = np.mean((params[..., 1] - batch["reward"][:, :-1]) ** 2)
    want_done = float(done_loss(params[..., 0], done_next))
    assert losses["reward_loss"] == pytest.approx(want_reward, rel=1e-4)
    assert losses["done_loss"] == pytest.approx(want_done, rel=1e-4)
    assert losses["loss"] == pytest.approx(losses["z_loss"] + want_done + want_reward, rel=1e-4)


def test_ending_weights_cover_each_episodes_last_frames_and_not_the_next_episodes_first():
    done_next = np.zeros((2, 30), np.float32)
    done_next[0, 14] = 1.0  # frame 14 is its episode's last: targets z_5 .. z_14 are the last 10 frames
    done_next[1, 3] = 1.0  # an episode that ends early in the chunk: targets z_1 .. z_3
    weights = np.asarray(ending_weights(done_next, 10.0, window=10))
    want = np.ones((2, 30), np.float32)
    want[0, 4:14] = 10.0  # target index t predicts z_{t+1}
    want[1, 0:3] = 10.0
    np.testing.assert_array_equal(weights, want)


def test_the_death_weight_multiplies_the_z_loss_of_an_episodes_last_frames(models):
    model = models["doom"]
    rng = np.random.default_rng(5)
    n, steps = 2, 25
    batch = {
        "mu": rng.normal(size=(n, steps, 64)).astype(np.float32),
        "logvar": np.full((n, steps, 64), -30.0, np.float32),  # z = mu
        "action": rng.uniform(-1, 1, (n, steps, 1)).astype(np.float32),
        "restart": np.zeros((n, steps), np.float32),
    }
    batch["restart"][:, 0] = 1.0
    batch["restart"][0, 16] = 1.0  # frame 15 ends an episode
    inputs, z_next, done_next = (np.asarray(v) for v in model.sequences(batch))
    logits, mu, logstd, _ = (np.asarray(v) for v in split_params(np.asarray(model(inputs)[0]), 64, True))
    plain = float(model.losses_of(batch, training=False)["z_loss"])
    assert plain == pytest.approx(numpy_mixture_nll(z_next, logits, mu, logstd), rel=1e-4)
    per_target = np.array(
        [
            [numpy_mixture_nll(z_next[b, t], logits[b, t], mu[b, t], logstd[b, t]) for t in range(steps - 1)]
            for b in range(n)
        ]
    )
    weights = np.ones((n, steps - 1))
    weights[0, 5:15] = 4.0  # targets z_6 .. z_15, the ending episode's last 10 frames
    model.death_weight = 4.0
    try:
        weighted = float(model.losses_of(batch, training=False)["z_loss"])
    finally:
        model.death_weight = 1.0
    assert weighted == pytest.approx(float((weights * per_target).mean()), rel=1e-4)
    assert weighted > plain * 1.5  # 10 of the 48 targets count 4 times


def test_death_weight_is_a_training_setting_refused_where_no_episode_end_is_seen():
    model = build_rnn(DOOM, seed=3, death_weight=10.0)
    assert model.death_weight == 10.0 and model.get_config()["death_weight"] == 10.0
    from rnn.train import RnnTrainConfig, resolve

    with pytest.raises(UserError, match="--death-weight is for Doom"):
        resolve(RnnTrainConfig(out="run", task="carracing", death_weight=10.0), CAR)
    with pytest.raises(UserError, match="must be positive"):
        resolve(RnnTrainConfig(out="run", task="doom", death_weight=0.0), DOOM)
