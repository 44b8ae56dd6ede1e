"""Run one pipeline step for run.sh and log what it cost: a header line, the command, its wall and CPU time.

    python -m env.common.stagelog --out OUT --stage 5 --name controller -- python -m controller.train ...

Appends {"stage", "name", "command", "wall_seconds", "cpu_seconds", "exit_code", "finished"} to
OUT/stages.json and exits with the command's status. CPU time is the user + system time of the command
and of every process it waited for (MPI ranks under mpirun included). A stage that finds its
artifacts complete costs seconds, so summing a stage's entries gives the compute it really took.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from env.common.files import atomic_write, ensure_dir

LOG = "stages.json"


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_log(run_dir: Path) -> list[dict]:
    """OUT/stages.json as a list (empty when missing or unreadable)."""
    try:
        entries = json.loads((run_dir / LOG).read_text())
    except (OSError, ValueError):
        return []
    return entries if isinstance(entries, list) else []


def append_log(run_dir: Path, entry: dict) -> None:
    entries = read_log(run_dir) + [entry]
    atomic_write(ensure_dir(run_dir) / LOG, lambda f: f.write(json.dumps(entries, indent=1)), mode="w")


def run_step(run_dir: Path, stage: int, name: str, command: Sequence[str]) -> int:
    """Run `command` and log it → its exit status (128 + N when signal N ended it, as a shell reports).

    The command shares this process group, so Ctrl-C reaches it directly and is ignored here while it
    runs; a SIGTERM sent to this process alone is passed on."""
    print(f"=== stage {stage}: {name} ===", flush=True)
    wall, cpu = time.perf_counter(), children_cpu_seconds()
    child = None
    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: child and child.terminate()),
    }
    try:
        child = subprocess.Popen(list(command), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    code = 128 - code if code < 0 else code
    wall, cpu = time.perf_counter() - wall, children_cpu_seconds() - cpu
    append_log(
        run_dir,
        {
            "stage": stage,
            "name": name,
            "command": " ".join(command),
            "wall_seconds": round(wall, 1),
            "cpu_seconds": round(cpu, 1),
            "exit_code": code,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    status = "" if code == 0 else f", FAILED with exit status {code}"
    print(f"[stage {stage}] {name}: wall time {wall:.0f} s, CPU {cpu:.0f} s{status}", flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m env.common.stagelog --out OUT --stage N --name NAME -- COMMAND..."
    if "--" not in args:
        print(usage, file=sys.stderr)
        return 2
    split = args.index("--")
    options, command = args[:split], args[split + 1 :]
    values = dict(zip(options[::2], options[1::2]))
    if (
        len(options) != 6
        or set(values) != {"--out", "--stage", "--name"}
        or not command
        or not values["--stage"].isdigit()
    ):
        print(usage, file=sys.stderr)
        return 2
    return run_step(Path(values["--out"]), int(values["--stage"]), values["--name"], command)


if __name__ == "__main__":
    sys.exit(main())
