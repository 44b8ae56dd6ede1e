"""The episode file format: its one writer, its one reader, and its tf.data streams.

One `.npz` file per episode (ORIGINAL.md §2.4), named `ep_<index>.npz` in `record/`:

| field  | dtype   | shape         | meaning                                                  |
|--------|---------|---------------|----------------------------------------------------------|
| obs    | uint8   | [T, 64, 64, 3]| frame seen before action[t]; the frame after the last step is not stored |
| action | float32 | [T, A]        | the action sent to the env (car: steer, gas, brake; Doom: a ∈ [-1, 1]) |
| reward | float32 | [T]           | reward for action[t]                                     |
| done   | bool    | [T]           | the env reported termination at step t                  |
| task   | str     | []            | task name                                                |
| seed   | int64   | []            | the env seed of the episode                              |

The file is a zip (`np.load` opens it). Every array is a stored `.npy` member except the frames: `obs.zlib` is
one zlib stream of the raw uint8 frames (C order) in a stored member, so tf.data reads and inflates it in
C++ (`frame_dataset`) while zlib's own checksum still catches a corrupt frame. Files of the older layout (the
frames as an uncompressed `obs.npy`) are read by `read_episode`; `python -m env.episodes --convert DIR`
rewrites them for the stream. The schema machinery (`Schema`, `read_npz`, `write_npz`) is shared with the
other per-episode formats.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from env.common.cli import UserError, parse_config, run
from env.common.files import atomic_write, read_json
from env.common.rundir import ALWAYS_RESUMABLE, RECORD
from env.tasks import FRAME_SIZE, Task, get_task

RECORD_RESUMABLE = ("episodes", "workers")
"""Stage 1's settings a rerun may change and still add to the same `record/`."""
COMPRESS_LEVEL = 1
"""zlib level of the frames: ≈ 3× faster to write than numpy's default level for ≈ 10–50 % more disk."""
FRAMES_MEMBER, OLDER_FRAMES_MEMBER = "obs.zlib", "obs.npy"
"""The zip member holding an episode's frames, and where the older layout kept them uncompressed."""
EPISODE_PATTERN = re.compile(r"^ep_(\d{6,})\.npz$")


class FormatError(UserError):
    """A file that is missing, truncated, corrupt or of the wrong shape; the message names file and field."""


@dataclass(frozen=True)
class Schema:
    """Per-field dtype and trailing shape of a per-episode npz file; 'T' is the shared length, other
    names are sizes given when validating (e.g. 'A' = action size); `scalars` are 0-d metadata fields;
    `compressed` arrays (leading 'T', fixed trailing sizes) are stored as a zlib stream `<name>.zlib`."""

    name: str
    arrays: Mapping[str, tuple[str, tuple[Any, ...]]]
    scalars: Mapping[str, str]
    compressed: tuple[str, ...] = ()

    def check(self, path: Path, data: Mapping[str, np.ndarray], sizes: Mapping[str, int]) -> int:
        """Validate `data`; returns T. Raises FormatError naming `path` and the field."""
        length = None
        for key, (dtype, shape) in self.arrays.items():
            if key not in data:
                raise FormatError(f"{path}: {self.name} field {key!r} is missing")
            value = data[key]
            if value.dtype != np.dtype(dtype):
                raise FormatError(f"{path}: field {key!r} has dtype {value.dtype}, expected {np.dtype(dtype)}")
            if value.ndim != len(shape):
                raise FormatError(f"{path}: field {key!r} has shape {value.shape}, expected {len(shape)} dims {shape}")
            for dim, want in zip(value.shape, shape):
                if want == "T":
                    if length is None:
                        length = dim
                    elif dim != length:
                        raise FormatError(f"{path}: field {key!r} has length {dim}, other fields have {length}")
                elif isinstance(want, str):
                    if want in sizes and dim != sizes[want]:
                        raise FormatError(
                            f"{path}: field {key!r} has shape {value.shape}; expected {want} = {sizes[want]}"
                        )
                elif dim != want:
                    raise FormatError(f"{path}: field {key!r} has shape {value.shape}, expected {shape}")
        for key, dtype in self.scalars.items():
            if key not in data:
                raise FormatError(f"{path}: {self.name} field {key!r} is missing")
            if data[key].shape != () or data[key].dtype.kind != np.dtype(dtype).kind:
                raise FormatError(
                    f"{path}: field {key!r} is {data[key].dtype}{list(data[key].shape)}, expected a {dtype} scalar"
                )
        if self.arrays and not length:
            raise FormatError(f"{path}: {self.name} is empty (length 0)")
        return length


