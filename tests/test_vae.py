"""V: architecture and counts, serialisation, the loss against numpy, the numpy encoder twin."""

import keras
import numpy as np
import pytest

from env.common.cli import UserError
from env.tasks import get_task
from env.wrappers import make_env
from vae.model import (
    Conv2DTransposeFrom1x1,
    ConvVAE,
    build_vae,
    export_weights,
    kl_loss,
    load_vae,
    reconstruction_loss,
    save_vae,
)
from vae.twin import EncoderTwin, conv2d_valid

CAR = get_task("carracing")
DOOM = get_task("doom")

# ORIGINAL.md §2.2: layer output shapes and parameter counts for z = 32.
ORIGINAL_TABLE = {
    "enc_conv1": ((31, 31, 32), 1_568),
    "enc_conv2": ((14, 14, 64), 32_832),
    "enc_conv3": ((6, 6, 128), 131_200),
    "enc_conv4": ((2, 2, 256), 524_544),
    "enc_fc_mu": ((32,), 32_800),
    "enc_fc_log_var": ((32,), 32_800),
    "dec_fc": ((1024,), 33_792),
    "dec_deconv1": ((5, 5, 128), 3_276_928),
    "dec_deconv2": ((13, 13, 64), 204_864),
    "dec_deconv3": ((30, 30, 32), 73_760),
    "dec_deconv4": ((64, 64, 3), 3_459),
}


@pytest.fixture(scope="module")
def car_vae():
    keras.utils.set_random_seed(3)
    return build_vae(CAR, seed=5)


def test_parameter_counts_match_the_paper(car_vae):
    assert car_vae.count_params() == 4_348_547
    assert build_vae(DOOM).count_params() == 4_446_915


def test_layers_match_the_original_table(car_vae):
    found = {layer.name: layer for part in (car_vae.encoder, car_vae.decoder) for layer in part.layers}
    for name, (shape, count) in ORIGINAL_TABLE.items():
        assert tuple(found[name].output.shape[1:]) == shape, name
        assert found[name].count_params() == count, name
    assert found["dec_deconv4"].activation.__name__ == "sigmoid"
    assert found["dec_fc"].activation.__name__ == "linear"
    assert all(
        found[f"enc_conv{i}"].padding == "valid" and found[f"enc_conv{i}"].strides == (2, 2) for i in range(1, 5)
    )


def test_deconv_from_1x1_equals_keras_conv2d_transpose():
    rng = np.random.default_rng(0)
    fast = Conv2DTransposeFrom1x1(8, 5, strides=2, padding="valid", activation="relu")
    reference = keras.layers.Conv2DTranspose(8, 5, strides=2, padding="valid", activation="relu")
    x = rng.normal(size=(4, 1, 1, 16)).astype(np.float32)
    fast.build(x.shape)
    reference.build(x.shape)
    kernel = rng.normal(size=fast.kernel.shape).astype(np.float32)
    bias = rng.normal(size=fast.bias.shape).astype(np.float32)
    fast.set_weights([kernel, bias])
    reference.set_weights([kernel, bias])
    np.testing.assert_allclose(np.asarray(fast(x)), np.asarray(reference(x)), atol=1e-5)
    # Hand-computed: out[b, i, j, f] = relu(Σ_c x[b, c] · K[i, j, f, c] + bias[f]).
    expected = np.maximum(np.einsum("bc,ijfc->bijf", x[:, 0, 0], kernel) + bias, 0)
    np.testing.assert_allclose(np.asarray(fast(x)), expected, atol=1e-4)
    with pytest.raises(ValueError, match="1×1 input"):
        Conv2DTransposeFrom1x1(8, 5).build((None, 2, 2, 16))


def test_save_and_load_give_identical_outputs(car_vae, tmp_path):
    (tmp_path / "config.json").write_text('{"settings": {"task": "carracing"}}')
    save_vae(car_vae, tmp_path, CAR)
    loaded = load_vae(tmp_path, CAR)
    assert isinstance(loaded, ConvVAE) and loaded.z_size == 32
    frames = np.random.default_rng(1).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8) / 255.0
    for a, b in zip(car_vae.encoder(frames), loaded.encoder(frames)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    z = np.random.default_rng(2).normal(size=(6, 32)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(car_vae.decoder(z)), np.asarray(loaded.decoder(z)))
    with pytest.raises(UserError, match="trained for 'carracing', not 'doom'"):
        load_vae(tmp_path, DOOM)
    (tmp_path / "vae.keras").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot be loaded"):
        load_vae(tmp_path, CAR)


def test_reconstruction_loss_sums_pixels_and_averages_the_batch():
    x = np.zeros((2, 64, 64, 3), np.float32)
    y = np.full((2, 64, 64, 3), 0.5, np.float32)
    y[1] = 0.0
    assert float(reconstruction_loss(x, x)) == 0.0
    # Frame 0 costs 12,288 · 0.25 = 3,072, frame 1 costs 0: the batch mean is 1,536.
    assert float(reconstruction_loss(x, y)) == pytest.approx(1536.0)
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 64, 64, 3), np.float32), rng.random((5, 64, 64, 3), np.float32)
    assert float(reconstruction_loss(a, b)) == pytest.approx(((a - b) ** 2).reshape(5, -1).sum(1).mean(), rel=1e-5)


