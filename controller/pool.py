"""Where jobs run: in-process, in worker processes, or on MPI ranks — one `map(jobs)` for all three.

Under `mpirun -np N` (N > 1) rank 0 is the master: it alone runs CMA-ES and writes files, and
ranks 1..N-1 play the jobs it hands out, one at a time to whichever rank is free, so N − 1 need not
divide the population and results never depend on N. Jobs and results cross MPI pickled, so
parameters keep every bit of their float64 values (the original sent integers, θ rounded to 1e-4).
Waiting ranks poll with short sleeps instead of MPICH's spinning receive, so an idle master or
worker leaves its core to the ranks that are playing.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from controller.rollouts import Job, JobResult, JobRunner, RolloutSpec
from env.common.processes import init_worker, stop_processes

TAG_SPEC, TAG_JOB, TAG_RESULT, TAG_STOP, TAG_DONE = 1, 2, 3, 4, 5
POLL_SECONDS = (0.0005, 0.02)
"""First and longest sleep between polls of a waiting rank (the sleep doubles while nothing arrives)."""


def mpi_world() -> Any | None:
    """MPI.COMM_WORLD when this process was launched by mpirun with more than one rank, else None
    (then mpi4py is not imported at all, and no MPI library is needed)."""
    size = os.environ.get("PMI_SIZE") or os.environ.get("OMPI_COMM_WORLD_SIZE") or "1"
    if int(size) <= 1:
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD


def _poll_recv(comm, source: int | None, tag: int | None) -> tuple[Any, int, int]:
    """Receive the next message from `source` with `tag` (None = any) without spinning → (message, source, tag)."""
    from mpi4py import MPI

    source = MPI.ANY_SOURCE if source is None else source
    tag = MPI.ANY_TAG if tag is None else tag
    status = MPI.Status()
    sleep = POLL_SECONDS[0]
    while not comm.Iprobe(source=source, tag=tag, status=status):
        time.sleep(sleep)
        sleep = min(2 * sleep, POLL_SECONDS[1])
    message = comm.recv(source=status.Get_source(), tag=status.Get_tag())
    return message, status.Get_source(), status.Get_tag()


def _run_job(rollouts: JobRunner | None, failure: str, job: Job) -> tuple[str, Any]:
    if rollouts is None:
        return "error", failure
    try:
        return "ok", rollouts.run(job)
    except Exception:
        return "error", traceback.format_exc()


def _build(spec: RolloutSpec) -> tuple[JobRunner | None, str]:
    try:
        return JobRunner(spec), ""
    except Exception:
        return None, traceback.format_exc()


class SerialPool:
    """Plays the jobs in this process."""

    workers = 1

    def __init__(self, spec: RolloutSpec):
        self.rollouts = JobRunner(spec)

    def map(self, jobs: Sequence[Job]) -> list[JobResult]:
        return [self.rollouts.run(job) for job in jobs]

    def close(self) -> None:
        self.rollouts.close()


class MPIPool:
    """Rank 0's side: hands jobs to ranks 1..N-1 as they become free; results come back in job order."""

    def __init__(self, comm, spec: RolloutSpec):
        self.comm = comm
        self.workers = comm.Get_size() - 1
        for rank in range(1, comm.Get_size()):
            comm.send(spec, dest=rank, tag=TAG_SPEC)

    def map(self, jobs: Sequence[Job]) -> list[JobResult]:
        pending = deque(enumerate(jobs))
        results: list[Any] = [None] * len(jobs)
        idle = deque(range(1, self.comm.Get_size()))
        busy = 0
        while pending or busy:
            while pending and idle:
                self.comm.send(pending.popleft(), dest=idle.popleft(), tag=TAG_JOB)
                busy += 1
            (index, (status, payload)), rank, _ = _poll_recv(self.comm, None, TAG_RESULT)
            busy -= 1
            idle.append(rank)
            if status == "error":
                raise RuntimeError(f"MPI rank {rank} failed on a job:\n{payload}")
            results[index] = payload
        return results

    def close(self) -> None:
        for rank in range(1, self.comm.Get_size()):
            self.comm.send(None, dest=rank, tag=TAG_STOP)


