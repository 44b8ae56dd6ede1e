"""The real environments of both tasks, yielding V's 64×64×3 uint8 frames (ORIGINAL.md §2.1, §6.3, §8).

Each task is played by one or more backends (the task table's `backends`): CarRacing by gymnasium's
`CarRacing-v3` (Python, the reference our scores are measured on) or by envpool's C++ port of it
(about 10× faster, for training rollouts); Doom by VizDoom. All are headless (no X server) and
seedable: `reset(seed=s)` makes the episode a deterministic function of `s` (both car backends derive
their track seed from `s` the same way, though their track generators differ), and later seed-less
resets continue the same random stream. `CarRacingBatch` steps many envpool episodes together.
"""

from __future__ import annotations

import os
import signal
import warnings
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from PIL import Image

from env.common.processes import end_engine, engine_children
from env.tasks import FRAME_SIZE, Task, check_backend

OBS_SPACE = spaces.Box(0, 255, (FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
DOOM_THRESHOLD = 1.0 / 3.0
"""C's output a < -1/3 moves left, a > 1/3 moves right, otherwise no-op (ORIGINAL.md §4.2)."""


def process_frame(frame: np.ndarray, crop_rows: tuple[int, int]) -> np.ndarray:
    """frame: uint8 [H, W, 3] → uint8 [64, 64, 3]: keep rows crop_rows, bilinear resize (Pillow)."""
    start, stop = crop_rows
    cropped = np.ascontiguousarray(frame[start:stop])
    image = Image.fromarray(cropped).resize((FRAME_SIZE, FRAME_SIZE), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def process_frames(frames: np.ndarray, crop_rows: tuple[int, int]) -> np.ndarray:
    """frames: uint8 [B, H, W, 3] → uint8 [B, 64, 64, 3], each as `process_frame`."""
    out = np.empty((len(frames), FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    for i, frame in enumerate(frames):
        out[i] = process_frame(frame, crop_rows)
    return out


def track_seed(rng: np.random.Generator) -> int:
    """The car's track seed for an episode, drawn from the episode's generator (default_rng(s) for seed s)."""
    return int(rng.integers(2**31 - 1))


class CarRacingEnv(gymnasium.Env):
    """gymnasium CarRacing-v3 (continuous) with frames cropped to rows 0–83 and resized to 64×64.

    With `full_episode=True` (the original's data collection) the env's termination is reported in
    `info["env_terminated"]` and the episode runs on to the step cap, as WME's `CarRacingWrapper` did.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: Task, max_steps: int | None = None, full_episode: bool = False):
        self.task = task
        self.max_steps = task.max_steps if max_steps is None else max_steps
        self.full_episode = full_episode
        self._env = gymnasium.make(task.env_id, continuous=True, disable_env_checker=True).unwrapped
        self.observation_space = OBS_SPACE
        self.action_space = self._env.action_space
        self.render_mode = "rgb_array"
        self._raw: np.ndarray | None = None
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        raw, info = self._env.reset(seed=track_seed(self.np_random), options=options)
        self._raw, self._t = raw, 0
        return process_frame(raw, self.task.crop_rows), info

    def step(self, action):
        raw, reward, terminated, truncated, info = self._env.step(np.asarray(action, dtype=np.float32))
        self._raw = raw
        self._t += 1
        if self.full_episode:
            info["env_terminated"] = terminated
            terminated = False
        truncated = bool(truncated or self._t >= self.max_steps)
        return process_frame(raw, self.task.crop_rows), float(reward), bool(terminated), truncated, info

    def render(self) -> np.ndarray | None:
        """The last full 96×96 state-pixel frame."""
        return self._raw

    def close(self) -> None:
        self._env.close()


def _start(game: Any) -> dict[int, str]:
    """`game.init()` → the VizDoom engine process it started (pid → instance id); if init fails, the engine is ended.

    SIGINT and SIGTERM are blocked meanwhile, and the engine inherits that mask: a signal sent to the whole process
    group (Ctrl-C, `timeout`) then reaches only the owner, which closes the engine (one hit during init dies, and
    the owner crashes inside `init()`)."""
    before = engine_children()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        game.init()
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        try:
            game.close()
        finally:
            for pid, instance in engine_children().items():
                if pid not in before:
                    end_engine(pid, instance, timeout=0.0)
        raise
    return {pid: instance for pid, instance in engine_children().items() if pid not in before}


class DoomTakeCoverEnv(gymnasium.Env):
    """VizDoom TakeCover as the original ran it: one tic per step, reward 1 per step alive, 2,100-step cap.

    Action: C's continuous a ∈ [-1, 1] (shape (1,)), mapped to MOVE_LEFT / MOVE_RIGHT / no-op.
    The status bar is drawn (as in the original) and cropped away, so the 3D view keeps its shape.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: Task, max_steps: int | None = None, full_episode: bool = False):
        import vizdoom

        if full_episode:
            raise ValueError("Doom episodes end on death; full_episode is not supported")
        self.task = task
        self.max_steps = task.max_steps if max_steps is None else max_steps
        game = vizdoom.DoomGame()
        game.load_config(os.path.join(vizdoom.scenarios_path, task.env_id))
        game.set_screen_resolution(getattr(vizdoom.ScreenResolution, task.screen_resolution))
        game.set_screen_format(vizdoom.ScreenFormat.RGB24)
        game.set_render_hud(task.render_hud)
        game.set_doom_skill(task.skill)
        game.set_episode_start_time(task.start_time)
        game.set_episode_timeout(0)
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_mode(vizdoom.Mode.PLAYER)
        self._game = game
        # The engine makes ./_vizdoom/ on its first start in a directory; two workers starting at once both try,
        # and the one that loses the race dies (SIGSEGV). Made here first, no engine has to.
        os.makedirs("_vizdoom", exist_ok=True)
        self._engines = _start(game)
        names = [str(b).split(".")[-1] for b in game.get_available_buttons()]
        self._left = [float(n == "MOVE_LEFT") for n in names]
        self._right = [float(n == "MOVE_RIGHT") for n in names]
        self._noop = [0.0] * len(names)
        if sum(self._left) != 1 or sum(self._right) != 1:
            self.close()
            raise RuntimeError(f"{task.env_id}: expected MOVE_LEFT and MOVE_RIGHT buttons, got {names}")
        self.observation_space = OBS_SPACE
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.render_mode = "rgb_array"
        self._raw: np.ndarray | None = None
        self._t = 0

    def _frame(self) -> np.ndarray:
        self._raw = self._game.get_state().screen_buffer
        return process_frame(self._raw, self.task.crop_rows)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._game.set_seed(int(self.np_random.integers(2**31 - 1)))
        self._game.new_episode()
        self._t = 0
        return self._frame(), {}

    def buttons(self, a: float) -> list[float]:
        """C's output a → the button vector (MOVE_LEFT if a < -1/3, MOVE_RIGHT if a > 1/3, else none)."""
        if a < -DOOM_THRESHOLD:
            return self._left
        if a > DOOM_THRESHOLD:
            return self._right
        return self._noop

    def step(self, action):
        a = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        reward = self._game.make_action(self.buttons(a), 1)
        self._t += 1
        terminated = self._game.is_episode_finished()
        truncated = (not terminated) and self._t >= self.max_steps
        obs = np.zeros(OBS_SPACE.shape, np.uint8) if terminated else self._frame()
        return obs, float(reward), bool(terminated), bool(truncated), {}

    def render(self) -> np.ndarray | None:
        """The last full screen frame (with status bar)."""
        return self._raw

    def close(self) -> None:
        """Close the game, and make sure its engine process is gone (SIGKILLed if `DoomGame.close()` left it)."""
        try:
            self._game.close()
        finally:
            for pid, instance in self._engines.items():
                end_engine(pid, instance)
            self._engines = {}


def envpool_car(task: Task, track_seeds: list[int], max_steps: int):
    """envpool's CarRacing-v3, one env per track seed, stepped in this thread's call (one worker thread)."""
    import envpool

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium's Box precision notes on envpool's float64 bounds
        return envpool.make_gymnasium(
            task.env_id,
            num_envs=len(track_seeds),
            batch_size=len(track_seeds),
            num_threads=1,
            seed=0,
            env_seed=[int(s) for s in track_seeds],
            max_episode_steps=max_steps,
        )


class CarRacingBatch:
    """Episodes of envpool's CarRacing-v3 stepped in lockstep: episode i on the track of its seed `seeds[i]`
    (derived as `reset(seed=seeds[i])` derives it; or `tracks[i]` given), all stepped by one call; finished
    episodes leave the batch.

    `reset()` → frames uint8 [B, 64, 64, 3]; `step(actions [running, 3])` → (frames, rewards, terminated,
    truncated) of the running episodes, in `active` order before the step; then `active` drops those that
    ended.
    """

    def __init__(self, task: Task, seeds, max_steps: int | None = None, tracks: list[int] | None = None):
        self.task = task
        self.max_steps = task.max_steps if max_steps is None else max_steps
        self.seeds = np.asarray(seeds, np.int64).reshape(-1)
        if tracks is None:
            tracks = [track_seed(np.random.default_rng(int(s))) for s in self.seeds]
        self._pool = envpool_car(task, tracks, self.max_steps)
        self.active = np.arange(len(self.seeds))
        self.raw: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        raw, _ = self._pool.reset()
        self.raw, self.active = raw, np.arange(len(self.seeds))
        return process_frames(raw, self.task.crop_rows)

    def step(self, actions: np.ndarray):
        actions = np.asarray(actions, np.float32).reshape(len(self.active), -1)
        raw, reward, terminated, truncated, info = self._pool.step(actions, self.active)
        order = np.argsort(np.argsort(self.active))  # envpool answers in env-id order
        position = np.argsort(info["env_id"])[order]
        raw, reward = raw[position], reward[position].astype(np.float64)
        terminated, truncated = terminated[position].astype(bool), truncated[position].astype(bool)
        self.raw = raw
        self.active = self.active[~(terminated | truncated)]
        return process_frames(raw, self.task.crop_rows), reward, terminated, truncated

    def close(self) -> None:
        self._pool.close()


class EnvpoolCarRacingEnv(gymnasium.Env):
    """envpool's CarRacing-v3 (C++), one episode at a time, with `CarRacingEnv`'s contract: the same crop and
    resize, action mapping, step cap and seeding. It has no `full_episode` mode: envpool resets an env once it
    terminates (off the playfield, which about half of the random data-collection episodes reach), so it
    cannot play on to the cap as stage 1 does."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: Task, max_steps: int | None = None, full_episode: bool = False):
        if full_episode:
            raise ValueError("envpool ends an episode where the env terminates; full_episode is not supported")
        self.task = task
        self.max_steps = task.max_steps if max_steps is None else max_steps
        self.observation_space = OBS_SPACE
        self.action_space = spaces.Box(np.array([-1, 0, 0], np.float32), np.array([1, 1, 1], np.float32))
        self.render_mode = "rgb_array"
        self._batch: CarRacingBatch | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.close()
        self._batch = CarRacingBatch(self.task, [0], self.max_steps, tracks=[track_seed(self.np_random)])
        return self._batch.reset()[0], {}

    def step(self, action):
        if self._batch is None or not len(self._batch.active):
            raise RuntimeError("step() after the episode ended: call reset()")
        obs, reward, terminated, truncated = self._batch.step(np.asarray(action, np.float32)[None])
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), {}

    def render(self) -> np.ndarray | None:
        """The last full 96×96 state-pixel frame."""
        return None if self._batch is None else self._batch.raw[0]

    def close(self) -> None:
        if self._batch is not None:
            self._batch.close()
            self._batch = None


ENVS: dict[str, type[gymnasium.Env]] = {
    "gymnasium": CarRacingEnv,
    "envpool": EnvpoolCarRacingEnv,
    "vizdoom": DoomTakeCoverEnv,
}
"""Backend name → the env class that plays it one episode at a time."""
FULL_EPISODE_BACKENDS = ("gymnasium",)
"""The car backends that play on past the env's termination (`full_episode`), as stage 1 does."""


def make_env(task: Task, max_steps: int | None = None, full_episode: bool = False, backend: str = "") -> gymnasium.Env:
    """The real environment for `task` (its episode cap, or `max_steps` if given) on `backend` ('' = the
    task's scoring backend)."""
    return ENVS[check_backend(task, backend)](task, max_steps=max_steps, full_episode=full_episode)
