"""Atomic writes and the per-stage `config.json` (resolved settings, library versions, git commit)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from env.common.cli import UserError

_VERSIONED = ("numpy", "gymnasium", "vizdoom", "tensorflow", "keras", "tensorflow-probability", "cma", "mpi4py")


TEMPORARY = ".tmp"
"""Every temporary file of an atomic write is named `.<final name>.<…>.tmp[<suffix>]`."""


def is_temporary(path: Path) -> bool:
    """Whether `path` is the temporary file of an atomic write (left behind only by an interrupted one)."""
    name = Path(path).name
    return name.startswith(".") and TEMPORARY in name


def temporary_beside(path: Path, suffix: str = "") -> Path:
    """A temporary name beside `path` for writers that need a fixed `suffix` (Keras: `.keras`, `.weights.h5`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY}{suffix}")


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call `write(fileobj)` on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    atomic_write(Path(path), lambda f: json.dump(obj, f, indent=2, sort_keys=True, default=str), mode="w")


def read_json(path: Path) -> Any:
    """Read a JSON file; a UserError naming the file if it is missing or malformed."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def ensure_dir(path: Path) -> Path:
    """Create `path` (and parents); a UserError if it cannot be created or written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create directory {path}: {err.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"directory {path} is not writable")
    return path


def set_aside(path: Path) -> Path:
    """Rename the directory `path` to `<name>.previous` (or `.previous.2`, `.3`, ... if taken), keeping every
    earlier one; → the new name. Used when a stage is rerun with other settings and starts afresh."""
    path = Path(path)
    target, k = path.with_name(path.name + ".previous"), 1
    while target.exists():
        k += 1
        target = path.with_name(f"{path.name}.previous.{k}")
    path.rename(target)
    return target


def git_commit() -> str:
    """The project's current commit (with '+dirty' when the tree has changes), or 'unknown'."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape results."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def stage_record(config: Any, **extra: Any) -> dict[str, Any]:
    """What a stage writes to its `config.json`: the resolved settings (and each flag's default) plus versions and
    commit."""
    defaults = {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
    return {
        "defaults": defaults,
        "settings": dataclasses.asdict(config),
        "versions": library_versions(),
        "commit": git_commit(),
        **extra,
    }
