"""Stage 1: episode files, determinism per (seed, i), resume, Doom's minimum length, bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from env import extract
from env.common.cli import UserError
from env.episodes import list_episodes, read_episode
from env.tasks import get_task
from env.wrappers import make_env
from tests.conftest import ROOT


def arrays(record):
    return [read_episode(p) for p in list_episodes(record)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


@pytest.fixture(scope="module")
def car_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("car")
    extract.main(
        [
            "--task",
            "carracing",
            "--episodes",
            "3",
            "--max-steps",
            "40",
            "--workers",
            "2",
            "--seed",
            "7",
            "--out",
            str(out),
        ]
    )
    return out


def test_car_episodes_are_valid_and_full_length(car_run):
    episodes = arrays(car_run / "record")
    assert len(episodes) == 3
    for ep in episodes:
        assert ep["obs"].shape == (40, 64, 64, 3) and ep["action"].shape == (40, 3)
        assert ep["action"].dtype == np.float32 and ep["reward"].dtype == np.float32
        assert np.all(ep["action"][:, 1:] >= 0)
    settings = json.loads((car_run / "record" / "config.json").read_text())["settings"]
    assert settings["task"] == "carracing" and settings["max_steps"] == 40


def test_obs_t_is_the_frame_before_action_t(car_run):
    """Replaying the stored actions from the stored env seed reproduces every stored frame."""
    ep = read_episode(list_episodes(car_run / "record")[1])
    env = make_env(get_task("carracing"), full_episode=True)
    obs, _ = env.reset(seed=int(ep["seed"]))
    for t in range(len(ep["obs"])):
        np.testing.assert_array_equal(obs, ep["obs"][t])
        obs, reward, *_ = env.step(ep["action"][t])
        assert reward == pytest.approx(ep["reward"][t])
    env.close()


def test_rerun_is_identical_and_resumes(car_run, tmp_path):
    before = arrays(car_run / "record")
    before_bytes = (car_run / "record" / "ep_000001.npz").read_bytes()
    # one worker instead of two, and episode 1 "lost" in a kill: the rerun rewrites it identically
    (car_run / "record" / "ep_000001.npz").unlink()
    (car_run / "record" / ".ep_000002.npz.x.tmp").write_bytes(b"partial")
    extract.main(
        [
            "--task",
            "carracing",
            "--episodes",
            "3",
            "--max-steps",
            "40",
            "--workers",
            "1",
            "--seed",
            "7",
            "--out",
            str(car_run),
        ]
    )
    assert_same(before, arrays(car_run / "record"))
    assert (car_run / "record" / "ep_000001.npz").read_bytes() == before_bytes
    assert not list((car_run / "record").glob(".*.tmp"))
    # a different seed gives different episodes
    extract.main(
        [
            "--task",
            "carracing",
            "--episodes",
            "1",
            "--max-steps",
            "40",
            "--workers",
            "1",
            "--seed",
            "8",
            "--out",
            str(tmp_path),
        ]
    )
    assert not np.array_equal(arrays(tmp_path / "record")[0]["obs"], before[0]["obs"])


def test_changed_settings_refuse_to_mix(car_run):
    with pytest.raises(UserError, match="--seed=7 \\(now 9\\)"):
        extract.main(
            ["--task", "carracing", "--episodes", "3", "--max-steps", "40", "--seed", "9", "--out", str(car_run)]
        )


def test_doom_keeps_only_episodes_longer_than_100_steps(tmp_path):
    extract.main(
        [
            "--task",
            "doom",
            "--episodes",
            "4",
            "--max-steps",
            "400",
            "--workers",
            "2",
            "--seed",
            "3",
            "--out",
            str(tmp_path),
        ]
    )
    episodes = arrays(tmp_path / "record")
    assert len(episodes) == 4
    for ep in episodes:
        length = len(ep["obs"])
        assert 100 < length <= 400
        assert ep["action"].shape == (length, 1) and np.all(np.abs(ep["action"]) <= 1)
        np.testing.assert_array_equal(ep["reward"], 1.0)
        assert not ep["done"][:-1].any()
        assert ep["done"][-1] == (length < 400)  # died, or hit the cap


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--task", "pong"], "unknown task 'pong'"),
        (["--episodes", "-2"], "--episodes must be at least 1"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--task", "doom", "--max-steps", "100"], "must exceed doom's minimum kept episode length 100"),
        (["--episodes", "lots"], "invalid int value"),
        (["--seed", "-1"], "--seed must be a non-negative integer below 2\\^32"),
        (["--seed", str(2**32)], "--seed must be a non-negative integer below 2\\^32"),
    ],
)
def test_bad_input_is_a_user_error(tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        extract.main(["--out", str(tmp_path)] + flags)


def test_command_line_errors_are_one_line_and_nonzero(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for flags in (["--task", "pong", "--out", str(tmp_path)], ["--out", str(blocker / "run")]):
        result = subprocess.run(
            [sys.executable, "-m", "env.extract", *flags], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
