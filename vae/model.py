"""V: the ConvVAE of the original code (ORIGINAL.md §2.2, §2.3), its loss, and its files.

The encoder and decoder are functional Keras models owned by a thin `ConvVAE` that implements
`train_step`; the model saves as `.keras` and loads back. `python -m vae.model --task T` prints the
summary and the parameter count (car 4,348,547; Doom 4,446,915, as the paper's tables).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from env.common.cli import UserError, run
from env.common.files import atomic_write
from env.common.training import load_model, save_model
from env.tasks import FRAME_SIZE, TASKS, Task, get_task
from vae import KL_TOLERANCE
from vae.artifacts import MODEL_FILE, WEIGHTS_FILE, check_vae_dir

ENCODER_CONVS = ((32, 4), (64, 4), (128, 4), (256, 4))
"""(filters, kernel) of the stride-2 valid ReLU convolutions enc_conv1..4."""
DECODER_DECONVS = ((128, 5), (64, 5), (32, 6), (3, 6))
"""(filters, kernel) of the stride-2 valid transposed convolutions dec_deconv1..4 (last one sigmoid)."""
DECODER_DENSE = 1024
"""dec_fc width; reshaped to 1×1×1024 before the transposed convolutions."""


def reconstruction_loss(x, y):
    """x, y: float [B, 64, 64, 3] in [0, 1] → scalar: squared error summed per frame, mean over the batch."""
    x = ops.cast(x, "float32")
    y = ops.cast(y, "float32")
    return ops.mean(ops.sum(ops.square(x - y), axis=(1, 2, 3)))


def kl_loss(mu, logvar, floor: float):
    """mu, logvar: float [B, z] → scalar: KL(q(z|x) ‖ N(0, I)) summed over z, floored at `floor` per
    sample, mean over the batch."""
    mu = ops.cast(mu, "float32")
    logvar = ops.cast(logvar, "float32")
    kl = -0.5 * ops.sum(1.0 + logvar - ops.square(mu) - ops.exp(logvar), axis=-1)
    return ops.mean(ops.maximum(kl, floor))


def build_encoder(z_size: int) -> keras.Model:
    """float32 [B, 64, 64, 3] in [0, 1] → (mu, logvar): float32 [B, z]."""
    x = inputs = keras.Input((FRAME_SIZE, FRAME_SIZE, 3), name="frames")
    for i, (filters, kernel) in enumerate(ENCODER_CONVS, start=1):
        x = layers.Conv2D(filters, kernel, strides=2, padding="valid", activation="relu", name=f"enc_conv{i}")(x)
    x = layers.Flatten(name="enc_flatten")(x)
    mu = layers.Dense(z_size, name="enc_fc_mu")(x)
    logvar = layers.Dense(z_size, name="enc_fc_log_var")(x)
    return keras.Model(inputs, [mu, logvar], name="encoder")


def build_decoder(z_size: int) -> keras.Model:
    """z: float32 [B, z] → frames: float32 [B, 64, 64, 3] in [0, 1]."""
    x = inputs = keras.Input((z_size,), name="z")
    x = layers.Dense(DECODER_DENSE, name="dec_fc")(x)
    x = layers.Reshape((1, 1, DECODER_DENSE), name="dec_reshape")(x)
    last = len(DECODER_DECONVS)
    for i, (filters, kernel) in enumerate(DECODER_DECONVS, start=1):
        deconv = Conv2DTransposeFrom1x1 if i == 1 else layers.Conv2DTranspose
        x = deconv(
            filters,
            kernel,
            strides=2,
            padding="valid",
            activation="sigmoid" if i == last else "relu",
            dtype="float32" if i == last else None,
            name=f"dec_deconv{i}",
        )(x)
    return keras.Model(inputs, x, name="decoder")


@keras.saving.register_keras_serializable(package="worldmodels")
class Conv2DTransposeFrom1x1(layers.Conv2DTranspose):
    """A Conv2DTranspose applied to a 1×1 input: the same kernel, bias and outputs, computed as one matrix
    product. (TensorFlow's CPU kernel for this shape, 1×1×1024 → 5×5×128, is about 50× slower.)"""

    def build(self, input_shape):
        if tuple(input_shape[1:3]) != (1, 1):
            raise ValueError(f"{self.name}: expects a 1×1 input, got shape {input_shape}")
        super().build(input_shape)

    def call(self, inputs):
        kh, kw, filters, channels = self.kernel.shape
        flat = ops.reshape(self.kernel, (kh * kw * filters, channels))
        y = ops.matmul(ops.reshape(inputs, (-1, channels)), ops.transpose(flat))
        y = ops.reshape(y, (-1, kh, kw, filters)) + self.bias
        return self.activation(y)


@keras.saving.register_keras_serializable(package="worldmodels")
class Sampling(layers.Layer):
    """(mu, logvar): [B, z] → z = mu + exp(logvar / 2) · ε, ε ~ N(0, I) from the layer's own seed generator."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        mu, logvar = inputs
        eps = keras.random.normal(ops.shape(mu), dtype=mu.dtype, seed=self.seed_generator)
        return mu + ops.exp(0.5 * logvar) * eps

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="worldmodels")
class ConvVAE(keras.Model):
    """The original ConvVAE. Called on uint8 or [0, 1] float frames [B, 64, 64, 3], returns the
    reconstruction of a sampled z. Training minimises reconstruction_loss + kl_loss."""

    def __init__(self, z_size: int, kl_tolerance: float = KL_TOLERANCE, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.z_size = z_size
        self.kl_tolerance = kl_tolerance
        self.seed = seed
        self.encoder = build_encoder(z_size)
        self.decoder = build_decoder(z_size)
        self.sampling = Sampling(seed, name="sampling")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.recon_tracker = keras.metrics.Mean(name="recon")
        self.kl_tracker = keras.metrics.Mean(name="kl")

    @staticmethod
    def to_unit(frames):
        """uint8 [B, 64, 64, 3] → float32 in [0, 1] (floats pass through, assumed already in [0, 1])."""
        if frames.dtype == "uint8":
            return ops.cast(frames, "float32") / 255.0
        return ops.cast(frames, "float32")

    def call(self, frames, training=False):
        mu, logvar = self.encoder(self.to_unit(frames), training=training)
        return self.decoder(self.sampling((mu, logvar)), training=training)

    def losses_of(self, frames, training: bool):
        """Frames → (total, recon, kl) scalars for one batch."""
        x = self.to_unit(frames)
        mu, logvar = self.encoder(x, training=training)
        y = self.decoder(self.sampling((mu, logvar)), training=training)
        recon = reconstruction_loss(x, y)
        kl = kl_loss(mu, logvar, self.kl_tolerance * self.z_size)
        return recon + kl, recon, kl

    def train_step(self, data):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss, recon, kl = self.losses_of(data, training=True)
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply(grads, self.trainable_weights)
        return self._track(loss, recon, kl)

    def test_step(self, data):
        return self._track(*self.losses_of(data, training=False))

    def _track(self, loss, recon, kl):
        self.loss_tracker.update_state(loss)
        self.recon_tracker.update_state(recon)
        self.kl_tracker.update_state(kl)
        return {m.name: m.result() for m in self.metrics}

    @property
    def metrics(self):
        return [self.loss_tracker, self.recon_tracker, self.kl_tracker]

    def get_config(self):
        return {**super().get_config(), "z_size": self.z_size, "kl_tolerance": self.kl_tolerance, "seed": self.seed}


def build_vae(task: Task, seed: int | None = None, kl_tolerance: float = KL_TOLERANCE) -> ConvVAE:
    """A freshly initialised, built ConvVAE for `task` (z from the task table)."""
    model = ConvVAE(task.z_size, kl_tolerance=kl_tolerance, seed=seed, name=f"convvae_{task.name}")
    model(np.zeros((1, FRAME_SIZE, FRAME_SIZE, 3), np.uint8))
    return model


def export_weights(model: ConvVAE) -> dict[str, np.ndarray]:
    """Named float32 weights, '<layer>.kernel' / '<layer>.bias', of the encoder and the decoder."""
    weights = {}
    for part in (model.encoder, model.decoder):
        for layer in part.layers:
            for name in ("kernel", "bias"):
                if hasattr(layer, name):
                    weights[f"{layer.name}.{name}"] = np.asarray(ops.convert_to_numpy(getattr(layer, name)), np.float32)
    return weights


def save_vae(model: ConvVAE, vae_dir: Path, task: Task) -> None:
    """Write `vae_dir/vae.keras` and `vae_dir/weights.npz` (named weights plus task and z_size), atomically."""
    vae_dir = Path(vae_dir)
    save_model(model, vae_dir / MODEL_FILE)
    arrays = {**export_weights(model), "task": np.str_(task.name), "z_size": np.int64(task.z_size)}
    atomic_write(vae_dir / WEIGHTS_FILE, lambda f: np.savez(f, **arrays))


def load_vae(vae_dir: Path, task: Task) -> ConvVAE:
    """Load the trained V of `task` from `vae_dir`; a UserError if missing, corrupt or another task's."""
    check_vae_dir(vae_dir, task)
    path = Path(vae_dir) / MODEL_FILE
    model = load_model(path)
    if not isinstance(model, ConvVAE) or model.z_size != task.z_size:
        raise UserError(f"{path}: not a ConvVAE with z = {task.z_size} for {task.name}")
    return model


def summary_lines(model: ConvVAE) -> list[str]:
    """The Keras summaries of encoder and decoder, then the total parameter count."""
    lines: list[str] = []
    model.encoder.summary(print_fn=lambda s, **_: lines.append(s))
    model.decoder.summary(print_fn=lambda s, **_: lines.append(s))
    lines.append(f"ConvVAE total parameters: {model.count_params():,}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print V's Keras summary and parameter count.")
    parser.add_argument("--task", default="carracing", choices=sorted(TASKS))
    args = parser.parse_args(argv)
    print("\n".join(summary_lines(build_vae(get_task(args.task)))))
    return 0


if __name__ == "__main__":
    run(main)
