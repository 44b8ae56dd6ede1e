"""Batches of episodes as jobs for worker processes: what a worker builds, runs, and sends back.

A job is a block of candidates (float64 parameter vectors) with the env seeds of their episodes;
its result holds every episode's return and length. A worker builds its environment and agent once
from a `RolloutSpec` (plain data, cheap to send), reading the exported V and M weights from disk.
On envpool's CarRacing (`LockstepRollouts`) and in M's dream (`DreamRollouts`) all of a job's
episodes are stepped together, with V, M and C batched across them; on gymnasium and VizDoom
(`Rollouts`) the episodes are played one after another.

An exception inside an episode (an env crash) does not stop the run: the worker logs it, rebuilds
its env and plays the episode again; a second failure scores the episode as failed (return NaN,
length 0) with a warning, and the trainer substitutes the generation's worst return for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import resource
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from controller.agent import AGENT_STREAM, Agent, BatchAgent, FixedPolicy, Policy, play_episode
from controller.model import BatchController, controller_shape, features
from env.policies import controller_to_env_action, make_policy
from env.tasks import check_backend, get_task
from env.wrappers import CarRacingBatch, make_env
from rnn.dream import TAU, DreamBatch
from rnn.twin import RNNTwin
from vae.twin import EncoderTwin

LOCKSTEP_EPISODES = 16
"""Episodes per lockstep job: a fixed size, so that a job's batch, and with it every float it rounds, does not
depend on the number of workers."""


@dataclass(frozen=True)
class RolloutSpec:
    """Everything a worker needs to build its env and agent."""

    run_dir: str
    task: str
    mode: str
    max_steps: int
    """Episode cap in env steps (the task's cap unless a run shortens it)."""
    policy: str = ""
    """Play this fixed policy (env.policies.POLICIES, e.g. the task's random baseline) instead of C; '' = C."""
    env: str = "real"
    """'real': the task's environment; 'dream': M as the environment (rnn/dream.py)."""
    tau: float = TAU
    """The dream's temperature."""
    dream_done: str = "threshold"
    """How M's done logit ends a dream episode (rnn.dream.DONE_RULES)."""
    backend: str = ""
    """The engine of the real env (env.wrappers.ENVS); '' = the task's scoring backend."""
    worlds: tuple[str, ...] = ()
    """Run directories whose Ms are dreams too (`controller.train --worlds`): a job's episode column e plays in
    dream e mod (1 + len(worlds)), 0 being `run_dir`'s M; C's features always come from `run_dir`'s M."""


@dataclass
class Job:
    """k candidates' episodes: params float64 [k, n_params] (ignored for the random policy), seeds int64 [k, E],
    played in `env` ('' = the spec's; 'real' or 'dream')."""

    params: np.ndarray
    seeds: np.ndarray
    env: str = ""


@dataclass
class JobResult:
    """returns float64 [k, E] (NaN = failed episode), lengths int64 [k, E], one line per failure, and the
    worker process's peak resident memory so far (MB)."""

    returns: np.ndarray
    lengths: np.ndarray
    failures: list[str] = field(default_factory=list)
    peak_rss_mb: float = 0.0


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Rollouts:
    """A worker's env and agent; `run(job)` plays every episode of a job in the real environment."""

    def __init__(self, spec: RolloutSpec):
        self.spec = spec
        self.task = get_task(spec.task)
        if spec.policy:
            self.policy: Policy = FixedPolicy(self.task, spec.policy)
            self.agent = None
        else:
            self.agent = Agent.load(Path(spec.run_dir), self.task, controller_shape(self.task, spec.mode))
            self.policy = self.agent
        self.env = None

    def _env(self):
        if self.env is None:
            self.env = make_env(self.task, max_steps=self.spec.max_steps, backend=self.spec.backend)
        return self.env

    def _rebuild_env(self) -> None:
        if self.env is not None:
            with contextlib.suppress(Exception):  # a crashed env may fail to close too; it is dropped either way
                self.env.close()
        self.env = None

    def episode(self, seed: int) -> tuple[float, int, str]:
        """Play one episode with the current policy: (return, steps, '') or (NaN, 0, why) after two failures."""
        for attempt in (1, 2):
            try:
                total, steps = play_episode(self._env(), self.policy, seed)
                return total, steps, ""
            except Exception as err:
                why = f"episode with seed {seed}: {type(err).__name__}: {err}"
                self._rebuild_env()
                if attempt == 1:
                    print(f"warning: {why}; env rebuilt, retrying once", file=sys.stderr, flush=True)
                else:
                    print(f"warning: {why} again; scored as failed", file=sys.stderr, flush=True)
                    return float("nan"), 0, why + "\n" + traceback.format_exc(limit=-3)
        raise AssertionError("unreachable")

    def run(self, job: Job) -> JobResult:
        """Play every (candidate, seed) episode of `job`."""
        seeds = np.asarray(job.seeds, dtype=np.int64)
        returns = np.zeros(seeds.shape, np.float64)
        lengths = np.zeros(seeds.shape, np.int64)
        failures = []
        for i in range(seeds.shape[0]):
            if self.agent is not None:
                self.agent.set_params(job.params[i])
            for e in range(seeds.shape[1]):
                returns[i, e], lengths[i, e], why = self.episode(int(seeds[i, e]))
                if why:
                    failures.append(why)
        return JobResult(returns, lengths, failures, peak_rss_mb())

    def close(self) -> None:
        self._rebuild_env()


class LockstepRollouts:
    """A worker's agent; `run(job)` plays all of a job's real episodes together on envpool's CarRacing: one
    batched env step, V, C and M call per step for every running episode (`BatchAgent`). Each episode plays
    as it would alone, from its own seed and generators (up to float rounding, which depends on the batch's
    size). An exception plays the whole job once more; a second one scores its episodes as failed."""

    def __init__(self, spec: RolloutSpec):
        self.spec = spec
        self.task = get_task(spec.task)
        self.agent = None
        if not spec.policy:
            shape = controller_shape(self.task, spec.mode)
            run_dir = Path(spec.run_dir)
            rnn = RNNTwin.load(run_dir / "rnn", self.task) if shape.uses_m else None
            self.agent = BatchAgent(self.task, shape, EncoderTwin.load(run_dir / "vae", self.task), rnn)

    def play(self, job: Job) -> tuple[np.ndarray, np.ndarray]:
        """Every (candidate, seed) episode of `job` → (returns float64 [k, E], lengths int64 [k, E])."""
        seeds = np.asarray(job.seeds, dtype=np.int64)
        flat = seeds.reshape(-1)
        batch = CarRacingBatch(self.task, flat, self.spec.max_steps)
        try:
            obs = batch.reset()
            if self.agent is not None:
                self.agent.reset(job.params, flat, np.repeat(np.arange(seeds.shape[0]), seeds.shape[1]))
            else:
                policies = [
                    make_policy(self.spec.policy, self.task, np.random.default_rng([int(s), AGENT_STREAM]))
                    for s in flat
                ]
            returns = np.zeros(len(flat), np.float64)
            lengths = np.zeros(len(flat), np.int64)
            while len(batch.active):
                active = batch.active
                if self.agent is not None:
                    action = self.agent.act(obs, active)
                else:
                    action = np.stack([policies[b](int(lengths[b])) for b in active])
                obs, reward, terminated, truncated = batch.step(action)
                returns[active] += reward
                lengths[active] += 1
                obs = obs[~(terminated | truncated)]
        finally:
            batch.close()
        return returns.reshape(seeds.shape), lengths.reshape(seeds.shape)

    def run(self, job: Job) -> JobResult:
        for attempt in (1, 2):
            try:
                return JobResult(*self.play(job), [], peak_rss_mb())
            except Exception as err:
                why = f"job of {np.size(job.seeds)} episodes: {type(err).__name__}: {err}"
                if attempt == 1:
                    print(f"warning: {why}; playing it again", file=sys.stderr, flush=True)
                else:
                    print(f"warning: {why} again; its episodes scored as failed", file=sys.stderr, flush=True)
                    nan = np.full(np.shape(job.seeds), np.nan)
                    return JobResult(nan, np.zeros(np.shape(job.seeds), np.int64), [why], peak_rss_mb())
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Nothing to release: each job's envs close when it ends."""


class DreamRollouts:
    """A worker's M; `run(job)` plays all of a job's episodes in M's dream as one vectorised batch (with
    `spec.worlds`, one batch per dream)."""

    def __init__(self, spec: RolloutSpec):
        self.spec = spec
        self.task = get_task(spec.task)
        self.shape = controller_shape(self.task, spec.mode)
        self.rnn = RNNTwin.load(Path(spec.run_dir) / "rnn", self.task)
        self.worlds = [self.rnn] + [RNNTwin.load(Path(w) / "rnn", self.task) for w in spec.worlds]

    def play(self, params: np.ndarray, seeds: np.ndarray, world: RNNTwin) -> tuple[np.ndarray, np.ndarray]:
        """Candidates params [k, P] on seeds [k, E] in `world`'s dream → (returns, lengths) [k, E]."""
        k, episodes = seeds.shape
        dream = DreamBatch(
            self.rnn, seeds.reshape(-1), self.spec.tau, self.spec.max_steps, self.spec.dream_done, world=world
        )
        if self.spec.policy:
            policies = [
                make_policy(self.spec.policy, self.task, np.random.default_rng([int(s), AGENT_STREAM]))
                for s in seeds.reshape(-1)
            ]
            while not dream.done:
                dream.step(np.stack([policies[b](dream.t) for b in dream.active]))
        else:
            controllers = BatchController(self.shape, params)
            which = np.repeat(np.arange(k), episodes)
            while not dream.done:
                y = controllers(features(self.shape, dream.z, dream.h, dream.c), which[dream.active])
                dream.step(controller_to_env_action(self.task, y))
        return dream.returns.reshape(k, episodes), dream.lengths.reshape(k, episodes)

    def run(self, job: Job) -> JobResult:
        """Every (candidate, seed) episode of `job`, stepped together until the last one ends."""
        seeds = np.asarray(job.seeds, dtype=np.int64)
        returns = np.zeros(seeds.shape, np.float64)
        lengths = np.zeros(seeds.shape, np.int64)
        for w, world in enumerate(self.worlds):
            columns = np.arange(w, seeds.shape[1], len(self.worlds))
            if len(columns):
                returns[:, columns], lengths[:, columns] = self.play(job.params, seeds[:, columns], world)
        return JobResult(returns, lengths, [], peak_rss_mb())

    def close(self) -> None:
        """Nothing to release: the dream holds no env."""


def in_lockstep(env: str, backend: str) -> bool:
    """Whether episodes in `env` ('real' or 'dream') on the resolved `backend` are played in lockstep (envpool)."""
    return env == "real" and backend == "envpool"


def make_rollouts(spec: RolloutSpec) -> Rollouts | LockstepRollouts | DreamRollouts:
    """Dream episodes as one batch, envpool's episodes in lockstep, or other real-env episodes one by one."""
    if spec.env == "dream":
        return DreamRollouts(spec)
    if in_lockstep(spec.env, check_backend(get_task(spec.task), spec.backend)):
        return LockstepRollouts(spec)
    return Rollouts(spec)


class JobRunner:
    """What a worker process (or rank) holds: runs each job in the env it names — the spec's rollouts, and the
    other env's, built on a job's first request (a dream-trained controller evaluated in the real env)."""

    def __init__(self, spec: RolloutSpec):
        self.spec = spec
        self.rollouts = {spec.env: make_rollouts(spec)}

    def run(self, job: Job) -> JobResult:
        env = job.env or self.spec.env
        if env not in self.rollouts:
            self.rollouts[env] = make_rollouts(dataclasses.replace(self.spec, env=env))
        return self.rollouts[env].run(job)

    def close(self) -> None:
        for rollouts in self.rollouts.values():
            rollouts.close()
