"""Stages 2 and 3 on a tiny record: artifacts, resume after a kill, settings checks, series contents."""

import csv
import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from env.common.cli import UserError
from env.common.hardware import training_device
from env.common.training import standard_callbacks
from env.episodes import FormatError, episode_path, frame_locations, list_episodes, read_episode, write_episode
from env.tasks import get_task
from tests.conftest import ROOT
from vae import series, train
from vae.model import load_vae
from vae.twin import EncoderTwin

CAR = get_task("carracing")
DOOM = get_task("doom")
TINY = ["--task", "carracing", "--epochs", "2", "--batch-size", "8", "--shuffle-buffer", "64"]


def blocky_frames(rng, length):
    """Frames of two coloured rectangles on a grey background: structure a V can learn in a few steps."""
    frames = np.full((length, 64, 64, 3), 100, np.uint8)
    for t in range(length):
        x, y = rng.integers(0, 40, 2)
        frames[t, y : y + 24, x : x + 24] = rng.integers(0, 256, 3)
        frames[t, 50:, :] = (60, 180, 60)
    return frames


def write_record(out, episodes=3, length=24, task=CAR, seed=0):
    (out / "record").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(episodes):
        write_episode(
            episode_path(out / "record", i),
            task,
            blocky_frames(rng, length),
            rng.uniform(-1, 1, (length, task.action_dim)).astype(np.float32),
            rng.normal(size=length).astype(np.float32),
            np.arange(length) == length - 1,
            seed=100 + i,
        )