EPISODE = Schema(
    name="episode",
    arrays={
        "obs": ("uint8", ("T", FRAME_SIZE, FRAME_SIZE, 3)),
        "action": ("float32", ("T", "A")),
        "reward": ("float32", ("T",)),
        "done": ("bool", ("T",)),
    },
    scalars={"task": "str", "seed": "int64"},
    compressed=("obs",),
)


def write_npz(path: Path, schema: Schema, data: Mapping[str, Any], sizes: Mapping[str, int]) -> None:
    """Validate `data` against `schema` and write it atomically (byte-reproducible): `.npy` members, and a
    zlib stream `<name>.zlib` for each of the schema's `compressed` arrays; every member is stored."""
    arrays = {k: np.asarray(v) for k, v in data.items()}
    schema.check(Path(path), arrays, sizes)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            if key in schema.compressed:
                info = zipfile.ZipInfo(f"{key}.zlib", date_time=(1980, 1, 1, 0, 0, 0))
                zf.writestr(info, zlib.compress(np.ascontiguousarray(value).tobytes(), COMPRESS_LEVEL))
                continue
            with zf.open(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w", force_zip64=True) as f:
                np.lib.format.write_array(f, value, allow_pickle=False)
    atomic_write(Path(path), lambda f: f.write(buffer.getbuffer()))


def _inflate(path: Path, schema: Schema, key: str, blob: bytes) -> np.ndarray:
    """A `compressed` field from its zlib stream; FormatError when it does not inflate to whole rows."""
    dtype, shape = schema.arrays[key]
    raw = zlib.decompress(blob)
    row = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
    if len(raw) % row:
        raise FormatError(f"{path}: field {key!r} holds {len(raw)} bytes, not a whole number of {shape[1:]} rows")
    return np.frombuffer(raw, dtype).reshape(-1, *shape[1:])


def read_npz(
    path: Path, schema: Schema, sizes: Mapping[str, int], fields: Iterable[str] | None = None
) -> dict[str, np.ndarray]:
    """Read and validate `fields` (default: all) of a per-episode npz; FormatError on any defect."""
    path = Path(path)
    wanted = list(schema.arrays) + list(schema.scalars) if fields is None else list(fields)
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {}
            for key in wanted:
                if key in schema.compressed and f"{key}.zlib" in npz.files:
                    data[key] = _inflate(path, schema, key, npz[f"{key}.zlib"])
                elif key in npz.files:
                    data[key] = npz[key]
    except FileNotFoundError:
        raise FormatError(f"{path}: {schema.name} file is missing") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as err:
        raise FormatError(f"{path}: corrupt or truncated {schema.name} file ({err})") from None
    partial = Schema(
        schema.name,
        {k: v for k, v in schema.arrays.items() if k in wanted},
        {k: v for k, v in schema.scalars.items() if k in wanted},
    )
    partial.check(path, data, sizes)
    return data


def episode_path(record_dir: Path, index: int) -> Path:
    """Where episode `index` lives in `record_dir`."""
    return Path(record_dir) / f"ep_{index:06d}.npz"


def write_episode(
    path: Path, task: Task, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, done: np.ndarray, seed: int
) -> None:
    """Validate and atomically write one episode (obs uint8 [T,64,64,3], action float32 [T,A], ...)."""
    write_npz(
        path,
        EPISODE,
        {
            "obs": obs,
            "action": action,
            "reward": reward,
            "done": done,
            "task": np.str_(task.name),
            "seed": np.int64(seed),
        },
        {"A": task.action_dim},
    )


def read_episode(path: Path, task: Task | None = None, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Read one episode file; validates shapes, dtypes and (given `task`) the task it was recorded for."""
    if task is not None and fields is not None and "task" not in fields:
        fields = list(fields) + ["task"]
    data = read_npz(path, EPISODE, {}, fields)
    if task is not None:
        if str(data["task"]) != task.name:
            raise FormatError(f"{path}: episode was recorded for task {str(data['task'])!r}, not {task.name!r}")
        if "action" in data and data["action"].shape[1] != task.action_dim:
            raise FormatError(
                f"{path}: field 'action' has shape {data['action'].shape}; expected A = {task.action_dim}"
            )
    return data


def list_episodes(record_dir: Path, made_by: str = "stage 1, env.extract") -> list[Path]:
    """The per-episode files `ep_<index>.npz` in `record_dir`, in index order; a UserError naming the
    stage that `made_by` them if there are none."""
    record_dir = Path(record_dir)
    if not record_dir.is_dir():
        raise UserError(f"{record_dir}: no such directory (run {made_by}, first)")
    paths = sorted(p for p in record_dir.iterdir() if EPISODE_PATTERN.match(p.name))
    if not paths:
        raise UserError(f"{record_dir}: contains no episode files (run {made_by}, first)")
    return paths


def frame_locations(paths: Sequence[Path]) -> tuple[list[int], list[int]]:
    """Byte offset and size of each episode file's `obs.zlib` stream, read from the zip headers; a UserError
    naming the file and the converter for a file of the older layout."""
    offsets, sizes = [], []
    for path in paths:
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                if FRAMES_MEMBER not in names:
                    if OLDER_FRAMES_MEMBER in names:
                        raise UserError(
                            f"{path}: episode file of the older layout (uncompressed {OLDER_FRAMES_MEMBER}); convert the record "
                            f"once with: python -m env.episodes --convert {Path(path).parent}"
                        )
                    raise FormatError(f"{path}: episode field 'obs' is missing")
                info = zf.getinfo(FRAMES_MEMBER)
            with open(path, "rb") as f:
                f.seek(info.header_offset)
                header = f.read(30)
        except (zipfile.BadZipFile, OSError) as err:
            raise FormatError(f"{path}: corrupt or truncated episode file ({err})") from None
        if len(header) < 30 or header[:4] != b"PK\x03\x04" or info.compress_type != zipfile.ZIP_STORED:
            raise FormatError(f"{path}: corrupt episode file (bad header of member {FRAMES_MEMBER})")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        offsets.append(info.header_offset + 30 + name_length + extra_length)
        sizes.append(info.compress_size)
    return offsets, sizes


def frame_dataset(
    paths: Sequence[Path], task: Task, batch_size: int, seed: int, shuffle_buffer: int = 10_000, cycle_length: int = 8
):
    """tf.data stream of uint8 [batch, 64, 64, 3] frame batches from episode files, all in TensorFlow's C++.

    Episode order is reshuffled every pass; episodes are read and inflated in parallel (`tf.io.read_file`,
    `tf.io.decode_compressed`), the frames of `cycle_length` episodes are interleaved and shuffled through a
    buffer of `shuffle_buffer` frames. Memory is bounded by the buffer and the episodes in flight:
    `unbatch` copies every frame out of its episode, so a buffered frame never keeps its episode alive. zlib's
    checksum fails a corrupt episode before any of its frames is emitted; `first_bad_episode` then names it.
    The last partial batch is dropped (as the original).
    """
    import tensorflow as tf

    offsets, sizes = frame_locations(paths)

    def frames_of(path, offset, size):
        stream = tf.strings.substr(tf.io.read_file(path), offset, size)
        raw = tf.io.decode_raw(tf.io.decode_compressed(stream, compression_type="ZLIB"), tf.uint8)
        return tf.reshape(raw, (-1, FRAME_SIZE, FRAME_SIZE, 3))

    files = tf.data.Dataset.from_tensor_slices(([str(p) for p in paths], offsets, sizes))
    files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    episodes = files.map(frames_of, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    frames = episodes.interleave(
        lambda episode: tf.data.Dataset.from_tensors(episode).unbatch(), cycle_length=cycle_length, block_length=1
    )
    frames = frames.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return frames.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def first_bad_episode(paths: Sequence[Path], task: Task) -> FormatError | None:
    """The error naming the first of `paths` that does not read as an episode of `task`, or None."""
    for path in paths:
        try:
            read_episode(path, task, fields=("obs",))
        except FormatError as err:
            return err
    return None


def convert(record_dir: Path) -> int:
    """Rewrite the episode files of `record_dir` that have the older layout; returns how many."""
    converted = 0
    for path in list_episodes(record_dir):
        with zipfile.ZipFile(path) as zf:
            if FRAMES_MEMBER in zf.namelist():
                continue
        data = read_episode(path)
        task = get_task(str(data["task"]))
        write_episode(path, task, data["obs"], data["action"], data["reward"], data["done"], int(data["seed"]))
        converted += 1
    return converted


def record_fingerprint(record_dir: Path) -> str | None:
    """What identifies the episodes of `record_dir` beyond their file names: sha256 of stage 1's settings (less
    those a rerun may change, and the run directory) and inputs; None when `record_dir` has no stage 1 record."""
    path = Path(record_dir) / RECORD
    if not path.exists():
        return None
    record = read_json(path)
    ignored = {*RECORD_RESUMABLE, *ALWAYS_RESUMABLE}
    settings = {k: v for k, v in (record.get("settings") or {}).items() if k not in ignored}
    blob = json.dumps({"settings": settings, "inputs": record.get("inputs") or {}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class ConvertConfig:
    """Rewrite the episode files of the older layout (uncompressed obs.npy) in a record directory."""

    convert: str = field(metadata={"help": "a record directory (OUT/record)"})


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(ConvertConfig, argv)
    print(f"{config.convert}: {convert(Path(config.convert))} episode file(s) converted", flush=True)
    return 0


if __name__ == "__main__":
    run(main)
