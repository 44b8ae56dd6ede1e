"""M: the MDN-RNN of the original code (ORIGINAL.md §3), its losses, and its files.

One code path for both tasks, shaped by the task table: an LSTM on [z, a] (car, 256 units) or on
[z, a, restart] (Doom, 512 units, state zeroed before every step whose restart flag is set), and a
dense head read per latent dimension as 5 mixture logits, 5 means, 5 log-stds — with Doom's
done/death logit in front. `python -m rnn.model --task T` prints the summary and count (car
422,368; Doom 1,678,785, as the paper).

With `dream_heads` (an addition, for training the car's controller in the dream) the car's M also
predicts the done logit and the reward of each step, in front of the mixture: [done, reward, mixture].
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from env.common.cli import UserError, run
from env.common.files import atomic_write
from env.common.training import save_model
from env.tasks import TASKS, Task, get_task
from rnn.artifacts import (
    DEATH_WINDOW,
    DONE_WEIGHT,
    MIXTURES,
    MODEL_FILE,
    WEIGHTS_FILE,
    check_rnn_dir,
    load_weights,
)

LR_FLOOR = 1e-5
"""M's learning rate decays towards this (WME: min_learning_rate)."""


def input_size(task: Task) -> int:
    """Width of M's input: z, the action, and the task's extra inputs (Doom: restart)."""
    return task.z_size + task.action_dim + len(task.rnn_extra_inputs)


def heads(task: Task, dream_heads: bool = False) -> tuple[bool, bool]:
    """(predicts_done, predicts_reward) of M: Doom predicts done; `dream_heads` adds done and reward."""
    return task.rnn_predicts_done or dream_heads, dream_heads


def output_size(task: Task, dream_heads: bool = False) -> int:
    """Width of M's head: z · 5 · 3 mixture parameters, plus a done logit (Doom) and a reward (dream heads)."""
    return task.z_size * MIXTURES * 3 + sum(heads(task, dream_heads))


def split_params(params, z_size: int, predicts_done: bool, predicts_reward: bool = False):
    """Head output [..., NOUT] → (logits, mu, logstd) each [..., z, 5], and the done logit [...] or None.

    Layout as the original: [done logit,] [reward,] then z groups of 15 = 5 logits | 5 means | 5 log-stds."""
    done = params[..., 0] if predicts_done else None
    mdn = params[..., int(predicts_done) + int(predicts_reward) :]
    groups = ops.reshape(mdn, (*ops.shape(mdn)[:-1], z_size, 3 * MIXTURES))
    logits, mu, logstd = ops.split(groups, 3, axis=-1)
    return logits, mu, logstd, done


def mixture_nll(z_next, logits, mu, logstd, weights=None):
    """z_next [..., z]; logits, mu, logstd [..., z, 5] → scalar: −log p(z_next) per latent dimension under
    its own 5-component Gaussian mixture, averaged over every element (batch × time × z); with `weights`
    [...] (one per z target), each target's terms are multiplied by its weight before the mean."""
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    mixture = tfd.MixtureSameFamily(
        mixture_distribution=tfd.Categorical(logits=ops.cast(logits, "float32")),
        components_distribution=tfd.Normal(ops.cast(mu, "float32"), ops.exp(ops.cast(logstd, "float32"))),
    )
    log_p = mixture.log_prob(ops.cast(z_next, "float32"))
    if weights is not None:
        log_p = ops.cast(weights, "float32")[..., None] * log_p
    return -ops.mean(log_p)


def ending_weights(done_next, weight: float, window: int = DEATH_WINDOW):
    """done_next [B, T] (1 where the next frame starts a new episode, so frame t is its episode's last) →
    weights [B, T] of the z targets z_{t+1}: `weight` on an episode's last `window` frames, 1 elsewhere
    (the next episode's first frame is not its predecessor's)."""
    steps = ops.shape(done_next)[1]
    padded = ops.pad(ops.cast(done_next, "float32"), [[0, 0], [0, window]])
    near = ops.max(ops.stack([padded[:, k : k + steps] for k in range(1, window + 1)]), axis=0)
    return 1.0 + (weight - 1.0) * near


