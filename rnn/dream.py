"""M as an environment: a batch of independent dream episodes stepped together in numpy (ORIGINAL.md §6.1).

Each episode starts from a real episode start — V's encoding of the first frame of a recorded
episode (`initial_z`), sampled as μ + exp(logvar/2)·ε — with M's state at zero and restart = 1,
exactly as the real Doom agent starts (controller/agent.py). A step feeds (z_t, a_t, restart_t)
through M, samples z_{t+1} at temperature τ, and ends the episode after `max_steps` steps or by the
done rule: `threshold` (the original) when M's done logit is > 0, `sample` with the probability of death
the logit stands for (`rnn.twin.death_probability`), one uniform draw per step. Reward is 1 per step, so
an episode's return is its length. An M trained with dream heads (the car) predicts each step's
reward and done logit instead, and has no restart input. After the step the controller sees
[z_{t+1}, c_{t+1}, h_{t+1}]:
the same time alignment as in the real game, so a controller trained here plays there unchanged.

With `world`, the dream is another M's (of the same task, trained on the same V's latents): that M
samples z_{t+1} and ends the episode, while the controller's h and c stay those of `rnn`, run along
the same z and actions as it runs along V's latents in the real game (`controller.train --worlds`).

Every episode draws its randomness from its own generator, seeded by its episode seed, in blocks
of `NOISE_BLOCK` steps: an episode's trajectory does not depend on which other episodes share
its batch. Finished episodes leave the batch, so the cost follows the episodes still running.
"""

from __future__ import annotations

import numpy as np

from rnn.twin import RNNTwin, death_probability, sample_z_from

TAU = 1.15
"""The dream's temperature of the paper's reported Doom agent (Table 2; the original code hard-codes 1.25)."""
DREAM_STREAM = 2
"""The dream episode with seed s draws from default_rng([s, DREAM_STREAM])."""
DONE_STREAM = 4
"""... and, with the `sample` done rule, its done draws from default_rng([s, DONE_STREAM]): z's trajectory is the
same under both rules until the episode ends."""
NOISE_BLOCK = 64
"""Steps of noise each episode draws at once."""
DONE_RULES = ("threshold", "sample")
"""How M's done logit ends a dream episode: the original's logit > 0, or a draw with its death probability."""


class DreamBatch:
    """B dream episodes of M, stepped in lockstep; `z`, `h`, `c` hold the running episodes' rows."""

    def __init__(
        self,
        rnn: RNNTwin,
        seeds: np.ndarray,
        tau: float,
        max_steps: int,
        done_rule: str = "threshold",
        world: RNNTwin | None = None,
    ):
        if done_rule not in DONE_RULES:
            raise ValueError(f"done rule must be one of {', '.join(DONE_RULES)}, got {done_rule!r}")
        world = rnn if world is None else world
        if world.task.name != rnn.task.name or world.units != rnn.units:
            raise ValueError(f"the dream's M ({world.task.name}) and C's M ({rnn.task.name}) differ in task or units")
        if not world.predicts_done:
            raise ValueError(f"this {world.task.name} M predicts no done flag: it cannot end dream episodes")
        if world.initial_z[0] is None:
            raise ValueError("M's weights hold no initial_z (rerun stage 4)")
        self.rnn, self.world, self.tau, self.max_steps, self.done_rule = rnn, world, float(tau), max_steps, done_rule
        seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
        self.rngs = [np.random.default_rng([int(s), DREAM_STREAM]) for s in seeds]
        self.done_rngs = [np.random.default_rng([int(s), DONE_STREAM]) for s in seeds] if done_rule == "sample" else []
        mu, logvar = (np.asarray(a, np.float32) for a in world.initial_z)
        z = np.empty((len(seeds), rnn.task.z_size), np.float32)
        for b, rng in enumerate(self.rngs):
            start = rng.integers(len(mu))
            z[b] = mu[start] + np.exp(0.5 * logvar[start]) * rng.standard_normal(mu.shape[1], dtype=np.float32)
        self.z = z
        self.h, self.c = rnn.initial_state(len(seeds))
        self.world_h, self.world_c = world.initial_state(len(seeds)) if world is not rnn else (None, None)
        """The state of the dream's M where `world` is another M than C's."""
        self.restart = np.ones((len(seeds), 1 if rnn.resets else 0), np.float32)
        self.active = np.arange(len(seeds))
        """Batch indices of the running episodes, in the row order of z, h, c."""
        self.lengths = np.zeros(len(seeds), np.int64)
        self.totals = np.zeros(len(seeds), np.float64)
        self.t = 0
        self.noise_u = self.noise_eps = np.zeros((0, NOISE_BLOCK, rnn.task.z_size), np.float32)
        self.noise_done = np.zeros((0, NOISE_BLOCK), np.float64)

    @property
    def done(self) -> bool:
        return len(self.active) == 0

    def _noise(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This step's (u, eps) [running, z] and, with the `sample` rule, the done draw [running]; refilled from
        each episode's generators every NOISE_BLOCK steps."""
        k = self.t % NOISE_BLOCK
        if k == 0:
            shape = (NOISE_BLOCK, self.rnn.task.z_size)
            self.noise_u = np.stack([self.rngs[b].random(shape, dtype=np.float32) for b in self.active])
            self.noise_eps = np.stack([self.rngs[b].standard_normal(shape, dtype=np.float32) for b in self.active])
            if self.done_rule == "sample":
                self.noise_done = np.stack([self.done_rngs[b].random(NOISE_BLOCK) for b in self.active])
        return self.noise_u[:, k], self.noise_eps[:, k], self.noise_done[:, k] if self.done_rule == "sample" else None

    def step(self, action: np.ndarray) -> np.ndarray:
        """action float32 [running, A] → done bool [running] (in the order before the step); finished
        episodes then leave z, h, c and `active`."""
        u, eps, draw = self._noise()
        x = np.concatenate([self.z, np.asarray(action, np.float32), self.restart], axis=1)
        if self.world is self.rnn:
            params, self.h, self.c = self.rnn.step(x, self.h, self.c)
        else:
            params, self.world_h, self.world_c = self.world.step(x, self.world_h, self.world_c)
            self.h, self.c = self.rnn.lstm(x, self.h, self.c)
        self.z = sample_z_from(params, self.tau, u, eps)
        self.t += 1
        self.lengths[self.active] = self.t
        self.totals[self.active] += 1.0 if params.reward is None else params.reward
        if self.done_rule == "sample":
            ends = draw < death_probability(params.done_logit)
        else:
            ends = params.done_logit > 0
        done = ends | (self.t >= self.max_steps)
        self.restart = np.zeros_like(self.restart)
        if done.any():
            keep = ~done
            self.active = self.active[keep]
            self.z, self.h, self.c, self.restart = self.z[keep], self.h[keep], self.c[keep], self.restart[keep]
            if self.world is not self.rnn:
                self.world_h, self.world_c = self.world_h[keep], self.world_c[keep]
            self.noise_u, self.noise_eps = self.noise_u[keep], self.noise_eps[keep]
            if self.done_rule == "sample":
                self.noise_done = self.noise_done[keep]
        return done

    @property
    def returns(self) -> np.ndarray:
        """Each episode's return so far, float64 [B]: 1 per step (Doom), or M's predicted rewards (dream heads)."""
        return self.totals.copy()
