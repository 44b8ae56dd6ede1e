"""Process hygiene: a stage and its workers, however they end, leave no process behind.

A VizDoom engine (`…/vizdoom/vizdoom`, one per Doom env) lives until its `DoomGame` is closed: it ignores
SIGTERM, does not notice its owner's death, and keeps its shared memory in /dev/shm and copies of its owner's
pipes (the multiprocessing resource tracker's among them, which keeps that tracker alive too). So an owner that
ends without `env.close()` (SIGTERM's default action, SIGKILL) leaves an idle engine forever. Hence: stage entry
points and spawned workers turn their first SIGTERM into an exception so `finally: env.close()` runs; workers
end when their master dies; a master SIGKILLs a worker's whole process tree when it does not stop; and run.sh's
stage launcher (env/common/stagelog.py) adopts and ends whatever a killed stage left.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Sequence
from multiprocessing.process import BaseProcess

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
ENGINE_FILES = ("ViZDoomSM", "ViZDoomMQCtr", "ViZDoomMQDoom")
"""/dev/shm names an engine's controller creates (prefix + instance id) and removes in `DoomGame.close()`."""
RESOURCE_TRACKER = b"multiprocessing.resource_tracker"


class Terminated(SystemExit):
    """Raised in the main thread by a process's first SIGTERM; exits with status 143, as the signal would."""


def exit_on_sigterm() -> None:
    """Make this process's first SIGTERM raise `Terminated` (so `finally` blocks run); later ones are ignored."""

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _prctl(option: int, value: int) -> bool:
    """prctl(2) → whether it succeeded (always False off Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, ctypes.c_ulong(value), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def init_worker() -> None:
    """In a spawned worker: Ctrl-C is left to its master, the first SIGTERM raises `Terminated`, and the master's
    death sends SIGTERM (Linux; the master must start workers from its main thread, as all stages do)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_on_sigterm()
    parent = mp.parent_process()
    if _prctl(PR_SET_PDEATHSIG, signal.SIGTERM) and parent is not None and os.getppid() != parent.pid:
        raise Terminated(128 + signal.SIGTERM)


def become_subreaper() -> bool:
    """Make orphaned descendants of this process its children instead of init's (Linux) → whether that worked."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def process_table() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, state letter) of every process (Linux /proc; empty elsewhere)."""
    table = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            table[int(name)] = (int(fields[1]), fields[0].decode())
    return table


def children(pid: int, table: dict[int, tuple[int, str]] | None = None) -> list[int]:
    """Live (not zombie) child processes of `pid`."""
    table = process_table() if table is None else table
    return [p for p, (parent, state) in table.items() if parent == pid and state != "Z"]


def descendants(pid: int, table: dict[int, tuple[int, str]] | None = None) -> list[int]:
    """Live descendants of `pid`, parents before their children."""
    table = process_table() if table is None else table
    found, frontier = [], [pid]
    while frontier:
        frontier = [p for parent in frontier for p in children(parent, table)]
        found += frontier
    return found


def _cmdline(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def engine_instance(pid: int) -> str:
    """The instance id of VizDoom engine process `pid` ('' when `pid` is not one)."""
    args = _cmdline(pid)
    if not args or os.path.basename(args[0]) != b"vizdoom" or b"+viz_instance_id" not in args:
        return ""
    index = args.index(b"+viz_instance_id") + 1
    instance = args[index].decode(errors="replace") if index < len(args) else ""
    return instance if instance.isalnum() else ""


def remove_engine_files(instance: str) -> None:
    """Unlink the /dev/shm shared memory and message queues of engine `instance` (its controller died unclosed)."""
    for prefix in ENGINE_FILES:
        with contextlib.suppress(OSError):
            os.unlink(f"/dev/shm/{prefix}{instance}")


def engine_children() -> dict[int, str]:
    """This process's live VizDoom engine children: pid → instance id."""
    engines = {pid: engine_instance(pid) for pid in children(os.getpid())}
    return {pid: instance for pid, instance in engines.items() if instance}


def end_engine(pid: int, instance: str, timeout: float = 1.0) -> bool:
    """Make sure engine `instance`, child `pid` of this process, is gone after its `DoomGame.close()` and so are its
    /dev/shm files: wait up to `timeout` s, then SIGKILL it → whether it had to be killed."""
    deadline = time.monotonic() + timeout
    killed = False
    while engine_instance(pid) == instance and pid in children(os.getpid()):
        if time.monotonic() > deadline:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.01)
    remove_engine_files(instance)
    return killed


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and its descendants (all found first, so none escapes to a new parent), removing the /dev/shm
    files of any VizDoom engine among them."""
    for p in [pid, *descendants(pid)]:
        instance = engine_instance(p)
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
        if instance:
            remove_engine_files(instance)


def stop_processes(processes: Sequence[BaseProcess], timeout: float = 10.0) -> None:
    """End worker processes: SIGTERM those alive, wait up to `timeout` s in all, then SIGKILL each survivor's tree."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            kill_tree(process.pid)
            process.join()


def _reap_zombies() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            continue


def end_orphans(grace: float = 1.0) -> list[int]:
    """End every remaining child of this process (a subreaper's adopted orphans) → their pids. Call it only after
    the children it waits for itself have been reaped.

    Each gets SIGTERM and `grace` s to run its `finally` blocks (closing envs); then each tree is SIGKILLed, except
    multiprocessing resource trackers, which ignore SIGTERM and exit by themselves once the last holder of their
    pipe is gone (unlinking the semaphores the dead left): they get another `grace` s."""
    start, seen, engines = time.monotonic(), [], []
    while True:
        _reap_zombies()
        orphans = children(os.getpid())
        if not orphans:
            for instance in engines:
                remove_engine_files(instance)
            return seen
        elapsed = time.monotonic() - start
        for pid in orphans:
            if pid not in seen:
                seen.append(pid)
                engines += [instance for instance in [engine_instance(pid)] if instance]
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
            if elapsed > 2 * grace or (elapsed > grace and RESOURCE_TRACKER not in b" ".join(_cmdline(pid))):
                kill_tree(pid)
        time.sleep(0.02)
