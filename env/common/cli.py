"""Command-line plumbing shared by every stage: dataclass configs as flags, one-line user errors."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

C = TypeVar("C")


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing or corrupt artifact); reported as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise UserError(f"{message} (see --help)")


def _flag_type(tp: Any) -> Any:
    if tp in (int, float, str):
        return tp
    if tp is bool:
        return _parse_bool
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_type(args[0])
    raise TypeError(f"unsupported config field type {tp!r}")


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def parse_config(cls: type[C], argv: Sequence[str] | None, description: str = "") -> C:
    """Parse `argv` into the dataclass `cls`: one `--flag-name` per field, its `help` metadata as help text."""
    parser = _Parser(description=description or (cls.__doc__ or "").strip().splitlines()[0])
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        default = field.default
        if default is dataclasses.MISSING:
            parser.add_argument(
                f"--{field.name.replace('_', '-')}",
                dest=field.name,
                required=True,
                type=_flag_type(hints[field.name]),
                help=field.metadata.get("help", ""),
            )
            continue
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            dest=field.name,
            default=default,
            type=_flag_type(hints[field.name]),
            help=f"{field.metadata.get('help', '')} (default: {default})",
        )
    return cls(**vars(parser.parse_args(argv)))


def check_stage_flags(config: Any, at_least_one: Sequence[str] = ()) -> None:
    """The checks every stage makes: `--out` given, `--seed` within numpy's [0, 2^32), and each field in
    `at_least_one` ≥ 1; else a UserError."""
    if not getattr(config, "out", ""):
        raise UserError("--out is required (the run directory)")
    seed = getattr(config, "seed", 0)
    if not 0 <= seed < 2**32:
        raise UserError(f"--seed must be a non-negative integer below 2^32 (numpy's seeding), got {seed}")
    for name in at_least_one:
        if getattr(config, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")


def run(main: Callable[[Sequence[str] | None], Any]) -> None:
    """Run a stage's `main` as a program: a UserError becomes one line on stderr and exit status 2; Ctrl-C and
    SIGTERM unwind through the stage's `finally` blocks (closing envs and workers) and exit with 130 and 143."""
    from env.common.processes import Terminated, exit_on_sigterm

    exit_on_sigterm()
    try:
        code = main(None)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except Terminated as stop:
        print("terminated: rerun the same command to resume", file=sys.stderr)
        sys.exit(stop.code)
    sys.exit(code or 0)