def test_kl_loss_against_numpy_with_the_free_bits_floor():
    zeros = np.zeros((3, 32), np.float32)
    assert float(kl_loss(zeros, zeros, 0.0)) == 0.0  # KL(N(0, I) ‖ N(0, I)) = 0
    assert float(kl_loss(zeros, zeros, 16.0)) == 16.0  # floored at 0.5 · z
    # One dimension with mu = 2, logvar = 0 has KL ½·4 = 2 (hand-computed).
    mu = zeros.copy()
    mu[:, 0] = 2.0
    assert float(kl_loss(mu, zeros, 0.0)) == pytest.approx(2.0)
    rng = np.random.default_rng(1)
    mu = rng.normal(0, [[0.3], [3.0], [1.0], [0.1]], (4, 32)).astype(np.float32)
    logvar = rng.normal(0, 0.5, (4, 32)).astype(np.float32)
    per_sample = -0.5 * (1 + logvar - mu**2 - np.exp(logvar)).sum(axis=1)
    assert per_sample.min() < 16 < per_sample.max()  # the floor binds for some samples only
    expected = np.maximum(per_sample, 16.0).mean()
    assert float(kl_loss(mu, logvar, 16.0)) == pytest.approx(expected, rel=1e-5)


def test_training_losses_are_recon_plus_floored_kl(car_vae):
    frames = np.random.default_rng(4).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    total, recon, kl = (float(v) for v in car_vae.losses_of(frames, training=False))
    assert total == pytest.approx(recon + kl)
    assert kl >= 0.5 * 32
    assert recon > 0


def test_conv2d_valid_against_a_direct_loop():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 9, 3)).astype(np.float32)
    kernel = rng.normal(size=(4, 4, 3, 5)).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    out = conv2d_valid(x, kernel, bias)
    assert out.shape == (2, 3, 3, 5)
    for i in range(3):
        for j in range(3):
            patch = x[:, 2 * i : 2 * i + 4, 2 * j : 2 * j + 4, :]
            want = np.maximum(np.einsum("bhwc,hwcf->bf", patch, kernel) + bias, 0)
            np.testing.assert_allclose(out[:, i, j], want, atol=1e-5)


def real_car_frame():
    env = make_env(CAR)
    obs, _ = env.reset(seed=3)
    for _ in range(60):
        obs, *_ = env.step(np.array([0.0, 0.5, 0.0], np.float32))
    env.close()
    return obs


def test_numpy_twin_matches_the_keras_encoder(car_vae, tmp_path):
    twin = EncoderTwin(export_weights(car_vae))
    rng = np.random.default_rng(7)
    frames = np.concatenate([rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8), real_car_frame()[None]])
    mu, logvar = twin(frames)
    keras_mu, keras_logvar = car_vae.encoder(frames.astype(np.float32) / 255.0)
    assert mu.dtype == np.float32 and mu.shape == (6, 32)
    np.testing.assert_allclose(mu, np.asarray(keras_mu), atol=1e-4)
    np.testing.assert_allclose(logvar, np.asarray(keras_logvar), atol=1e-4)
    assert np.abs(np.asarray(keras_mu)).max() > 1e-2  # the comparison is not between near-zero outputs
    z = twin.sample(frames, np.random.default_rng(0))
    assert z.shape == (6, 32) and not np.allclose(z, mu)
    with pytest.raises(ValueError, match="uint8"):
        twin(frames.astype(np.float32))


def test_twin_loads_only_its_own_tasks_weights(car_vae, tmp_path):
    (tmp_path / "config.json").write_text('{"settings": {"task": "carracing"}}')
    with pytest.raises(UserError, match="missing"):
        EncoderTwin.load(tmp_path, CAR)
    save_vae(car_vae, tmp_path, CAR)
    frames = np.random.default_rng(8).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        EncoderTwin.load(tmp_path, CAR)(frames)[0], EncoderTwin(export_weights(car_vae))(frames)[0]
    )
    with pytest.raises(UserError, match="trained for 'carracing', not 'doom'"):
        EncoderTwin.load(tmp_path, DOOM)
    (tmp_path / "weights.npz").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        EncoderTwin.load(tmp_path, CAR)
