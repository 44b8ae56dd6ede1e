"""The agent (V → C → M, in the original's step order) and episodes of a task's real environment.

One step of the agent (ORIGINAL.md §4.1, WME: model.py `get_action` / `rnn_next_state`):

1. V encodes the frame and *samples* z_t = μ + exp(logvar/2)·ε (never μ alone);
2. C sees [z_t, h_t] (car) or [z_t, c_t, h_t] (Doom), M's state *before* it has seen z_t
   (zero at the start of an episode);
3. C's tanh outputs become the env action a_t (car: steer, (y+1)/2 gas, brake clipped to [0, 1]);
4. M consumes (z_t, a_t), plus Doom's restart flag (1 on an episode's first step), and moves to
   (h_{t+1}, c_{t+1}).

Everything here is numpy: rollout processes never import TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from controller.model import BatchController, Controller, ControllerShape, features
from env.policies import controller_to_env_action, make_policy
from env.tasks import Task
from rnn.twin import RNNTwin
from vae.twin import EncoderTwin

AGENT_STREAM = 1
"""The agent's own random stream (V's ε) for an episode with env seed s is default_rng([s, AGENT_STREAM])."""


class Policy(Protocol):
    """What plays an episode: reset at its start with the episode's random generator, then one action per frame."""

    def reset(self, rng: np.random.Generator) -> None: ...

    def act(self, obs: np.ndarray) -> np.ndarray: ...


class Agent:
    """V twin + M twin + C for one task; `act(frame)` returns the env action and advances M."""

    def __init__(self, task: Task, shape: ControllerShape, encoder: EncoderTwin, rnn: RNNTwin | None):
        if shape.uses_m and rnn is None:
            raise ValueError(f"mode {shape.mode} reads M's state: an RNNTwin is required")
        self.task = task
        self.shape = shape
        self.encoder = encoder
        self.rnn = rnn if shape.uses_m else None
        self.controller: Controller | None = None
        self.rng = np.random.default_rng(0)
        self.h = self.c = np.zeros((1, 0), np.float32)
        self.restart = 1.0

    @classmethod
    def load(cls, run_dir: Path, task: Task, shape: ControllerShape) -> Agent:
        """Build from `run_dir/vae/weights.npz` and (when C reads M's state) `run_dir/rnn/weights.npz`."""
        encoder = EncoderTwin.load(Path(run_dir) / "vae", task)
        rnn = RNNTwin.load(Path(run_dir) / "rnn", task) if shape.uses_m else None
        return cls(task, shape, encoder, rnn)

    def set_params(self, params: np.ndarray) -> None:
        """Load C's flat parameter vector (float64 [n_params])."""
        self.controller = Controller(self.shape, params)

    def reset(self, rng: np.random.Generator) -> None:
        """Start an episode: zero M state, restart flag set, V's ε drawn from `rng`."""
        self.rng = rng
        if self.rnn is not None:
            self.h, self.c = self.rnn.initial_state(1)
        self.restart = 1.0

    def act(self, obs: np.ndarray, override: np.ndarray | None = None) -> np.ndarray:
        """obs: uint8 [64, 64, 3] → env action float32 [action_dim]; M then consumes (z_t, a_t).
        With `override`, that action is taken (and fed to M) instead of C's; V's ε is drawn either way."""
        z = self.encoder.sample(obs[None], self.rng)
        y = self.controller(features(self.shape, z, self.h, self.c))[0]
        action = controller_to_env_action(self.task, y) if override is None else np.asarray(override, np.float32)
        if self.rnn is not None:
            x = [z, action[None]]
            if self.rnn.resets:
                x.append(np.array([[self.restart]], np.float32))
            self.h, self.c = self.rnn.lstm(np.concatenate(x, axis=1), self.h, self.c)
        self.restart = 0.0
        return action