def log_rows(out):
    with open(out / "vae" / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    write_record(out)
    assert train.main([*TINY, "--out", str(out)]) == 0
    assert series.main(["--task", "carracing", "--out", str(out)]) == 0
    return out


def test_stage_2_writes_model_weights_logs_and_grids(trained):
    vae_dir = trained / "vae"
    config = json.loads((vae_dir / "config.json").read_text())
    assert config["settings"]["epochs"] == 2 and config["inputs"] == {"episodes": 3, "frames": 72}
    assert config["result"]["steps"] == 2 * (72 // 8)
    assert config["result"]["images_per_second"] > 0
    assert config["result"]["device"] == training_device() and config["settings"]["precision"] == "float32"
    rows = log_rows(trained)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert float(rows[1]["loss"]) < float(rows[0]["loss"])  # it learns
    for row in rows:
        assert float(row["loss"]) == pytest.approx(float(row["recon"]) + float(row["kl"]), rel=1e-4)
        assert float(row["kl"]) >= 16.0
    assert (vae_dir / "recon" / "epoch_001.png").exists() and (vae_dir / "recon" / "epoch_002.png").exists()
    assert list((vae_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert not (vae_dir / "checkpoint").exists()
    model = load_vae(vae_dir, CAR)
    frames = read_episode(list_episodes(trained / "record")[0])["obs"]
    np.testing.assert_allclose(
        EncoderTwin.load(vae_dir, CAR)(frames)[0], np.asarray(model.encoder(frames / 255.0)[0]), atol=1e-4
    )


def test_stage_2_skips_when_done_and_refuses_changed_settings(trained, capsys):
    assert train.main([*TINY, "--out", str(trained)]) == 0
    assert "already trained" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"epochs=2 \(now 3\)"):
        train.main([*TINY, "--epochs", "3", "--out", str(trained)])
    with pytest.raises(UserError, match="recorded for task 'carracing', not 'doom'"):
        train.main(["--task", "doom", "--out", str(trained)])


class Interrupt(keras.callbacks.Callback):
    """Simulates a kill (Ctrl-C) after `at` training steps."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == self.at:
            raise KeyboardInterrupt


class CountSteps(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.first, self.count = None, 0

    def on_train_batch_begin(self, batch, logs=None):
        if self.first is None:
            self.first = int(self.model.optimizer.iterations)
        self.count += 1


def test_stage_2_resumes_mid_epoch_from_the_last_checkpoint(tmp_path, capsys):
    write_record(tmp_path)  # 72 frames: 9 steps of 8 per epoch, 18 in all
    args = [*TINY, "--checkpoint-every", "4", "--out", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        train.main(args, extra_callbacks=[Interrupt(at=14)])
    assert (tmp_path / "vae" / "checkpoint" / "train.weights.h5").exists()
    assert not (tmp_path / "vae" / "vae.keras").exists()
    counter = CountSteps()
    assert train.main(args, extra_callbacks=[counter]) == 0
    assert "resuming from the checkpoint at step 12 of 18" in capsys.readouterr().out
    assert (counter.first, counter.count) == (12, 6)  # the rest of epoch 2 only, not a restart
    assert [r["epoch"] for r in log_rows(tmp_path)] == ["0", "1"]
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["result"]["steps"] == 18


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    model = keras.Sequential([keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    callbacks = standard_callbacks(
        model, tmp_path, checkpoint_every=1, steps_per_epoch=10, total_steps=10, unit="img", per_step=1, stage="stage 2"
    )
    nan_stop = callbacks[0]
    nan_stop.on_train_batch_end(0, {"loss": 3.0})
    with pytest.raises(UserError, match="stage 2: the loss became nan at step 0"):
        nan_stop.on_train_batch_end(0, {"loss": float("nan")})


def test_stage_3_series_hold_v_encodings_and_the_episode_fields(trained):
    twin = EncoderTwin.load(trained / "vae", CAR)
    records = list_episodes(trained / "record")
    files = series.list_series(trained / "series")
    assert [p.name for p in files] == [p.name for p in records]
    for record_path, series_path in zip(records, files):
        episode = read_episode(record_path)
        data = series.read_series(series_path, CAR)
        mu, logvar = twin(episode["obs"])
        np.testing.assert_allclose(data["mu"], mu, atol=1e-4)
        np.testing.assert_allclose(data["logvar"], logvar, atol=1e-4)
        for key in ("action", "reward", "done", "seed"):
            np.testing.assert_array_equal(data[key], episode[key])
    with pytest.raises(UserError, match="encoded for task 'carracing', not 'doom'|shape"):
        series.read_series(files[0], DOOM)


def test_stage_3_resumes_and_refuses_another_v(trained, capsys):
    files = series.list_series(trained / "series")
    before = files[0].read_bytes()
    files[1].unlink()
    assert series.main(["--task", "carracing", "--out", str(trained)]) == 0
    assert "1 episodes" in capsys.readouterr().out.splitlines()[-1]
    assert files[1].exists() and files[0].read_bytes() == before
    config_path = trained / "series" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "inputs": {"vae": "0" * 64}}))
    try:
        with pytest.raises(UserError, match="input vae '0000"):
            series.main(["--task", "carracing", "--out", str(trained)])
    finally:
        config_path.write_text(json.dumps(config))


def test_stage_3_notices_episodes_collected_again_under_the_same_names(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    write_record(out)
    stage_1 = {"settings": {"task": "carracing", "seed": 0, "episodes": 3, "workers": 2, "out": str(out)}}
    (out / "record" / "config.json").write_text(json.dumps(stage_1))
    assert train.main([*TINY, "--epochs", "1", "--out", str(out)]) == 0
    assert series.main(["--task", "carracing", "--out", str(out)]) == 0
    more = {"settings": {**stage_1["settings"], "episodes": 5, "workers": 1, "out": "elsewhere"}}
    (out / "record" / "config.json").write_text(json.dumps(more))
    assert series.main(["--task", "carracing", "--out", str(out)]) == 0  # the same episodes, more may come
    again = {"settings": {**stage_1["settings"], "seed": 1}}  # stage 1 collected afresh, as run.sh does
    (out / "record" / "config.json").write_text(json.dumps(again))
    with pytest.raises(UserError, match="input record"):
        series.main(["--task", "carracing", "--out", str(out)])
    assert series.main(["--task", "carracing", "--out", str(out), "--restart-on-change", "true"]) == 0
    assert (out / "series.previous").is_dir() and len(series.list_series(out / "series")) == 3


def test_stage_3_errors_are_one_line_with_nonzero_exit(trained, tmp_path):
    write_record(tmp_path, episodes=1)
    for out, task, message in (
        (tmp_path, "carracing", "no trained V (run stage 2"),
        (trained, "doom", "V was trained for 'carracing', not 'doom'"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "vae.series", "--task", task, "--out", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [f"error: {proc.stderr.strip()[7:]}"]
        assert message in proc.stderr


def test_stage_2_names_an_episode_the_stream_finds_corrupt(tmp_path):
    write_record(tmp_path, episodes=12)
    bad = episode_path(tmp_path / "record", 2)  # not one of the preview grid's episodes: only the stream reads it
    offsets, sizes = frame_locations([bad])
    data = bytearray(bad.read_bytes())
    data[offsets[0] + sizes[0] // 2] ^= 0x01
    bad.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=f"{bad}: corrupt or truncated episode file"):
        train.main([*TINY, "--out", str(tmp_path)])
    assert not (tmp_path / "vae" / "weights.npz").exists()
