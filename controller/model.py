"""The controller C in numpy (ORIGINAL.md §4): a tanh layer on V's z and M's state, the paper's feature modes.

| mode     | features          | car params          | Doom params        |
|----------|-------------------|---------------------|--------------------|
| z        | z                 | 32·3 + 3 = 99       | 64                 |
| zh       | z, h (car default)| 288·3 + 3 = 867     | 576                |
| zc       | z, c              | 867                 | 576                |
| zch      | z, c, h (Doom)    | 544·3 + 3 = 1,635   | 1,088 (no bias)    |
| z_hidden | z → 40 tanh → out | 33·40 + 41·3 = 1,443| 64·40 + 40 = 2,600 |

The flat parameter vector CMA-ES searches is laid out as the original's: for a linear mode the
output biases first, then the (inputs, outputs) weight matrix row-major; for the hidden mode the
40 hidden biases, the (inputs, 40) weights, then the output biases and the (40, outputs) weights.
Doom's controller has no biases (the task table's `controller_bias`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from env.common.cli import UserError, parse_config, run
from env.tasks import Task, get_task

MODES: dict[str, tuple[str, ...]] = {
    "z": ("z",),
    "zh": ("z", "h"),
    "zc": ("z", "c"),
    "zch": ("z", "c", "h"),
    "z_hidden": ("z",),
}
"""Feature mode → what C sees, in the original's concatenation order (WME: rnn.py rnn_output)."""

HIDDEN_UNITS = 40
"""Width of the hidden tanh layer of mode z_hidden (the paper's "V only + hidden layer")."""


def default_mode(task: Task) -> str:
    """The mode the original used for `task`: car 'zh', Doom 'zch'."""
    return "".join(task.controller_features)


@dataclass(frozen=True)
class ControllerShape:
    """The sizes of one controller: features in, hidden units (0 = linear), actions out, biases or not."""

    task: str
    mode: str
    features: tuple[str, ...]
    input_size: int
    hidden: int
    output_size: int
    bias: bool

    @property
    def layers(self) -> list[tuple[int, int]]:
        """(fan_in, fan_out) of each tanh layer."""
        if self.hidden:
            return [(self.input_size, self.hidden), (self.hidden, self.output_size)]
        return [(self.input_size, self.output_size)]

    @property
    def n_params(self) -> int:
        """Length of the flat parameter vector."""
        return sum(fan_in * fan_out + (fan_out if self.bias else 0) for fan_in, fan_out in self.layers)

    @property
    def uses_m(self) -> bool:
        """Whether C reads M's state, so that the agent has to step M."""
        return "h" in self.features or "c" in self.features


def controller_shape(task: Task, mode: str = "") -> ControllerShape:
    """The controller of `task` in `mode` ('' = the task's default); a UserError for an unknown mode."""
    mode = mode or default_mode(task)
    if mode not in MODES:
        raise UserError(f"unknown controller mode {mode!r}; choose one of: {', '.join(MODES)}")
    features = MODES[mode]
    sizes = {"z": task.z_size, "c": task.rnn_units, "h": task.rnn_units}
    return ControllerShape(
        task=task.name,
        mode=mode,
        features=features,
        input_size=sum(sizes[f] for f in features),
        hidden=HIDDEN_UNITS if mode == "z_hidden" else 0,
        output_size=task.action_dim,
        bias=task.controller_bias,
    )


class Controller:
    """C with its weights unpacked from a flat float64 vector: features float [B, in] → tanh outputs float64 [B, out]."""

    def __init__(self, shape: ControllerShape, params: np.ndarray):
        params = np.asarray(params, dtype=np.float64)
        if params.shape != (shape.n_params,):
            raise ValueError(
                f"{shape.mode} controller of {shape.task} takes {shape.n_params} parameters, got shape {params.shape}"
            )
        self.shape = shape
        self.layers: list[tuple[np.ndarray, np.ndarray | None]] = []
        offset = 0
        for fan_in, fan_out in shape.layers:
            bias = None
            if shape.bias:
                bias = params[offset : offset + fan_out]
                offset += fan_out
            weight = params[offset : offset + fan_in * fan_out].reshape(fan_in, fan_out)
            offset += fan_in * fan_out
            self.layers.append((weight, bias))

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """features: float [B, in] → y = tanh(...) float64 [B, out] (before the task's action mapping)."""
        x = np.asarray(features, dtype=np.float64)
        for weight, bias in self.layers:
            x = x @ weight
            if bias is not None:
                x += bias
            x = np.tanh(x)
        return x


@dataclass
class ModelConfig:
    """Print the controller's parameter count for a task and mode."""

    task: str = field(default="carracing", metadata={"help": "carracing or doom"})
    mode: str = field(default="", metadata={"help": f"one of {', '.join(MODES)}; '' = the task's (car zh, Doom zch)"})


class BatchController:
    """k controllers at once, for rows that each belong to one of them: float32 weights [k, ...].
    `__call__(features [B, in], which [B])` → tanh outputs float32 [B, out] of controller which[b]."""

    def __init__(self, shape: ControllerShape, params: np.ndarray):
        params = np.asarray(params, dtype=np.float64)
        if params.ndim != 2 or params.shape[1] != shape.n_params:
            raise ValueError(f"expected params [k, {shape.n_params}], got shape {params.shape}")
        self.shape = shape
        nets = [Controller(shape, p) for p in params]
        self.layers = []
        for i in range(len(shape.layers)):
            weight = np.stack([net.layers[i][0] for net in nets]).astype(np.float32)
            bias = np.stack([net.layers[i][1] for net in nets]).astype(np.float32) if shape.bias else None
            self.layers.append((weight, bias))

    def __call__(self, features: np.ndarray, which: np.ndarray) -> np.ndarray:
        x = np.asarray(features, np.float32)
        for weight, bias in self.layers:
            x = np.einsum("bi,bio->bo", x, weight[which])
            if bias is not None:
                x += bias[which]
            x = np.tanh(x)
        return x


def features(shape: ControllerShape, z: np.ndarray, h: np.ndarray, c: np.ndarray) -> np.ndarray:
    """C's input, the same in the real env and the dream: z [B, z] with M's state h, c [B, units]
    concatenated in the mode's order (car zh: [z, h]; Doom zch: [z, c, h]) → [B, in]."""
    parts = {"z": z, "h": h, "c": c}
    return np.concatenate([parts[name] for name in shape.features], axis=1)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_config(ModelConfig, argv)
    shape = controller_shape(get_task(args.task), args.mode)
    print(
        f"{shape.task} controller, mode {shape.mode} ({' + '.join(shape.features)} → "
        f"{f'{shape.hidden} tanh → ' if shape.hidden else ''}{shape.output_size} tanh, "
        f"{'with' if shape.bias else 'no'} bias): {shape.n_params:,} parameters"
    )
    return 0


if __name__ == "__main__":
    run(main)
