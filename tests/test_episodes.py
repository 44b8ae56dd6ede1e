"""The episode format's writer and reader: round trip, validation naming file and field, tf.data streams."""

import numpy as np
import pytest

from env.common.cli import UserError
from env.episodes import FormatError, episode_path, frame_dataset, list_episodes, read_episode, write_episode
from env.tasks import get_task

CAR = get_task("carracing")
DOOM = get_task("doom")


def fake_episode(length, action_dim=3, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        obs=rng.integers(0, 256, (length, 64, 64, 3), dtype=np.uint8),
        action=rng.uniform(-1, 1, (length, action_dim)).astype(np.float32),
        reward=rng.normal(size=length).astype(np.float32),
        done=np.arange(length) == length - 1,
    )


def test_round_trip(tmp_path):
    ep = fake_episode(7)
    path = episode_path(tmp_path, 3)
    assert path.name == "ep_000003.npz"
    write_episode(path, CAR, seed=42, **ep)
    back = read_episode(path, CAR)
    for key, value in ep.items():
        np.testing.assert_array_equal(back[key], value)
        assert back[key].dtype == value.dtype
    assert str(back["task"]) == "carracing" and int(back["seed"]) == 42
    assert not list(tmp_path.glob(".*.tmp"))


def test_writer_refuses_bad_arrays(tmp_path):
    ep = fake_episode(5)
    with pytest.raises(FormatError, match="'obs' has dtype float32"):
        write_episode(tmp_path / "a.npz", CAR, seed=0, **{**ep, "obs": ep["obs"].astype(np.float32)})
    with pytest.raises(FormatError, match="'reward' has length 4"):
        write_episode(tmp_path / "a.npz", CAR, seed=0, **{**ep, "reward": ep["reward"][:4]})
    with pytest.raises(FormatError, match="'action' has shape"):
        write_episode(tmp_path / "a.npz", DOOM, seed=0, **ep)  # Doom actions are [T, 1]
    assert not list(tmp_path.iterdir())


def test_truncated_file_is_reported_with_its_name(tmp_path):
    path = episode_path(tmp_path, 0)
    write_episode(path, CAR, seed=0, **fake_episode(20))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match=f"{path}: corrupt or truncated"):
        read_episode(path, CAR)


def test_garbage_and_missing_files(tmp_path):
    path = tmp_path / "ep_000000.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(FormatError, match="ep_000000.npz: corrupt"):
        read_episode(path)
    with pytest.raises(FormatError, match="missing"):
        read_episode(tmp_path / "ep_000009.npz")


def test_bit_flip_inside_compressed_data_is_caught(tmp_path):
    path = episode_path(tmp_path, 0)
    write_episode(path, CAR, seed=0, **fake_episode(30))
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="corrupt or truncated"):
        read_episode(path, CAR)


def test_missing_field_and_wrong_task_are_named(tmp_path):
    ep = fake_episode(4)
    path = tmp_path / "ep_000001.npz"
    np.savez(path, obs=ep["obs"], action=ep["action"], reward=ep["reward"], task=np.str_("carracing"), seed=np.int64(0))
    with pytest.raises(FormatError, match="field 'done' is missing"):
        read_episode(path, CAR)
    write_episode(path, CAR, seed=0, **ep)
    with pytest.raises(FormatError, match="recorded for task 'carracing', not 'doom'"):
        read_episode(path, DOOM)


def test_list_episodes(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        list_episodes(tmp_path / "record")
    with pytest.raises(UserError, match="contains no episode files"):
        list_episodes(tmp_path)
    for i in (2, 0, 1):
        write_episode(episode_path(tmp_path, i), CAR, seed=i, **fake_episode(3))
    (tmp_path / "config.json").write_text("{}")
    assert [p.name for p in list_episodes(tmp_path)] == ["ep_000000.npz", "ep_000001.npz", "ep_000002.npz"]


def test_frame_dataset_yields_every_frame_once_per_pass(tmp_path):
    lengths = [13, 7, 21, 9]
    for i, n in enumerate(lengths):
        ep = fake_episode(n, seed=i)
        ep["obs"][:] = 0
        ep["obs"][:, 0, 0, 0] = i  # tag: episode
        ep["obs"][:, 0, 0, 1] = np.arange(n)  # tag: step
        write_episode(episode_path(tmp_path, i), CAR, seed=i, **ep)
    ds = frame_dataset(list_episodes(tmp_path), CAR, batch_size=5, seed=0, shuffle_buffer=16)
    passes = []
    for _ in range(2):
        batches = [b.numpy() for b in ds]
        assert all(b.shape == (5, 64, 64, 3) and b.dtype == np.uint8 for b in batches)
        tags = [tuple(f[0, 0, :2]) for b in batches for f in b]
        assert len(tags) == sum(lengths) // 5 * 5  # last partial batch dropped
        assert len(set(tags)) == len(tags)  # no frame twice
        passes.append(tags)
    assert passes[0] != passes[1]  # reshuffled every pass
    # frames of different episodes are mixed within the first batches
    assert len({t[0] for t in passes[0][:10]}) > 1
