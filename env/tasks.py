"""The task table: everything that differs between CarRacing and Doom TakeCover, in one place.

Every later stage reads its per-task constants from here (ORIGINAL.md §1, §2.1, §3.2, §3.3, §4, §6.3, §8).
Nothing else in the project hard-codes a per-task value.
"""

from __future__ import annotations

from dataclasses import dataclass

from env.common.cli import UserError

FRAME_SIZE = 64
"""V sees 64×64×3 uint8 frames for both tasks (ORIGINAL.md §2.1)."""


@dataclass(frozen=True)
class Task:
    """One row of the task table."""

    name: str
    env_id: str
    """CarRacing: the gymnasium id. Doom: the VizDoom scenario config file."""
    screen_resolution: str
    """Native frame the env renders (VizDoom ScreenResolution name; CarRacing's state pixels are 96×96)."""
    crop_rows: tuple[int, int]
    """Rows [start, stop) of the native frame kept before the resize to 64×64 (drops dashboard / status bar)."""
    render_hud: bool
    """Doom: draw the status bar (as the original) so the 3D view has the original shape; it is cropped away."""
    skill: int
    """Doom difficulty (ignored for CarRacing). 4 reproduces the paper's random baseline (README: deviations)."""
    start_time: int
    """Doom tics skipped before the first observation (original cfg: episode_start_time 14)."""
    action_dim: int
    """Width of the action the controller emits and the episode files store."""
    action_mapping: str
    """How C's tanh outputs become env actions: 'car' (steer, (x+1)/2 gas, clip brake) or 'left_right'."""
    mirror: tuple[float, ...]
    """Per-dimension signs that turn an env action into its mirror image, left and right swapped (car: steering;
    Doom: the one left/right dimension). Iterative training's `--mirror` plays C's mirror image with them."""
    max_steps: int
    """Episode cap in env steps (CarRacing's TimeLimit 1000; Doom's 2100-tic timeout)."""
    min_episode_length: int
    """Stage 1 keeps only episodes with more steps than this (Doom: MIN_LENGTH 100)."""
    collect_policy: str
    """Data-collection policy: 'cauchy_controller' (car) or 'repeat_uniform' (Doom), ORIGINAL.md §4.1-4.2."""
    baseline_policy: str
    """The random baseline stage 6 measures (`--random`): car 'cauchy_controller' (the paper's random car
    policy is its collection policy, §4.1); Doom 'uniform', an action drawn every step (the paper's 210 ± 108)."""
    collect_full_episode: bool
    """Stage 1 ignores the env's termination and plays to the cap (car: full_episode=True)."""
    z_size: int
    """V's latent size."""
    rnn_units: int
    """M's LSTM width."""
    rnn_extra_inputs: tuple[str, ...]
    """Inputs M takes besides [z, a]: Doom adds the restart flag."""
    rnn_predicts_done: bool
    """M's head has an extra done/death logit (Doom)."""
    rnn_batching: str
    """How stage 4 cuts `series/` into sequences: 'episodes' (car: a batch of whole episodes, zero
    initial state) or 'streams' (Doom: all episodes chained into parallel streams with restart flags,
    cut into chunks, the LSTM state carried from chunk to chunk)."""
    rnn_seq_len: int
    """Frames per training sequence: car 1000 (a whole episode: 999 inputs, 999 targets); Doom 500
    (a chunk: 499 inputs, 499 targets)."""
    rnn_updates: int
    """Stage 4's length in updates when batching 'episodes' (car: 4,000); 0 when counted in epochs."""
    rnn_epochs: int
    """Stage 4's length in passes over the streams when batching 'streams' (Doom: 400); 0 otherwise."""
    rnn_lr_decay: float
    """Per-step decay of M's learning rate towards 1e-5 (car 1.0 = constant; Doom 0.99999)."""
    controller_features: tuple[str, ...]
    """What C sees: car [z, h], Doom [z, c, h]."""
    controller_bias: bool
    """The car controller has a bias; the Doom one has none."""
    controller_trained_in: str
    """Where stage 5 trains C by default: 'real' env (car) or M's 'dream' (Doom)."""
    backends: tuple[str, ...]
    """The engines that play the task (env.wrappers.ENVS); the first is the reference that stage 6 scores on."""
    training_backend: str
    """The engine of stage 5's real-env rollouts unless `--backend` says otherwise (car: envpool, about 10×
    faster). Stage 1 plays the reference: the car's data collection plays on past a termination, as the
    original's did, and only gymnasium can."""

    @property
    def scoring_backend(self) -> str:
        """The engine stage 6 scores on unless `--backend` says otherwise: the reference."""
        return self.backends[0]


TASKS: dict[str, Task] = {
    "carracing": Task(
        name="carracing",
        env_id="CarRacing-v3",
        screen_resolution="96x96",
        crop_rows=(0, 84),
        render_hud=False,
        skill=0,
        start_time=0,
        action_dim=3,
        action_mapping="car",
        mirror=(-1.0, 1.0, 1.0),
        max_steps=1000,
        min_episode_length=0,
        collect_policy="cauchy_controller",
        baseline_policy="cauchy_controller",
        collect_full_episode=True,
        z_size=32,
        rnn_units=256,
        rnn_extra_inputs=(),
        rnn_predicts_done=False,
        rnn_batching="episodes",
        rnn_seq_len=1000,
        rnn_updates=4000,
        rnn_epochs=0,
        rnn_lr_decay=1.0,
        controller_features=("z", "h"),
        controller_bias=True,
        controller_trained_in="real",
        backends=("gymnasium", "envpool"),
        training_backend="envpool",
    ),
    "doom": Task(
        name="doom",
        env_id="take_cover.cfg",
        screen_resolution="RES_256X192",
        crop_rows=(0, 160),
        render_hud=True,
        skill=4,
        start_time=14,
        action_dim=1,
        action_mapping="left_right",
        mirror=(-1.0,),
        max_steps=2100,
        min_episode_length=100,
        collect_policy="repeat_uniform",
        baseline_policy="uniform",
        collect_full_episode=False,
        z_size=64,
        rnn_units=512,
        rnn_extra_inputs=("restart",),
        rnn_predicts_done=True,
        rnn_batching="streams",
        rnn_seq_len=500,
        rnn_updates=0,
        rnn_epochs=400,
        rnn_lr_decay=0.99999,
        controller_features=("z", "c", "h"),
        controller_bias=False,
        controller_trained_in="dream",
        backends=("vizdoom",),
        training_backend="vizdoom",
    ),
}


def get_task(name: str) -> Task:
    """The task table row for `name`; a UserError naming the valid tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None


def check_backend(task: Task, backend: str, default: str = "") -> str:
    """`backend`, or `default`, or the task's scoring backend when both are ''; a UserError if the task has
    no such backend."""
    backend = backend or default or task.scoring_backend
    if backend not in task.backends:
        raise UserError(f"{task.name} is played by {' or '.join(task.backends)}, not {backend!r}")
    return backend


def implied_settings(task: Task) -> dict[str, str]:
    """What a stage record written before `--backend` existed implies: the task's reference engine."""
    return {"backend": task.scoring_backend}
