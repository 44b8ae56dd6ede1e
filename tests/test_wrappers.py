"""Both tasks' environments, the car's on both backends: gymnasium API conformance, seeding, frame crop/resize,
Doom's action mapping."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from env.tasks import get_task
from env.wrappers import DOOM_THRESHOLD, make_env, process_frame

CAR = get_task("carracing")
DOOM = get_task("doom")


@pytest.fixture(scope="module", params=CAR.backends)
def car_env(request):
    env = make_env(CAR, max_steps=40, backend=request.param)
    yield env
    env.close()


@pytest.fixture(scope="module")
def doom_env():
    env = make_env(DOOM, max_steps=60)
    yield env
    env.close()


def block_frame(height, width, crop_stop):
    """Top half of the kept rows colour A, bottom half colour B, the dropped rows pure blue."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[: crop_stop // 2] = (10, 200, 30)
    frame[crop_stop // 2 : crop_stop] = (250, 20, 100)
    frame[crop_stop:] = (0, 0, 255)
    return frame


@pytest.mark.parametrize("task,shape", [(CAR, (96, 96)), (DOOM, (192, 256))])
def test_crop_and_resize_of_a_hand_built_frame(task, shape):
    out = process_frame(block_frame(*shape, task.crop_rows[1]), task.crop_rows)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    # the colour boundary sits at the middle of the kept rows, i.e. at output row 32
    assert np.abs(out[:30].astype(int) - (10, 200, 30)).max() <= 1
    assert np.abs(out[34:].astype(int) - (250, 20, 100)).max() <= 1
    assert np.all(out[31, :, 1] < 200) and np.all(out[31, :, 1] > 20)  # rows at the boundary are a blend
    # nothing of the cropped-away rows (pure blue) leaks into the frame
    assert not np.any((out[..., 2] > 200) & (out[..., 0] < 50))


def test_carracing_passes_the_gymnasium_env_checker(car_env):
    check_env(car_env, skip_render_check=True)


def test_doom_passes_the_gymnasium_env_checker(doom_env):
    check_env(doom_env, skip_render_check=True)


@pytest.mark.parametrize("name", ["carracing", "doom"])
def test_same_seed_same_episode(name, car_env, doom_env):
    env = {"carracing": car_env, "doom": doom_env}[name]
    action = np.array([0.3, 0.6, 0.0], np.float32) if name == "carracing" else np.array([0.9], np.float32)
    runs = []
    for seed in (5, 5, 6):
        obs, _ = env.reset(seed=seed)
        frames = [obs]
        for _ in range(20):
            obs, *_ = env.step(action)
            frames.append(obs)
        runs.append(np.stack(frames))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_carracing_frame_is_the_cropped_state_pixels(car_env):
    obs, _ = car_env.reset(seed=3)
    raw = car_env.render()
    assert raw.shape == (96, 96, 3)
    np.testing.assert_array_equal(obs, process_frame(raw, (0, 84)))


def test_carracing_caps_and_full_episode_mode():
    env = make_env(CAR, max_steps=15, full_episode=True)
    env.reset(seed=1)
    steps = 0
    while True:
        # full throttle hard left: leaves the track, yet the episode runs to the cap
        _, reward, terminated, truncated, info = env.step(np.array([-1.0, 1.0, 0.0], np.float32))
        steps += 1
        assert not terminated and "env_terminated" in info
        if truncated:
            break
    env.close()
    assert steps == 15


def test_doom_action_mapping(doom_env):
    left, right, noop = doom_env._left, doom_env._right, doom_env._noop
    assert doom_env.buttons(-1.0) == left and doom_env.buttons(-DOOM_THRESHOLD - 1e-6) == left
    assert doom_env.buttons(1.0) == right and doom_env.buttons(DOOM_THRESHOLD + 1e-6) == right
    for a in (-DOOM_THRESHOLD, 0.0, 0.2, DOOM_THRESHOLD):
        assert doom_env.buttons(a) == noop
    assert left != right and sum(left) == sum(right) == 1 and sum(noop) == 0


def test_doom_pays_one_per_step_and_ends_on_death_or_cap():
    env = make_env(DOOM)  # the task's 2,100-step cap
    env.reset(seed=11)
    rewards, terminated, truncated = [], False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, _ = env.step(np.array([0.0], np.float32))  # stand still
        rewards.append(reward)
    env.close()
    assert terminated and not truncated  # standing still in TakeCover gets you killed well before 2,100
    assert rewards == [1.0] * len(rewards)
    assert 20 < len(rewards) < 2100
    assert obs.sum() == 0  # the terminal frame, as in the original, is blank

    short = make_env(DOOM, max_steps=25)
    short.reset(seed=11)
    for _ in range(25):
        _, _, terminated, truncated, _ = short.step(np.array([0.0], np.float32))
    short.close()
    assert truncated and not terminated
