"""The numpy twin of M's step and the original's temperature sampling, for rollouts and the dream.

Built from `rnn/weights.npz` (written by stage 4); held to the Keras model within 1e-5 by a test.
This module imports numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from env.tasks import Task
from rnn.artifacts import DONE_WEIGHT, MIXTURES, load_weights


@dataclass
class MixtureParams:
    """M's prediction for z_{t+1}: per latent dimension, 5 logits, means and log-stds [B, z, 5]; the done
    logit [B] (Doom, or an M with dream heads; else None) and the reward [B] (dream heads; else None)."""

    logits: np.ndarray
    mu: np.ndarray
    logstd: np.ndarray
    done_logit: np.ndarray | None
    reward: np.ndarray | None = None


class RNNTwin:
    """M in numpy: `step(x, h, c)` with x = [z, a(, restart)] float32 [B, in] → (params, h', c')."""

    def __init__(self, weights: Mapping[str, np.ndarray], task: Task):
        self.task = task
        self.kernel = np.ascontiguousarray(weights["lstm.kernel"], np.float32)
        self.recurrent_kernel = np.ascontiguousarray(weights["lstm.recurrent_kernel"], np.float32)
        self.bias = np.asarray(weights["lstm.bias"], np.float32)
        self.head_kernel = np.ascontiguousarray(weights["mdn.kernel"], np.float32)
        self.head_bias = np.asarray(weights["mdn.bias"], np.float32)
        self.units = u = self.recurrent_kernel.shape[0]
        order = np.r_[0 : 2 * u, 3 * u : 4 * u, 2 * u : 3 * u]
        self.stacked_kernel = np.ascontiguousarray(np.concatenate([self.kernel, self.recurrent_kernel])[:, order])
        self.stacked_bias = self.bias[order]
        self.resets = "restart" in task.rnn_extra_inputs
        self.predicts_done = bool(weights.get("predicts_done", task.rnn_predicts_done))
        self.predicts_reward = bool(weights.get("predicts_reward", False))
        self.initial_z = (weights.get("initial_z_mu"), weights.get("initial_z_logvar"))

    @classmethod
    def load(cls, rnn_dir: Path, task: Task) -> RNNTwin:
        """Read `rnn_dir/weights.npz`; a UserError if it is missing, corrupt or another task's."""
        return cls(load_weights(rnn_dir, task), task)

    def initial_state(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Zero (h, c): float32 [batch, units] each."""
        return np.zeros((batch, self.units), np.float32), np.zeros((batch, self.units), np.float32)

    def lstm(self, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One LSTM step: x float32 [B, in], h, c [B, units] → (h', c'); zeroes (h, c) first where Doom's
        restart flag is set. One product of [x, h] with the stacked kernels, gates reordered to (i, f, o, c)
        at load so the three sigmoids run in place on one block."""
        if self.resets:
            restart = x[:, -1:] > 0.5
            if restart.any():
                keep = (~restart).astype(np.float32)
                h, c = h * keep, c * keep
        u = self.units
        gates = np.concatenate([x, h], axis=1, dtype=np.float32) @ self.stacked_kernel
        gates += self.stacked_bias
        sig = gates[:, : 3 * u]
        sig *= 0.5
        np.tanh(sig, out=sig)
        sig += 1.0
        sig *= 0.5
        candidate = gates[:, 3 * u :]
        np.tanh(candidate, out=candidate)
        c = gates[:, u : 2 * u] * c
        c += gates[:, :u] * candidate
        h = np.tanh(c)
        h *= gates[:, 2 * u : 3 * u]
        return h, c

    def head(self, h: np.ndarray) -> MixtureParams:
        """h [B, units] → the mixture parameters for the next z (and the done logit, the reward)."""
        out = h @ self.head_kernel + self.head_bias
        done = out[:, 0] if self.predicts_done else None
        reward = out[:, int(self.predicts_done)] if self.predicts_reward else None
        mdn = out[:, int(self.predicts_done) + int(self.predicts_reward) :]
        groups = mdn.reshape(len(out), self.task.z_size, 3 * MIXTURES)
        return MixtureParams(
            groups[..., :MIXTURES], groups[..., MIXTURES : 2 * MIXTURES], groups[..., 2 * MIXTURES :], done, reward
        )

    def step(self, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[MixtureParams, np.ndarray, np.ndarray]:
        """x = [z, a(, restart)]: float32 [B, in]; h, c [B, units] → (prediction of z_{t+1}, h', c')."""
        h, c = self.lstm(np.asarray(x, np.float32), h, c)
        return self.head(h), h, c


def death_probability(done_logit: np.ndarray, weight: float = DONE_WEIGHT) -> np.ndarray:
    """M's done logit → the probability that the episode ends at this step, float [...].

    The done loss weights positives × `weight`, so its minimiser is logit(p) + ln(weight) where p is the
    frequency of deaths: σ(logit − ln weight) undoes the weighting. The original's dream ends an episode where
    logit > 0, i.e. where this probability exceeds 1 / (1 + weight)."""
    shifted = np.asarray(done_logit, np.float64) - np.log(weight)
    return np.exp(-np.logaddexp(0.0, -shifted))


def sample_z(params: MixtureParams, tau: float, rng: np.random.Generator) -> np.ndarray:
    """Temperature sampling as the original: per latent dimension, one component drawn from
    softmax(logits / τ) by inverse CDF, then z = μ_k + exp(logstd_k) · √τ · ε. → float32 [B, z]."""
    shape = params.mu.shape[:-1]
    return sample_z_from(params, tau, rng.random(shape), rng.standard_normal(shape))


def sample_z_from(params: MixtureParams, tau: float, u: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """`sample_z` with its randomness given: u ~ U(0, 1) picks each dimension's component, eps ~ N(0, 1)
    its Gaussian draw; both [B, z]. → float32 [B, z]."""
    logits = params.logits * np.float32(1.0 / max(tau, 1e-8))
    logits -= logits.max(axis=-1, keepdims=True)
    cdf = np.cumsum(np.exp(logits), axis=-1)
    k = np.minimum((cdf < u[..., None] * cdf[..., -1:]).sum(axis=-1), MIXTURES - 1)[..., None]
    mean = np.take_along_axis(params.mu, k, axis=-1)[..., 0]
    std = np.exp(np.take_along_axis(params.logstd, k, axis=-1)[..., 0])
    std *= np.float32(np.sqrt(tau))
    std *= eps
    return (mean + std).astype(np.float32, copy=False)