def reward_of(params, predicts_done: bool):
    """Head output [..., NOUT] of an M with a reward head → the predicted reward [...]."""
    return params[..., int(predicts_done)]


def done_loss(done_logit, done_next, weight: float = DONE_WEIGHT):
    """done_logit, done_next [...] → scalar: BCE with logits, positives weighted × `weight`, mean over all steps."""
    target = ops.cast(done_next, "float32")
    logit = ops.cast(done_logit, "float32")
    bce = ops.maximum(logit, 0.0) - logit * target + ops.log1p(ops.exp(-ops.abs(logit)))
    return ops.mean((1.0 + (weight - 1.0) * target) * bce)


@keras.saving.register_keras_serializable(package="worldmodels")
class RestartLSTMCell(layers.LSTMCell):
    """A Keras LSTMCell that, when `reset_on_restart`, zeroes (h, c) before any step whose last input
    column (the restart flag) is > 0.5 — the original Doom M's custom unrolled RNN."""

    def __init__(self, units: int, reset_on_restart: bool = False, **kwargs):
        kwargs.setdefault("unit_forget_bias", True)
        super().__init__(units, **kwargs)
        self.reset_on_restart = reset_on_restart

    def call(self, inputs, states, training=False):
        if self.reset_on_restart:
            keep = ops.cast(inputs[:, -1:] <= 0.5, inputs.dtype)
            states = [state * keep for state in states]
        return super().call(inputs, states, training=training)

    def get_config(self):
        return {**super().get_config(), "reset_on_restart": self.reset_on_restart}


def fused_lstm(units: int, stateful: bool) -> layers.LSTM:
    """M's LSTM where no restart flag resets it (the car): the fused layer, cuDNN's kernel on a GPU and the
    same `LSTMCell` loop elsewhere."""
    return layers.LSTM(
        units, unit_forget_bias=True, return_sequences=True, return_state=True, stateful=stateful, name="lstm"
    )