def serve_mpi(comm) -> bool:
    """Ranks 1..N-1: build the env and agent from rank 0's spec, play jobs until told to stop. A None spec
    (rank 0 stopped before playing anything) ends the session at once. → False when rank 0 said that no
    further session follows (`release_mpi_workers`), True otherwise."""
    spec, _, tag = _poll_recv(comm, 0, None)
    if tag == TAG_DONE:
        return False
    if tag == TAG_STOP or spec is None:
        return True
    rollouts, failure = _build(spec)
    try:
        while True:
            message, _, tag = _poll_recv(comm, 0, None)
            if tag == TAG_STOP:
                return True
            index, job = message
            comm.send((index, _run_job(rollouts, failure, job)), dest=0, tag=TAG_RESULT)
    finally:
        if rollouts is not None:
            rollouts.close()


def serve_mpi_sessions(comm) -> None:
    """Ranks 1..N-1 of a command that runs several stages in turn: serve each until rank 0 releases them."""
    while serve_mpi(comm):
        continue


def release_mpi_workers(comm) -> None:
    """Tell ranks 1..N-1 that waiting in `serve_mpi` loops can end: no further session follows."""
    for rank in range(1, comm.Get_size()):
        comm.send(None, dest=rank, tag=TAG_DONE)


def stop_mpi_workers(comm) -> None:
    """Release ranks 1..N-1 that are still waiting for a spec (rank 0 stopped before training)."""
    for rank in range(1, comm.Get_size()):
        comm.send(None, dest=rank, tag=TAG_STOP)


def _process_worker(spec: RolloutSpec, jobs, results) -> None:
    init_worker()
    rollouts, failure = _build(spec)
    try:
        while (item := jobs.get()) is not None:
            index, job = item
            results.put((index, _run_job(rollouts, failure, job)))
    finally:
        if rollouts is not None:
            rollouts.close()


class ProcessPool:
    """`workers` spawned processes sharing one job queue (used where there is no MPI)."""

    def __init__(self, spec: RolloutSpec, workers: int):
        ctx = mp.get_context("spawn")
        self.workers = workers
        self.jobs, self.results = ctx.Queue(), ctx.Queue()
        self.processes = [
            ctx.Process(target=_process_worker, args=(spec, self.jobs, self.results), daemon=True)
            for _ in range(workers)
        ]
        for process in self.processes:
            process.start()

    def map(self, jobs: Sequence[Job]) -> list[JobResult]:
        for item in enumerate(jobs):
            self.jobs.put(item)
        results: list[Any] = [None] * len(jobs)
        for _ in jobs:
            while True:
                try:
                    index, (status, payload) = self.results.get(timeout=5.0)
                    break
                except queue.Empty:
                    dead = [p for p in self.processes if p.exitcode is not None]
                    if dead:
                        raise RuntimeError(f"a rollout worker died (exit code {dead[0].exitcode})") from None
            if status == "error":
                raise RuntimeError(f"a rollout worker failed on a job:\n{payload}")
            results[index] = payload
        return results

    def close(self) -> None:
        """Drop the jobs not yet taken, let each worker finish its job and close its env; SIGTERM, then SIGKILL,
        those that do not stop."""
        with contextlib.suppress(queue.Empty):
            while True:
                self.jobs.get_nowait()
        for _ in self.processes:
            self.jobs.put(None)
        for process in self.processes:
            process.join(timeout=10)
        stop_processes(self.processes)


class PoolScope:
    """Rank 0's side of a stage's pool: `open` builds it (MPI under mpirun, else `fallback(spec)`), and leaving
    the scope always closes it — or, if rank 0 stopped before opening one, releases the waiting ranks."""

    def __init__(self, comm):
        self.comm = comm
        self.pool = None

    def open(self, spec: RolloutSpec, fallback: Callable[[RolloutSpec], Any]):
        self.pool = MPIPool(self.comm, spec) if self.comm is not None else fallback(spec)
        return self.pool

    def __enter__(self) -> PoolScope:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.close()
        elif self.comm is not None:
            stop_mpi_workers(self.comm)