class BatchAgent:
    """The agent for a batch of episodes played in lockstep (k candidates' controllers, each episode its own
    generator): `act(obs, active)` runs V, C and M once for all running episodes. Episode b draws V's ε from
    default_rng([seeds[b], AGENT_STREAM]), as `Agent` does when it plays that episode alone."""

    def __init__(self, task: Task, shape: ControllerShape, encoder: EncoderTwin, rnn: RNNTwin | None):
        if shape.uses_m and rnn is None:
            raise ValueError(f"mode {shape.mode} reads M's state: an RNNTwin is required")
        self.task, self.shape, self.encoder = task, shape, encoder
        self.rnn = rnn if shape.uses_m else None

    def reset(self, params: np.ndarray, seeds: np.ndarray, which: np.ndarray) -> None:
        """Start the batch: episode b plays controller `which[b]` of `params` [k, n_params], seed `seeds[b]`."""
        self.controllers = BatchController(self.shape, params)
        self.which = np.asarray(which)
        self.rngs = [np.random.default_rng([int(s), AGENT_STREAM]) for s in seeds]
        units = self.rnn.units if self.rnn is not None else 0
        self.h = np.zeros((len(seeds), units), np.float32)
        self.c = np.zeros((len(seeds), units), np.float32)
        self.restart = np.ones((len(seeds), 1), np.float32)

    def act(self, obs: np.ndarray, active: np.ndarray) -> np.ndarray:
        """obs uint8 [running, 64, 64, 3] of the episodes `active` → env actions float32 [running, action_dim]."""
        mu, logvar = self.encoder(obs)
        eps = np.stack([self.rngs[b].standard_normal(mu.shape[1], dtype=np.float32) for b in active])
        z = mu + np.exp(0.5 * logvar) * eps
        h, c = self.h[active], self.c[active]
        action = controller_to_env_action(
            self.task, self.controllers(features(self.shape, z, h, c), self.which[active])
        )
        if self.rnn is not None:
            x = [z, action] + ([self.restart[active]] if self.rnn.resets else [])
            self.h[active], self.c[active] = self.rnn.lstm(np.concatenate(x, axis=1), h, c)
        self.restart[active] = 0.0
        return action


class FixedPolicy:
    """A named fixed policy (env.policies.POLICIES: the random baseline, constant actions, ...) as a Policy,
    drawn afresh each episode from the episode's generator."""

    def __init__(self, task: Task, name: str):
        self.task, self.name = task, name
        self.policy = None
        self.t = 0

    def reset(self, rng: np.random.Generator) -> None:
        self.policy = make_policy(self.name, self.task, rng)
        self.t = 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        action = self.policy(self.t)
        self.t += 1
        return action


class ExploringAgent:
    """C with exploration, for collecting data where C goes (the paper's iterative training, §5): the episode
    is cut into segments of 1-10 steps as the data-collection policy cuts it; with probability `epsilon` a
    segment holds one uniform random action instead of C's. M always consumes the action taken.

    With probability `mirror` an episode is played by C's mirror image: V sees each frame flipped left to
    right, and the action C (or a random segment) chooses is reflected (task.mirror) before the env takes
    it; M consumes the unreflected action, so V, M and C live in the mirrored world together. A C that
    keeps to one side of a left-right symmetric room (TakeCover's) so also shows M the other side."""

    def __init__(self, agent: Agent, epsilon: float, mirror: float = 0.0):
        self.agent, self.epsilon, self.mirror = agent, epsilon, mirror
        self.reflect = np.asarray(agent.task.mirror, np.float32)
        self.rng = np.random.default_rng(0)
        self.left, self.held, self.mirrored = 0, None, False

    def reset(self, rng: np.random.Generator) -> None:
        self.agent.reset(rng)
        self.rng, side = rng.spawn(2)
        self.left, self.held = 0, None
        self.mirrored = bool(side.random() < self.mirror)

    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.left == 0:
            self.left = int(self.rng.integers(1, 11))
            explore = self.rng.random() < self.epsilon
            y = self.rng.uniform(-1.0, 1.0, self.agent.task.action_dim)
            self.held = controller_to_env_action(self.agent.task, y) if explore else None
        self.left -= 1
        if not self.mirrored:
            return self.agent.act(obs, self.held)
        return self.agent.act(obs[:, ::-1], self.held) * self.reflect


def play_episode(env, policy: Policy, seed: int, frames: list | None = None) -> tuple[float, int]:
    """One episode of `env` (capped by the env) from env seed `seed` → (return, steps).
    With `frames`, each full-resolution rendered frame is appended to it."""
    obs, _ = env.reset(seed=int(seed))
    policy.reset(np.random.default_rng([int(seed), AGENT_STREAM]))
    total, steps = 0.0, 0
    while True:
        if frames is not None:
            frames.append(env.render())
        obs, reward, terminated, truncated, _ = env.step(policy.act(obs))
        total += reward
        steps += 1
        if terminated or truncated:
            return total, steps