@keras.saving.register_keras_serializable(package="worldmodels")
class DecayToFloor(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = (initial − floor) · decay^step + floor (WME rnn_train.py)."""

    def __init__(self, initial: float, decay: float, floor: float = LR_FLOOR):
        self.initial, self.decay, self.floor = initial, decay, floor

    def __call__(self, step):
        step = ops.cast(step, "float32")
        return (self.initial - self.floor) * ops.power(self.decay, step) + self.floor

    def get_config(self):
        return {"initial": self.initial, "decay": self.decay, "floor": self.floor}


@keras.saving.register_keras_serializable(package="worldmodels")
class MDNRNN(keras.Model):
    """M. Called on inputs [B, T, in] (and an optional [h, c] initial state), returns the head's output
    [B, T, NOUT] and the final [h, c]. Trained on dicts of series arrays (see `train_step`)."""

    def __init__(
        self,
        z_size: int,
        action_dim: int,
        units: int,
        extra_inputs: Sequence[str] = (),
        predicts_done: bool = False,
        stateful: bool = False,
        seed: int | None = None,
        predicts_reward: bool = False,
        death_weight: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.death_weight = float(death_weight)
        self.z_size, self.action_dim, self.units = z_size, action_dim, units
        self.extra_inputs, self.predicts_done = tuple(extra_inputs), predicts_done
        self.predicts_reward = predicts_reward
        self.stateful, self.seed = stateful, seed
        if "restart" in self.extra_inputs:
            cell = RestartLSTMCell(units, reset_on_restart=True, name="lstm_cell")
            self.lstm = layers.RNN(cell, return_sequences=True, return_state=True, stateful=stateful, name="lstm")
        else:
            self.lstm = fused_lstm(units, stateful)
        self.head = layers.Dense(z_size * MIXTURES * 3 + int(predicts_done) + int(predicts_reward), name="mdn")
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.loss_names}

    @property
    def loss_names(self) -> tuple[str, ...]:
        """The losses train_step reports: loss, and with extra heads z_loss, done_loss, reward_loss."""
        extra = ("done_loss",) * self.predicts_done + ("reward_loss",) * self.predicts_reward
        return ("loss", "z_loss", *extra) if extra else ("loss",)

    def call(self, inputs, initial_state=None, training=False):
        sequence, h, c = self.lstm(inputs, initial_state=initial_state, training=training)
        return self.head(sequence), [h, c]

    def sequences(self, batch):
        """A batch of series {mu, logvar [B, T, z], action [B, T, A], restart [B, T] (Doom), done, reward [B, T]
        (dream heads)} → (inputs [B, T−1, in], z targets [B, T−1, z], done targets [B, T−1] or None).
        z is re-sampled from (mu, logvar) on every call. Doom's done target is the next step's restart flag;
        with dream heads it is the episode file's done flag of the same step (the step the action ended)."""
        mu = ops.cast(batch["mu"], "float32")
        eps = keras.random.normal(ops.shape(mu), seed=self.seed_generator)
        z = mu + ops.exp(0.5 * ops.cast(batch["logvar"], "float32")) * eps
        parts = [z[:, :-1], ops.cast(batch["action"], "float32")[:, :-1]]
        done_next = None
        if "restart" in self.extra_inputs:
            restart = ops.cast(batch["restart"], "float32")
            parts.append(restart[:, :-1, None])
            done_next = restart[:, 1:]
        elif self.predicts_done:
            done_next = ops.cast(batch["done"], "float32")[:, :-1]
        return ops.concatenate(parts, axis=-1), z[:, 1:], done_next

    def losses_of(self, batch, training: bool):
        """Series batch → dict of scalar losses: loss (and z_loss, done_loss for Doom)."""
        inputs, z_next, done_next = self.sequences(batch)
        params, _ = self(inputs, training=training)
        logits, mu, logstd, done_logit = split_params(params, self.z_size, self.predicts_done, self.predicts_reward)
        weights = None if self.death_weight == 1.0 else ending_weights(done_next, self.death_weight)
        z_loss = mixture_nll(z_next, logits, mu, logstd, weights)
        if not self.predicts_done:
            return {"loss": z_loss}
        losses = {"z_loss": z_loss, "done_loss": done_loss(done_logit, done_next)}
        if self.predicts_reward:
            reward = ops.cast(batch["reward"], "float32")[:, :-1]
            losses["reward_loss"] = ops.mean(ops.square(reward_of(params, True) - reward))
        return {"loss": sum(losses.values()), **losses}

    def train_step(self, data):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            losses = self.losses_of(data, training=True)
        grads = tape.gradient(losses["loss"], self.trainable_weights)
        self.optimizer.apply(grads, self.trainable_weights)
        return self._track(losses)

    def test_step(self, data):
        return self._track(self.losses_of(data, training=False))

    def _track(self, losses):
        for name, value in losses.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def get_config(self):
        return {
            **super().get_config(),
            "z_size": self.z_size,
            "action_dim": self.action_dim,
            "units": self.units,
            "extra_inputs": list(self.extra_inputs),
            "predicts_done": self.predicts_done,
            "stateful": self.stateful,
            "seed": self.seed,
            "predicts_reward": self.predicts_reward,
            "death_weight": self.death_weight,
        }


def build_rnn(
    task: Task,
    batch_size: int | None = None,
    stateful: bool = False,
    seed: int | None = None,
    dream_heads: bool = False,
    death_weight: float = 1.0,
) -> MDNRNN:
    """A built M for `task`; `stateful` carries the LSTM state across calls (needs a fixed `batch_size`);
    `dream_heads` adds done and reward outputs; `death_weight` ≠ 1 weights the z loss of each episode's last
    DEATH_WINDOW frames (Doom)."""
    predicts_done, predicts_reward = heads(task, dream_heads)
    model = MDNRNN(
        task.z_size,
        task.action_dim,
        task.rnn_units,
        task.rnn_extra_inputs,
        predicts_done,
        stateful=stateful,
        seed=seed,
        predicts_reward=predicts_reward,
        death_weight=death_weight,
        name=f"mdnrnn_{task.name}",
    )
    model(np.zeros((batch_size or 1, 2, input_size(task)), np.float32))
    return model


def plain_copy(model: MDNRNN, task: Task) -> MDNRNN:
    """A non-stateful M with the same weights, usable on batches of any size."""
    plain = build_rnn(task, seed=model.seed, dream_heads=model.predicts_reward)
    plain.set_weights(model.get_weights())
    return plain


def named_variables(model: MDNRNN) -> dict:
    """M's variables by their exported names: lstm.kernel [in, 4u], lstm.recurrent_kernel [u, 4u], lstm.bias
    [4u] (Keras gate order i, f, c, o), mdn.kernel [u, NOUT], mdn.bias [NOUT]."""
    cell = model.lstm.cell
    return {
        "lstm.kernel": cell.kernel,
        "lstm.recurrent_kernel": cell.recurrent_kernel,
        "lstm.bias": cell.bias,
        "mdn.kernel": model.head.kernel,
        "mdn.bias": model.head.bias,
    }


def export_weights(model: MDNRNN) -> dict[str, np.ndarray]:
    """Named float32 weights (see `named_variables`)."""
    return {key: np.asarray(ops.convert_to_numpy(value), np.float32) for key, value in named_variables(model).items()}


def save_rnn(model: MDNRNN, rnn_dir: Path, task: Task, extra: dict[str, np.ndarray] | None = None) -> None:
    """Write `rnn_dir/rnn.keras` (a non-stateful copy) and `rnn_dir/weights.npz` (named weights, task,
    and `extra` arrays such as initial_z), atomically."""
    rnn_dir = Path(rnn_dir)
    plain = plain_copy(model, task) if model.stateful else model
    save_model(plain, rnn_dir / MODEL_FILE)
    arrays = {
        **export_weights(plain),
        **(extra or {}),
        "task": np.str_(task.name),
        "predicts_done": np.bool_(plain.predicts_done),
        "predicts_reward": np.bool_(plain.predicts_reward),
    }
    atomic_write(rnn_dir / WEIGHTS_FILE, lambda f: np.savez(f, **arrays))


def load_rnn(rnn_dir: Path, task: Task) -> MDNRNN:
    """The trained M of `task` from `rnn_dir`, built from its named weights (`weights.npz`), so an M saved
    with another Keras layer layout (the car's LSTM before it was the fused layer) loads the same; a
    UserError if missing, corrupt or another task's."""
    check_rnn_dir(rnn_dir, task)
    weights = load_weights(rnn_dir, task)
    model = build_rnn(task, dream_heads=bool(weights.get("predicts_reward", False)))
    for key, variable in named_variables(model).items():
        if tuple(weights[key].shape) != tuple(variable.shape):
            raise UserError(
                f"{Path(rnn_dir) / WEIGHTS_FILE}: {key} has shape {weights[key].shape}, expected {tuple(variable.shape)}"
            )
        variable.assign(weights[key])
    return model


def summary_lines(model: MDNRNN) -> list[str]:
    """The Keras summary, then the total parameter count."""
    lines: list[str] = []
    model.summary(print_fn=lambda s, **_: lines.append(s))
    lines.append(f"MDN-RNN total parameters: {model.count_params():,}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print M's Keras summary and parameter count.")
    parser.add_argument("--task", default="carracing", choices=sorted(TASKS))
    args = parser.parse_args(argv)
    print("\n".join(summary_lines(build_rnn(get_task(args.task)))))
    return 0


if __name__ == "__main__":
    run(main)
