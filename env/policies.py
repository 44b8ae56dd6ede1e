"""The original's data-collection policies (ORIGINAL.md §4.1, §4.2) and C's output → env action mapping.

A policy is built per episode from an explicit `np.random.Generator`; calling it with the step index
returns the env action for that step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from env.tasks import Task

OpenLoopPolicy = Callable[[int], np.ndarray]
"""A random policy that ignores observations: step index t → action float32 [action_dim]."""


def controller_to_env_action(task: Task, y: np.ndarray) -> np.ndarray:
    """C's tanh outputs y: float [..., action_dim] → the action the env takes and the episode files store,
    float32 [..., action_dim].

    Car: steer = y0, gas = (y1 + 1) / 2, brake = clip(y2, 0, 1). Doom: a = y0 (the env thresholds it).
    """
    y = np.asarray(y, dtype=np.float32)
    if task.action_mapping == "car":
        return np.stack([y[..., 0], (y[..., 1] + 1.0) / 2.0, np.clip(y[..., 2], 0.0, 1.0)], axis=-1)
    if task.action_mapping == "left_right":
        return y.copy()
    raise ValueError(f"unknown action mapping {task.action_mapping!r}")


def cauchy_controller(task: Task, rng: np.random.Generator) -> OpenLoopPolicy:
    """The car's random policy: a controller with Cauchy(0, s) weights, s ~ U(0, 0.01), on noise features.

    The original gives V and M near-zero random weights, so z ≈ N(0, I) noise and h ≈ 0; only the
    z-part of the weight matrix and the bias matter. Each step: a = map(tanh(z·W + b)), z ~ N(0, I).
    """
    s = rng.uniform(0.0, 0.01)
    bias = rng.standard_cauchy(task.action_dim) * s
    weight = rng.standard_cauchy((task.z_size, task.action_dim)) * s

    def act(t: int) -> np.ndarray:
        z = rng.standard_normal(task.z_size)
        return controller_to_env_action(task, np.tanh(z @ weight + bias))

    return act


def repeat_uniform(task: Task, rng: np.random.Generator) -> OpenLoopPolicy:
    """Doom's random policy: a ~ U(-1, 1), redrawn when t % repeat == 0, with repeat redrawn in 1..10."""
    state = {"repeat": int(rng.integers(1, 11)), "a": 0.0}

    def act(t: int) -> np.ndarray:
        if t % state["repeat"] == 0:
            state["a"] = rng.uniform(-1.0, 1.0)
            state["repeat"] = int(rng.integers(1, 11))
        return np.full(task.action_dim, state["a"], dtype=np.float32)

    return act


def uniform(task: Task, rng: np.random.Generator) -> OpenLoopPolicy:
    """The paper's Doom random agent: C's output drawn from U(-1, 1) afresh every step."""

    def act(t: int) -> np.ndarray:
        return controller_to_env_action(task, rng.uniform(-1.0, 1.0, task.action_dim))

    return act


def constant(y: float):
    """A policy whose C output is `y` in every dimension, every step (Doom: -1 always left, 0 no-op, 1 right)."""

    def make(task: Task, rng: np.random.Generator) -> OpenLoopPolicy:
        action = controller_to_env_action(task, np.full(task.action_dim, y, np.float32))
        return lambda t: action

    return make


POLICIES = {
    "cauchy_controller": cauchy_controller,
    "repeat_uniform": repeat_uniform,
    "uniform": uniform,
    "noop": constant(0.0),
    "left": constant(-1.0),
    "right": constant(1.0),
}
"""The fixed policies by name: the data-collection and baseline policies, and constant ones for calibration."""


def make_policy(name: str, task: Task, rng: np.random.Generator) -> OpenLoopPolicy:
    """A fresh random policy `name` (a key of POLICIES) for one episode of `task`."""
    return POLICIES[name](task, rng)


def make_collection_policy(task: Task, rng: np.random.Generator) -> OpenLoopPolicy:
    """A fresh data-collection policy for one episode of `task`."""
    return make_policy(task.collect_policy, task, rng)
