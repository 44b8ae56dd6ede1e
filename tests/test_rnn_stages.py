"""M's batches (step-keyed, streams with restart flags) and stage 4 on tiny series: artifacts, resume."""

import csv
import json

import keras
import numpy as np
import pytest

from env.common.cli import UserError
from env.common.hardware import training_device
from env.tasks import get_task
from rnn import train
from rnn.data import EpisodeBatches, SeriesSet, StreamBatches
from rnn.model import load_rnn
from rnn.twin import RNNTwin
from tests.test_vae_stages import Interrupt, write_record
from vae.series import list_series, write_series

CAR = get_task("carracing")
DOOM = get_task("doom")


def write_fake_series(out, task, lengths, seed=0):
    """Series whose mu[t, 0] = 100 · episode + t, so batches can be traced back to their frames."""
    rng = np.random.default_rng(seed)
    (out / "series").mkdir(parents=True, exist_ok=True)
    for i, length in enumerate(lengths):
        mu = rng.normal(0, 1, (length, task.z_size)).astype(np.float32)
        mu[:, 0] = 100 * i + np.arange(length)
        logvar = np.full((length, task.z_size), -4.0, np.float32)
        episode = {
            "action": rng.uniform(-1, 1, (length, task.action_dim)).astype(np.float32),
            "reward": np.ones(length, np.float32),
            "done": np.arange(length) == length - 1,
            "seed": np.int64(i),
        }
        write_series(out / "series" / f"ep_{i:06d}.npz", task, mu, logvar, episode)
    return SeriesSet(list_series(out / "series"), task)


def test_streams_chain_permuted_episodes_with_restart_flags(tmp_path):
    lengths = [7, 5, 9, 4, 6]
    series = write_fake_series(tmp_path, DOOM, lengths)
    batches = StreamBatches(series, batch=2, seq_len=3, seed=1)
    assert batches.chunks_per_epoch == 31 // 6
    for epoch in range(2):
        chunks = [batches(epoch * 5 + k) for k in range(5)]
        streams = np.concatenate([c["mu"][:, :, 0] for c in chunks], axis=1)  # [2, 15]
        restarts = np.concatenate([c["restart"] for c in chunks], axis=1)
        chained = streams.reshape(-1)
        episodes, frames = chained // 100, chained % 100
        # one permutation of all five episodes, each played from frame 0 in order; 31 frames cut to 30
        order = list(dict.fromkeys(episodes.astype(int)))
        assert sorted(order) == [0, 1, 2, 3, 4]
        for e in order:
            mine = frames[episodes == e]
            np.testing.assert_array_equal(mine, np.arange(len(mine)))
        np.testing.assert_array_equal(restarts.reshape(-1), (frames == 0).astype(np.float32))
        if epoch == 0:
            first_order = order
    assert order != first_order  # reshuffled each epoch
    again = StreamBatches(series, batch=2, seq_len=3, seed=1)
    for step in (7, 0, 3):  # a pure function of (seed, step), whatever the call order
        for key, value in batches(step).items():
            np.testing.assert_array_equal(again(step)[key], value)


