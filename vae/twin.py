"""The numpy twin of V's encoder, for rollout workers that must not import TensorFlow.

Built from `vae/weights.npz` (written by stage 2); held to the Keras encoder within 1e-4 by a test.
This module imports numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from env.tasks import FRAME_SIZE, Task
from vae.artifacts import load_weights

CONVS = ("enc_conv1", "enc_conv2", "enc_conv3", "enc_conv4")
STRIDE = 2


def conv2d_valid(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int = STRIDE) -> np.ndarray:
    """x: float32 [B, H, W, C], kernel [k, k, C, F] (Keras layout) → ReLU(conv) float32 [B, H', W', F],
    valid padding: one matrix product over the patches, gathered through a strided view."""
    k = kernel.shape[0]
    b, h, w, c = x.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    sb, sh, sw, sc = x.strides
    patches = np.lib.stride_tricks.as_strided(
        x, (b, ho, wo, k, k, c), (sb, stride * sh, stride * sw, sh, sw, sc), writeable=False
    )
    y = patches.reshape(b * ho * wo, k * k * c) @ kernel.reshape(k * k * c, -1)
    y += bias
    np.maximum(y, 0.0, out=y)
    return y.reshape(b, ho, wo, -1)


class EncoderTwin:
    """V's encoder in numpy: obs uint8 [B, 64, 64, 3] → (mu, logvar) float32 [B, z]."""

    def __init__(self, weights: Mapping[str, np.ndarray]):
        self.convs = [
            (
                np.ascontiguousarray(weights[f"{name}.kernel"], np.float32),
                np.asarray(weights[f"{name}.bias"], np.float32),
            )
            for name in CONVS
        ]
        kernel = np.concatenate([weights["enc_fc_mu.kernel"], weights["enc_fc_log_var.kernel"]], axis=1)
        self.head = (
            np.ascontiguousarray(kernel, np.float32),
            np.concatenate([weights["enc_fc_mu.bias"], weights["enc_fc_log_var.bias"]]).astype(np.float32),
        )
        self.z_size = weights["enc_fc_mu.kernel"].shape[1]

    @classmethod
    def load(cls, vae_dir: Path, task: Task) -> EncoderTwin:
        """Read `vae_dir/weights.npz`; a UserError if it is missing, corrupt or another task's."""
        return cls(load_weights(vae_dir, task))

    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """obs: uint8 [B, 64, 64, 3] → (mu, logvar): float32 [B, z]."""
        obs = np.asarray(obs)
        if obs.dtype != np.uint8 or obs.shape[1:] != (FRAME_SIZE, FRAME_SIZE, 3):
            raise ValueError(f"expected uint8 [B, {FRAME_SIZE}, {FRAME_SIZE}, 3] frames, got {obs.dtype} {obs.shape}")
        x = obs.astype(np.float32) * np.float32(1.0 / 255.0)
        for kernel, bias in self.convs:
            x = conv2d_valid(x, kernel, bias)
        out = x.reshape(len(x), -1) @ self.head[0] + self.head[1]
        return out[:, : self.z_size], out[:, self.z_size :]

    def sample(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """obs: uint8 [B, 64, 64, 3] → z = mu + exp(logvar / 2) · ε: float32 [B, z] (the original samples z)."""
        mu, logvar = self(obs)
        eps = rng.standard_normal(mu.shape, dtype=np.float32)
        return mu + np.exp(0.5 * logvar) * eps
