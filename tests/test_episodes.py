"""The episode format's writer and reader: round trip, validation naming file and field, tf.data streams."""

import zipfile
import zlib

import numpy as np
import pytest

from env.common.cli import UserError
from env.episodes import (
    FormatError,
    convert,
    episode_path,
    first_bad_episode,
    frame_dataset,
    frame_locations,
    list_episodes,
    read_episode,
    write_episode,
)
from env.episodes import main as episodes_main
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


def test_frames_are_one_zlib_stream_in_a_stored_member(tmp_path):
    ep = fake_episode(12)
    ep["obs"][:6] = 90  # six flat frames: compressible, unlike the noise of the rest
    path = episode_path(tmp_path, 0)
    write_episode(path, CAR, seed=0, **ep)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("obs.zlib")
        assert info.compress_type == zipfile.ZIP_STORED and "obs.npy" not in zf.namelist()
        stream = zf.read("obs.zlib")
    raw = zlib.decompress(stream)
    np.testing.assert_array_equal(np.frombuffer(raw, np.uint8).reshape(12, 64, 64, 3), ep["obs"])
    assert len(stream) < 0.6 * ep["obs"].nbytes  # the flat half compresses to almost nothing
    offsets, sizes = frame_locations([path])
    assert path.read_bytes()[offsets[0] : offsets[0] + sizes[0]] == stream


def test_older_layout_is_read_refused_by_the_stream_and_converted(tmp_path):
    ep = fake_episode(9)
    path = episode_path(tmp_path, 0)
    np.savez(path, **ep, task=np.str_("carracing"), seed=np.int64(5))  # frames as an uncompressed obs.npy
    np.testing.assert_array_equal(read_episode(path, CAR)["obs"], ep["obs"])
    with pytest.raises(UserError, match=r"ep_000000.npz: episode file of the older layout .*--convert"):
        frame_dataset([path], CAR, batch_size=3, seed=0)
    assert episodes_main(["--convert", str(tmp_path)]) == 0
    back = read_episode(path, CAR)
    for key, value in ep.items():
        np.testing.assert_array_equal(back[key], value)
    assert int(back["seed"]) == 5
    frames = np.concatenate([b.numpy() for b in frame_dataset([path], CAR, batch_size=3, seed=0)])
    assert sorted(map(bytes, frames)) == sorted(map(bytes, ep["obs"]))
    assert convert(tmp_path) == 0  # already converted


def test_stream_never_emits_a_corrupt_episode_and_the_file_is_named(tmp_path):
    import tensorflow as tf

    good, bad = episode_path(tmp_path, 0), episode_path(tmp_path, 1)
    for i, path in enumerate((good, bad)):
        write_episode(path, CAR, seed=i, **fake_episode(10, seed=i))
    offsets, sizes = frame_locations([bad])
    data = bytearray(bad.read_bytes())
    data[offsets[0] + sizes[0] // 2] ^= 0x01  # one bit inside the frames' zlib stream
    bad.write_bytes(bytes(data))
    with pytest.raises(tf.errors.OpError):
        for _ in frame_dataset([bad], CAR, batch_size=1, seed=0, shuffle_buffer=1):
            pytest.fail("a frame of the corrupt episode was emitted")
    error = first_bad_episode([good, bad], CAR)
    assert isinstance(error, FormatError) and str(bad) in str(error)
    assert first_bad_episode([good], CAR) is None


def test_metadata_alone_can_be_read(tmp_path):
    path = episode_path(tmp_path, 0)
    write_episode(path, DOOM, seed=11, **fake_episode(3, action_dim=1))
    data = read_episode(path, fields=("task", "seed"))
    assert set(data) == {"task", "seed"} and str(data["task"]) == "doom" and int(data["seed"]) == 11
