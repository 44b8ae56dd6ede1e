"""Presets only name real flags of real stages, and `paper` passes the original's defaults through."""

import dataclasses
import os

import pytest

from controller.evaluate import EvaluateConfig
from controller.train import TrainConfig
from env.common.cli import UserError
from env.common.presets import PRESETS, ROUND, stage_flags
from env.extract import ExtractConfig
from env.tasks import TASKS
from rnn.train import RnnTrainConfig
from vae.series import SeriesConfig
from vae.train import VaeTrainConfig

STAGE_CONFIGS = {
    "extract": ExtractConfig,
    "vae": VaeTrainConfig,
    "series": SeriesConfig,
    "rnn": RnnTrainConfig,
    "controller": TrainConfig,
    "evaluate": EvaluateConfig,
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_keys_are_flags_of_their_stage(preset):
    assert set(PRESETS[preset]) == set(TASKS)
    for task, stages in PRESETS[preset].items():
        for stage, values in stages.items():
            if stage == "run":  # run.sh's own defaults
                assert set(values) == {"rounds"} and task == "doom", (preset, task)
                continue
            fields = {f.name for f in dataclasses.fields(STAGE_CONFIGS[stage.removeprefix(ROUND)])}
            assert set(values) <= fields - {"out", "task"}, (preset, task, stage)


def test_paper_preset_keeps_the_original_counts():
    for task in TASKS:
        assert stage_flags(task, "paper", "extract", 1) == ["--episodes=10000"]
        assert stage_flags(task, "paper", "vae", 1) == []
        assert stage_flags(task, "paper", "rnn", 1) == []
    assert VaeTrainConfig().epochs == 10 and VaeTrainConfig().batch_size == 100
    assert VaeTrainConfig().learning_rate == 1e-4 and VaeTrainConfig().kl_tolerance == 0.5
    rnn = RnnTrainConfig()
    assert (rnn.batch_size, rnn.learning_rate, rnn.grad_clip) == (100, 1e-3, 1.0)
    assert (rnn.steps, rnn.epochs, rnn.seq_len, rnn.lr_decay) == (0, 0, 0, 0.0)  # 0 = the task table's schedule
    for task in TASKS:
        assert stage_flags(task, "paper", "controller", 1) == stage_flags(task, "paper", "evaluate", 1) == []
    c = TrainConfig()
    assert (c.popsize, c.num_episode, c.eval_every, c.eval_episodes, c.sigma_init) == (64, 16, 25, 1024, 0.1)
    assert EvaluateConfig().episodes == 100


def test_workers_follow_np_and_bad_names_are_refused():
    cores = os.cpu_count() or 1
    assert f"--workers={min(4, cores)}" in stage_flags("doom", "small", "extract", 4)
    assert f"--workers={min(4, cores)}" in stage_flags("carracing", "small", "evaluate", 4)
    assert not any(f.startswith("--workers") for f in stage_flags("carracing", "small", "controller", 4))
    with pytest.raises(UserError, match="unknown preset"):
        stage_flags("doom", "huge", "extract", 1)
    with pytest.raises(UserError, match="unknown task"):
        stage_flags("pong", "small", "extract", 1)
