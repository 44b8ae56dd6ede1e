"""The task table holds the original's per-task numbers (ORIGINAL.md §2.2, §3.2, §3.3, §4, §6.3)."""

import dataclasses

import pytest

from env.common.cli import UserError
from env.tasks import TASKS, get_task


def test_both_tasks_fill_every_field():
    assert set(TASKS) == {"carracing", "doom"}
    for task in TASKS.values():
        for f in dataclasses.fields(task):
            assert getattr(task, f.name) is not None, (task.name, f.name)


def test_carracing_row_matches_original():
    car = get_task("carracing")
    assert car.env_id == "CarRacing-v3"
    assert car.crop_rows == (0, 84)  # rows 0–83 of the 96×96 state pixels
    assert (car.z_size, car.rnn_units, car.action_dim) == (32, 256, 3)
    assert car.max_steps == 1000 and car.min_episode_length == 0
    assert car.controller_features == ("z", "h") and car.controller_bias
    assert car.rnn_extra_inputs == () and not car.rnn_predicts_done
    assert car.collect_full_episode and car.collect_policy == "cauchy_controller"
    assert car.controller_trained_in == "real"
    # ORIGINAL.md §3.2: whole 1000-frame episodes, 4,000 updates, constant learning rate
    assert (car.rnn_batching, car.rnn_seq_len, car.rnn_updates, car.rnn_lr_decay) == ("episodes", 1000, 4000, 1.0)


def test_doom_row_matches_original():
    doom = get_task("doom")
    assert (doom.z_size, doom.rnn_units, doom.action_dim) == (64, 512, 1)
    assert doom.max_steps == 2100 and doom.min_episode_length == 100
    assert doom.skill == 4 and doom.start_time == 14
    assert doom.controller_features == ("z", "c", "h") and not doom.controller_bias
    assert doom.rnn_extra_inputs == ("restart",) and doom.rnn_predicts_done
    assert doom.collect_policy == "repeat_uniform" and not doom.collect_full_episode
    assert doom.controller_trained_in == "dream"
    # ORIGINAL.md §3.3: 500-frame chunks of chained streams, 400 epochs, lr decay 0.99999 per step
    assert (doom.rnn_batching, doom.rnn_seq_len, doom.rnn_epochs, doom.rnn_lr_decay) == ("streams", 500, 400, 0.99999)
    # the original kept the top 5/6 of the frame (rows 0–399 of 480), dropping the status bar
    height = int(doom.screen_resolution.split("X")[1])
    assert doom.crop_rows == (0, height * 5 // 6)


def test_unknown_task_is_a_user_error():
    with pytest.raises(UserError, match="unknown task 'pong'.*carracing, doom"):
        get_task("pong")
