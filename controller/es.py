"""CMA-ES through pycma behind the original's ask/tell interface (ORIGINAL.md §5.2), and episode seeds.

pycma minimises; the trainer maximises reward, so `tell` hands pycma the cost −reward + L2 with
L2 = weight_decay · mean(θ²) per candidate: large weights cost more. The original's copy of estool
adds the same term with the opposite sign (a bonus for large weights, fixed later in estool
bc082d3); that sign is a documented deviation (README). Everything else is pycma's default
(μ = popsize/2 weighted recombination, active CMA, full covariance).

Episode seeds are pure functions of their coordinates and live in disjoint ranges:

| seeds                                   | range                    |
|-----------------------------------------|--------------------------|
| training: (seed, generation, pair, episode) | [0, 2^30) hashed         |
| selection: the fixed set the mean is evaluated on every `eval_every` generations | 2^30 + k |
| test (stage 6): never seen in training  | 2^30 + 2^29 + offset + k |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cma
import numpy as np

TRAIN_RANGE = 2**30
SELECTION_BASE = 2**30
TEST_BASE = 2**30 + 2**29
TEST_RANGE = 2**31 - 1 - TEST_BASE


class Randn:
    """pycma's normal sampler drawn from its own seeded Generator, so the search pickles with its randomness."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng([seed, 0xC3A])

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


class CMAES:
    """ask/tell CMA-ES maximising reward: x0 = 0 (or `x0`), σ0 = `sigma_init`, `popsize` candidates per
    generation. The original's values are stage 5's defaults (controller.train.TrainConfig)."""

    def __init__(
        self,
        n_params: int,
        *,
        sigma_init: float,
        popsize: int,
        weight_decay: float,
        seed: int,
        x0: np.ndarray | None = None,
    ):
        self.n_params = n_params
        self.weight_decay = weight_decay
        start = np.zeros(n_params) if x0 is None else np.asarray(x0, np.float64)
        self.es = cma.CMAEvolutionStrategy(
            start, sigma_init, {"popsize": popsize, "seed": np.nan, "randn": Randn(seed), "verbose": -9}
        )
        self.solutions: np.ndarray | None = None

    def ask(self) -> np.ndarray:
        """The generation's candidates: float64 [popsize, n_params]."""
        self.solutions = np.asarray(self.es.ask(), dtype=np.float64)
        return self.solutions

    def costs(self, rewards: np.ndarray) -> np.ndarray:
        """rewards float [popsize] → pycma's costs: −reward + weight_decay · mean(θ²) per candidate."""
        l2 = self.weight_decay * np.mean(self.solutions**2, axis=1)
        return -np.asarray(rewards, dtype=np.float64) + l2

    def tell(self, rewards: np.ndarray) -> None:
        """Update the search with the rewards of the candidates of the last `ask`."""
        if self.solutions is None:
            raise RuntimeError("tell() before ask()")
        self.es.tell(list(self.solutions), self.costs(rewards).tolist())
        self.solutions = None

    @property
    def mean(self) -> np.ndarray:
        """The distribution mean (pycma's xfavorite; the original's current_param): float64 [n_params]."""
        return np.asarray(self.es.result.xfavorite, dtype=np.float64)

    @property
    def sigma(self) -> float:
        """The mean per-coordinate standard deviation (the original's rms_stdev)."""
        return float(np.mean(self.es.result.stds))


@dataclass
class SearchState:
    """Everything a resumed search needs; stage 5 pickles it whole into checkpoint.pkl after every generation."""

    generation: int
    es: CMAES
    history: list[dict[str, Any]]
    evaluations: list[dict[str, Any]]
    best: dict[str, Any] | None
    seconds: float
    settings: dict[str, Any]
    models: dict[str, str]
    np_global_state: Any = None


def training_seeds(seed: int, generation: int, popsize: int, episodes: int, antithetic: bool) -> np.ndarray:
    """Env seeds int64 [popsize, episodes] of one generation; with `antithetic`, candidates i and
    i + popsize/2 share seeds (common random numbers, as the original)."""
    pairs = popsize // 2 if antithetic and popsize % 2 == 0 else popsize
    seeds = (
        np.array(
            [
                np.random.SeedSequence([seed, generation, pair]).generate_state(episodes, np.uint32)
                for pair in range(pairs)
            ],
            dtype=np.int64,
        )
        % TRAIN_RANGE
    )
    return np.concatenate([seeds] * (popsize // pairs))


def selection_seeds(episodes: int) -> np.ndarray:
    """The fixed env seeds int64 [episodes] of the periodic evaluation of the mean (original: 1,024)."""
    return SELECTION_BASE + np.arange(episodes, dtype=np.int64)


def heldout_seeds(offset: int, episodes: int) -> np.ndarray:
    """Stage 6's env seeds int64 [episodes], disjoint from every training and selection seed."""
    if offset < 0 or offset + episodes > TEST_RANGE:
        raise ValueError(f"test seeds must lie in [0, {TEST_RANGE}), got offset {offset} + {episodes} episodes")
    return TEST_BASE + offset + np.arange(episodes, dtype=np.int64)
