"""The run-directory contract, the one rule every stage follows on a rerun.

A stage writes its output (a directory such as `OUT/vae/`, or a result file such as `OUT/eval/zh.json`)
together with a record: its resolved settings and the fingerprints of what it read (`inputs`). When the
stage runs again, `open_output` compares the record on disk with the one it would write now:

| on disk                                   | the stage                                                    |
|-------------------------------------------|--------------------------------------------------------------|
| nothing                                   | starts ('new')                                               |
| same settings and inputs, not finished    | continues where it stopped ('resume')                        |
| same settings and inputs, finished        | does nothing ('complete')                                    |
| other settings or inputs (or no record)   | refuses in one line, or with `restart` (run.sh) sets the old |
|                                           | output aside as `<name>.previous` (`.previous.2`, ...) and   |
|                                           | starts afresh ('new')                                        |

Settings named in `resumable` (an output folder, a worker count, a generation target) may differ
between a run and its continuation. Nothing is ever deleted but the temporary files an interrupted
write left behind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from env.common.cli import UserError
from env.common.files import ensure_dir, is_temporary, read_json, set_aside

NEW, RESUME, COMPLETE = "new", "resume", "complete"
ALWAYS_RESUMABLE = ("out", "restart_on_change")
"""Settings that never change what a stage computes."""
RECORD = "config.json"
"""The record of a directory output, inside it."""


def finished(previous: dict[str, Any]) -> bool:
    """The default completeness test: the record holds the stage's final `result`."""
    return "result" in previous


def changes(previous: dict[str, Any], record: dict[str, Any], resumable: Sequence[str] = ()) -> list[str]:
    """What differs between two records, as 'name=old (now new)', ignoring `resumable` settings and a setting the
    earlier record lacks (a flag added since) that is at its default now. A record's `implied` settings say what
    such a setting was before its flag existed (the car's engine: gymnasium) when that differs from its default."""
    ignored = set(resumable) | set(ALWAYS_RESUMABLE)
    before = {**record.get("implied", {}), **previous.get("settings", {})}
    now, defaults = record.get("settings", {}), record.get("defaults", {})
    ignored |= {k for k in now if k not in before and k in defaults and now[k] == defaults[k]}
    found = [
        f"--{k.replace('_', '-')}={before.get(k)!r} (now {now.get(k)!r})"
        for k in sorted(set(before) | set(now))
        if k not in ignored and before.get(k) != now.get(k)
    ]
    before, now = previous.get("inputs") or {}, record.get("inputs") or {}
    found += [
        f"input {k} {before.get(k)!r} (now {now.get(k)!r})"
        for k in sorted(set(before) | set(now))
        if before.get(k) != now.get(k)
    ]
    return found


def clean_temporary(output: Path) -> int:
    """Delete the temporary files interrupted atomic writes left in `output` (recursively) → how many."""
    if not output.is_dir():
        return 0
    stale = [p for p in output.rglob(".*") if p.is_file() and is_temporary(p)]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def _previous_record(output: Path, record_file: Path) -> tuple[dict[str, Any] | None, str]:
    """The record on disk → (record or None, why it cannot be compared: '' when it can or there is none)."""
    if record_file.exists():
        try:
            previous = read_json(record_file)
        except UserError as err:
            return None, f"its record is unreadable ({err})"
        if not isinstance(previous, dict):
            return None, f"its record {record_file} is not a JSON object"
        return previous, ""
    if output.is_dir() and any(not is_temporary(p) for p in output.iterdir()):
        return None, f"it holds files but no record ({record_file.name})"
    return None, ""


def open_output(
    output: Path,
    record: dict[str, Any],
    *,
    stage: str,
    restart: bool = False,
    resumable: Sequence[str] = (),
    complete: Callable[[dict[str, Any]], bool] = finished,
    record_file: Path | None = None,
    force: bool = False,
) -> str:
    """Decide what a stage does with `output` given the `record` it would write → NEW, RESUME or COMPLETE.

    `output` is a directory whose record is `output/config.json`, or a file that is its own record
    (`record_file=output`). A directory output exists (empty when NEW) when this returns. A changed
    output raises a UserError naming what changed, or with `restart` is set aside and NEW is returned;
    `force` sets aside an unchanged output too."""
    output = Path(output)
    is_dir = record_file is None
    record_file = output / RECORD if record_file is None else Path(record_file)
    previous, unreadable = _previous_record(output, record_file)
    if previous is None and not unreadable:
        if is_dir:
            ensure_dir(output)
            clean_temporary(output)
        return NEW
    why = unreadable or ", ".join(changes(previous, record, resumable)) or ("asked to redo it" if force else "")
    if why:
        if not (restart or force):
            raise UserError(
                f"{output} was made with other settings or inputs: {why}; rerun with those, use another --out, "
                f"--restart-on-change true, or delete {output}"
            )
        moved = set_aside(output)
        if is_dir:
            ensure_dir(output)
        print(f"[{stage}] {output} starts afresh: {why}; the earlier one is now {moved}", flush=True)
        return NEW
    clean_temporary(output)
    return COMPLETE if complete(previous) else RESUME
