"""Run one pipeline step for run.sh and log what it cost: a header line, the command, its wall and CPU time.

    python -m env.common.stagelog --out OUT --stage 5 --name controller -- python -m controller.train ...

Appends {"stage", "name", "command", "wall_seconds", "cpu_seconds", "exit_code", "finished"} to
OUT/stages.json and exits with the command's status. CPU time is the user + system time of the command
and of every process it waited for (MPI ranks under mpirun included). A stage that finds its
artifacts complete costs seconds, so summing a stage's entries gives the compute it really took.

Nothing outlives the step: on Linux this process adopts the command's orphaned descendants (a child
subreaper) and, once the command has ended, normally or killed, ends those still alive (SIGTERM, then
SIGKILL: a VizDoom engine whose owner was killed otherwise idles forever; env/common/processes.py).
The command's stderr passes through as it arrives (progress bars stay live) minus TensorFlow's known
start-up lines, which TF_CPP_MIN_LOG_LEVEL=2 does not silence (`STARTUP_NOISE`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from env.common.files import atomic_write, ensure_dir
from env.common.processes import become_subreaper, end_orphans

LOG = "stages.json"
STARTUP_NOISE = (
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    rb"I0000 00:00:[\d.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on\. .*",
)
"""Whole stderr lines dropped: what importing TensorFlow prints even with TF_CPP_MIN_LOG_LEVEL=2."""
NO_GPU_NOISE = (rb"E0000 00:00:[\d.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit: .*",)
"""Dropped only on machines without an NVIDIA device: with one, a failed cuInit is a real driver problem."""
NOISE_HEADS = (b"WARNING: All log messages before absl::InitializeLog()", b"I0000 00:00:", b"E0000 00:00:")
"""How every noise line starts: an unfinished line is held back only while it could still become one."""
DRAIN_SECONDS = 1.0
"""How long stderr is still read after the command ended (orphans may hold it open forever)."""


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


class LineFilter:
    """Bytes in → the same bytes out as they arrive, minus whole lines that `drop` matches (without their newline).
    An unfinished line is held back only while it starts with, or is the start of, one of `heads`."""

    def __init__(self, drop: re.Pattern[bytes], heads: Sequence[bytes]):
        self.drop, self.heads = drop, tuple(heads)
        self._held = b""
        self._passing = False
        """The current line has been let through in part, so the rest of it goes through too."""

    def feed(self, data: bytes) -> bytes:
        """The next bytes read → those that can be written now."""
        out = []
        while data:
            cut = data.find(b"\n") + 1 or len(data)
            piece, data = data[:cut], data[cut:]
            complete = piece.endswith(b"\n")
            if self._passing:
                out.append(piece)
            else:
                line, self._held = self._held + piece, b""
                if complete:
                    if not self.drop.fullmatch(line.rstrip(b"\r\n")):
                        out.append(line)
                elif any(head.startswith(line) or line.startswith(head) for head in self.heads):
                    self._held = line
                else:
                    out.append(line)
                    self._passing = True
            if complete:
                self._passing = False
        return b"".join(out)

    def flush(self) -> bytes:
        """At the end of the stream: the unfinished line still held back."""
        held, self._held = self._held, b""
        return held


def startup_noise_filter(gpu: bool | None = None) -> LineFilter:
    """The filter for a stage's stderr; `gpu` (default: /dev/nvidiactl exists) keeps failed-cuInit lines."""
    gpu = os.path.exists("/dev/nvidiactl") if gpu is None else gpu
    lines = STARTUP_NOISE if gpu else STARTUP_NOISE + NO_GPU_NOISE
    return LineFilter(re.compile(b"|".join(lines), re.DOTALL), NOISE_HEADS)


def _write_all(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(fd, data) :]


def relay(source: int, line_filter: LineFilter, ended: threading.Event, drain: float = DRAIN_SECONDS) -> None:
    """Copy `source` to stderr through `line_filter` until end of file, or until `drain` s after `ended` is set;
    then close `source`."""
    deadline = None
    while deadline is None or time.monotonic() < deadline:
        if deadline is None and ended.is_set():
            deadline = time.monotonic() + drain
        if not select.select([source], [], [], 0.05)[0]:
            continue
        try:
            data = os.read(source, 65536)
        except OSError:  # EIO: every holder of a pseudo-terminal's other end has closed it
            data = b""
        if not data:
            break
        _write_all(2, line_filter.feed(data))
    _write_all(2, line_filter.flush())
    os.close(source)


def _copy_window_size(terminal: int) -> None:
    """Give pseudo-terminal `terminal` this process's terminal size."""
    import fcntl
    import termios

    with contextlib.suppress(OSError):
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, fcntl.ioctl(2, termios.TIOCGWINSZ, b"\0" * 8))


def stderr_channel() -> tuple[int, int, bool]:
    """(read end, write end, is a terminal) for the command's stderr: when this process's stderr is a terminal, a
    pseudo-terminal of its size with output passed untouched (progress bars keep their width), else a pipe."""
    if os.isatty(2):
        try:
            import pty
            import termios

            reader, writer = pty.openpty()
            attributes = termios.tcgetattr(writer)
            attributes[1] &= ~termios.OPOST
            termios.tcsetattr(writer, termios.TCSANOW, attributes)
            _copy_window_size(writer)
            return reader, writer, True
        except (ImportError, OSError):
            pass
    reader, writer = os.pipe()
    return reader, writer, False


def run_step(run_dir: Path, stage: int, name: str, command: Sequence[str]) -> int:
    """Run `command` and log it → its exit status (128 + N when signal N ended it, as a shell reports).

    The command shares this process group, so Ctrl-C reaches it directly and is ignored here while it
    runs; a SIGTERM sent to this process alone is passed on. Its orphaned descendants still alive when it
    has ended are ended too (Linux)."""
    print(f"=== stage {stage}: {name} ===", flush=True)
    wall, cpu = time.perf_counter(), children_cpu_seconds()
    adopts_orphans = become_subreaper()
    reader, writer, terminal = stderr_channel()
    ended = threading.Event()
    relay_thread = threading.Thread(target=relay, args=(reader, startup_noise_filter(), ended), daemon=True)
    child = None
    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: child and child.terminate()),
    }
    if terminal:
        previous[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, lambda signum, frame: _copy_window_size(reader))
    try:
        try:
            child = subprocess.Popen(
                list(command), stderr=writer, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
            )
        finally:
            os.close(writer)
            relay_thread.start()
        code = child.wait()
        if adopts_orphans:
            end_orphans()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        ended.set()
        relay_thread.join()
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