def test_episode_batches_draw_distinct_whole_episodes(tmp_path):
    series = write_fake_series(tmp_path, CAR, [6, 6, 8, 6, 7])
    batches = EpisodeBatches(series, batch=3, seq_len=6, seed=0)
    assert batches.steps_per_epoch == 2
    batch = batches(0)
    assert batch["mu"].shape == (3, 6, 32) and batch["action"].shape == (3, 6, 3)
    firsts = batch["mu"][:, :, 0]
    assert len(set(firsts[:, 0] // 100)) == 3
    np.testing.assert_array_equal(firsts % 100, np.tile(np.arange(6), (3, 1)))
    np.testing.assert_array_equal(EpisodeBatches(series, 3, 6, 0)(0)["mu"], batch["mu"])
    assert any(not np.array_equal(batches(s)["mu"], batch["mu"]) for s in range(1, 5))
    with pytest.raises(UserError, match="shorter than --seq-len 7"):
        EpisodeBatches(series, batch=3, seq_len=7, seed=0)


def log_epochs(out):
    with open(out / "rnn" / "log.csv", newline="") as f:
        return [row["epoch"] for row in csv.DictReader(f)]


def test_stage_4_car_writes_model_weights_initial_z_and_the_baseline(tmp_path, capsys):
    write_fake_series(tmp_path, CAR, [10] * 5)
    args = ["--task", "carracing", "--out", str(tmp_path), "--batch-size", "2", "--seq-len", "10", "--steps", "5"]
    assert train.main(args) == 0
    rnn_dir = tmp_path / "rnn"
    config = json.loads((rnn_dir / "config.json").read_text())
    assert config["settings"]["lr_decay"] == 1.0 and config["settings"]["grad_clip"] == 1.0
    assert config["result"]["steps"] == 5 and config["result"]["sequences_per_second"] > 0
    assert {"nll", "nll_copy_last_z_unit_variance"} <= set(config["result"])
    assert config["result"]["device"] == training_device()
    assert log_epochs(tmp_path) == ["0", "1"]  # epochs of ceil(5 / 2) = 3 steps: 3 + 2
    assert "NLL per z element" in capsys.readouterr().out
    twin = RNNTwin.load(rnn_dir, CAR)
    assert twin.initial_z[0].shape == (5, 32)
    np.testing.assert_array_equal(twin.initial_z[0][:, 0], [0, 100, 200, 300, 400])
    assert load_rnn(rnn_dir, CAR).count_params() == 422_368
    assert train.main(args) == 0
    assert "already trained" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"steps=5 \(now 6\)"):
        train.main([*args[:-1], "6"])


class Record(keras.callbacks.Callback):
    """Which global steps ran, and whether the carried LSTM state was zero when each began."""

    def __init__(self):
        super().__init__()
        self.steps, self.zero_state = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.steps.append(int(self.model.optimizer.iterations))
        self.zero_state.append(all(not np.any(np.asarray(v.value)) for v in self.model.lstm.states))


def test_stage_4_doom_streams_carry_state_and_resume_mid_epoch(tmp_path, capsys):
    write_fake_series(tmp_path, DOOM, [9, 12, 8, 11, 10])  # 50 frames: 2 streams × 5-frame chunks → 5 chunks
    args = [
        "--task",
        "doom",
        "--out",
        str(tmp_path),
        "--batch-size",
        "2",
        "--seq-len",
        "5",
        "--epochs",
        "2",
        "--checkpoint-every",
        "1",
    ]
    with pytest.raises(KeyboardInterrupt):
        train.main(args, extra_callbacks=[Interrupt(at=7)])
    record = Record()
    assert train.main(args, extra_callbacks=[record]) == 0
    assert "resuming from the checkpoint at step 7 of 10" in capsys.readouterr().out
    assert record.steps == [7, 8, 9]
    assert record.zero_state == [False, False, False]  # state carried into the resumed chunk and the next
    assert log_epochs(tmp_path) == ["0", "1"]
    config = json.loads((tmp_path / "rnn" / "config.json").read_text())
    assert config["settings"]["lr_decay"] == 0.99999 and config["settings"]["epochs"] == 2
    assert set(config["result"]["metrics"]) == {"loss", "z_loss", "done_loss"}
    assert RNNTwin.load(tmp_path / "rnn", DOOM).initial_z[1].shape == (5, 64)
    assert not (tmp_path / "rnn" / "checkpoint").exists()


def test_stage_4_doom_state_is_zero_at_each_epoch_start(tmp_path):
    write_fake_series(tmp_path, DOOM, [9, 12, 8, 11, 10])
    record = Record()
    train.main(
        ["--task", "doom", "--out", str(tmp_path), "--batch-size", "2", "--seq-len", "5", "--epochs", "2"],
        extra_callbacks=[record],
    )
    assert record.steps == list(range(10))
    assert record.zero_state == [True, False, False, False, False] * 2


def test_stage_4_needs_series(tmp_path):
    with pytest.raises(UserError, match="run stage 3, vae.series"):
        train.main(["--task", "carracing", "--out", str(tmp_path)])


def test_dream_picture_of_a_real_episode(tmp_path):
    from PIL import Image

    from rnn import visualize
    from vae import series
    from vae.model import build_vae, save_vae

    write_record(tmp_path, episodes=3, length=20)
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text('{"settings": {"task": "carracing"}}')
    save_vae(build_vae(CAR, seed=0), tmp_path / "vae", CAR)
    series.main(["--task", "carracing", "--out", str(tmp_path)])
    train.main(["--task", "carracing", "--out", str(tmp_path), "--batch-size", "2", "--seq-len", "20", "--steps", "2"])
    assert (
        visualize.main(
            [
                "--task",
                "carracing",
                "--out",
                str(tmp_path),
                "--episode",
                "1",
                "--frames",
                "12",
                "--columns",
                "4",
                "--tau",
                "1.15",
            ]
        )
        == 0
    )
    png = Image.open(tmp_path / "rnn" / "dream_ep000001_tau1.15.png")
    assert png.size == (4 * 64 * 2, 3 * 64 * 2)
    gif = Image.open(tmp_path / "rnn" / "dream_ep000001_tau1.15.gif")
    assert gif.n_frames == 12


def test_dream_follows_the_real_latents_for_the_context_then_samples(tmp_path):
    from rnn.model import build_rnn, export_weights
    from rnn.visualize import dream

    twin = RNNTwin({**export_weights(build_rnn(DOOM, seed=0)), "task": np.str_("doom")}, DOOM)
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(8, 64)).astype(np.float32)
    logvar = np.full((8, 64), -30.0, np.float32)  # σ ≈ 0: the sampled real z is mu
    actions = rng.uniform(-1, 1, (8, 1)).astype(np.float32)
    z = dream(twin, DOOM, mu, logvar, actions, context=3, tau=1.0, rng=np.random.default_rng(1))
    np.testing.assert_allclose(z[:3], mu[:3], atol=1e-5)
    assert not np.allclose(z[3:], mu[3:], atol=0.1)
    again = dream(twin, DOOM, mu, logvar, actions, context=3, tau=1.0, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(z, again)
