"""M as an environment: a batch of independent dream episodes stepped together in numpy (ORIGINAL.md §6.1).

Each episode starts from a real episode start — V's encoding of the first frame of a recorded
episode (`initial_z`), sampled as μ + exp(logvar/2)·ε — with M's state at zero and restart = 1,
exactly as the real Doom agent starts (controller/agent.py). A step feeds (z_t, a_t, restart_t)
through M, samples z_{t+1} at temperature τ, and ends the episode when M's done logit is > 0 (a
threshold, as the original, not a coin flip) or after `max_steps` steps. Reward is 1 per step, so
an episode's return is its length. An M trained with dream heads (the car) predicts each step's
reward and done logit instead, and has no restart input. After the step the controller sees
[z_{t+1}, c_{t+1}, h_{t+1}]:
the same time alignment as in the real game, so a controller trained here plays there unchanged.

Every episode draws its randomness from its own generator, seeded by its episode seed, in blocks
of `NOISE_BLOCK` steps: an episode's trajectory does not depend on which other episodes share
its batch. Finished episodes leave the batch, so the cost follows the episodes still running.
"""

from __future__ import annotations

import numpy as np

from rnn.twin import RNNTwin, sample_z_from

TAU = 1.15
"""The dream's temperature of the paper's reported Doom agent (Table 2; the original code hard-codes 1.25)."""
DREAM_STREAM = 2
"""The dream episode with seed s draws from default_rng([s, DREAM_STREAM])."""
NOISE_BLOCK = 64
"""Steps of noise each episode draws at once."""


class DreamBatch:
    """B dream episodes of M, stepped in lockstep; `z`, `h`, `c` hold the running episodes' rows."""

    def __init__(self, rnn: RNNTwin, seeds: np.ndarray, tau: float, max_steps: int):
        if not rnn.predicts_done:
            raise ValueError(f"this {rnn.task.name} M predicts no done flag: it cannot end dream episodes")
        if rnn.initial_z[0] is None:
            raise ValueError("M's weights hold no initial_z (rerun stage 4)")
        self.rnn, self.tau, self.max_steps = rnn, float(tau), max_steps
        seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
        self.rngs = [np.random.default_rng([int(s), DREAM_STREAM]) for s in seeds]
        mu, logvar = (np.asarray(a, np.float32) for a in rnn.initial_z)
        z = np.empty((len(seeds), rnn.task.z_size), np.float32)
        for b, rng in enumerate(self.rngs):
            start = rng.integers(len(mu))
            z[b] = mu[start] + np.exp(0.5 * logvar[start]) * rng.standard_normal(mu.shape[1], dtype=np.float32)
        self.z = z
        self.h, self.c = rnn.initial_state(len(seeds))
        self.restart = np.ones((len(seeds), 1 if rnn.resets else 0), np.float32)
        self.active = np.arange(len(seeds))
        """Batch indices of the running episodes, in the row order of z, h, c."""
        self.lengths = np.zeros(len(seeds), np.int64)
        self.totals = np.zeros(len(seeds), np.float64)
        self.t = 0
        self.noise_u = self.noise_eps = np.zeros((0, NOISE_BLOCK, rnn.task.z_size), np.float32)

    @property
    def done(self) -> bool:
        return len(self.active) == 0

    def _noise(self) -> tuple[np.ndarray, np.ndarray]:
        """This step's (u, eps) [running, z], refilled from each episode's generator every NOISE_BLOCK steps."""
        k = self.t % NOISE_BLOCK
        if k == 0:
            shape = (NOISE_BLOCK, self.rnn.task.z_size)
            self.noise_u = np.stack([self.rngs[b].random(shape, dtype=np.float32) for b in self.active])
            self.noise_eps = np.stack([self.rngs[b].standard_normal(shape, dtype=np.float32) for b in self.active])
        return self.noise_u[:, k], self.noise_eps[:, k]

    def step(self, action: np.ndarray) -> np.ndarray:
        """action float32 [running, A] → done bool [running] (in the order before the step); finished
        episodes then leave z, h, c and `active`."""
        u, eps = self._noise()
        x = np.concatenate([self.z, np.asarray(action, np.float32), self.restart], axis=1)
        params, self.h, self.c = self.rnn.step(x, self.h, self.c)
        self.z = sample_z_from(params, self.tau, u, eps)
        self.t += 1
        self.lengths[self.active] = self.t
        self.totals[self.active] += 1.0 if params.reward is None else params.reward
        done = (params.done_logit > 0) | (self.t >= self.max_steps)
        self.restart = np.zeros_like(self.restart)
        if done.any():
            keep = ~done
            self.active = self.active[keep]
            self.z, self.h, self.c, self.restart = self.z[keep], self.h[keep], self.c[keep], self.restart[keep]
            self.noise_u, self.noise_eps = self.noise_u[keep], self.noise_eps[keep]
        return done

    @property
    def returns(self) -> np.ndarray:
        """Each episode's return so far, float64 [B]: 1 per step (Doom), or M's predicted rewards (dream heads)."""
        return self.totals.copy()
