"""Nothing left behind: killed Doom stages leave no VizDoom engine; run.sh's stage launcher filters TF start-up noise.

Each run here starts in a session of its own, so the processes it leaves are exactly those still in that session
(engines and multiprocessing resource trackers keep their session), whatever else runs on the machine.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from env.common.processes import descendants, engine_instance
from env.common.stagelog import NO_GPU_NOISE, STARTUP_NOISE, startup_noise_filter
from env.tasks import get_task
from env.wrappers import make_env
from tests.conftest import ROOT

PY = sys.executable
EXTRACT = [PY, "-m", "env.extract", "--task", "doom", "--episodes", "40", "--max-steps", "300", "--workers", "2"]
WARNING = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
ONEDNN = (
    b"I0000 00:00:1796284610.778896    3575 port.cc:153] oneDNN custom operations are on. You may see slightly "
    b"different numerical results due to floating-point round-off errors from different computation orders. To "
    b"turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n"
)
CUINIT = (
    b"E0000 00:00:1796284613.443977    3575 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    b"Failed call to cuInit: UNKNOWN ERROR (303)\n"
)
REAL_ERROR = b"E0000 00:00:1796284613.5    3575 op_kernel.cc:1857] OP_REQUIRES failed: out of memory\n"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def session_processes(sid: int) -> dict[int, str]:
    """pid → command line of every live process in session `sid`."""
    found = {}
    for name in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{name}/stat").read_bytes().rsplit(b")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != b"Z":
                found[int(name)] = cmdline(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def wait_for_engines(proc, out, playing, count=2, timeout=120.0):
    """Wait until `count` VizDoom engines run under `proc` (and, if `playing`, an episode is in `out`) → {pid:
    instance id}."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the stage ended before it could be killed"
        engines = {pid: engine_instance(pid) for pid in descendants(proc.pid)}
        engines = {pid: instance for pid, instance in engines.items() if instance}
        if len(engines) >= count and (not playing or list(out.glob("record/ep_*.npz"))):
            return engines
        time.sleep(0.01)
    raise AssertionError("the engines did not start")


def assert_nothing_left(sid, engines, timeout=10.0):
    deadline = time.monotonic() + timeout
    while session_processes(sid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = session_processes(sid)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"left behind: {left}"
    leftover_files = [f for i in engines.values() for f in Path("/dev/shm").glob(f"ViZDoom*{i}")]
    assert not leftover_files


@pytest.mark.parametrize("playing", [False, True], ids=["engines-starting", "playing"])
@pytest.mark.parametrize("target", ["stage", "group"])
def test_a_doom_extract_sigtermed_mid_run_leaves_no_engine(tmp_path, target, playing):
    """SIGTERM to the stage alone (its workers end with it), or to its whole process group (as `timeout` does:
    workers and engines get it too), while the engines start or while episodes are played."""
    proc = subprocess.Popen(
        [*EXTRACT, "--out", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    engines = wait_for_engines(proc, tmp_path, playing)
    os.kill(proc.pid if target == "stage" else -proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr.decode()[-2000:]
    assert stderr.decode().strip().endswith("terminated: rerun the same command to resume")
    assert_nothing_left(proc.pid, engines)


def test_a_doom_extract_sigkilled_under_stagelog_leaves_no_engine(tmp_path):
    """The stage and its workers SIGKILLed (as the OOM killer would): only their engines survive them, idle, and the
    stage launcher ends those."""
    launcher = [PY, "-m", "env.common.stagelog", "--out", str(tmp_path), "--stage", "1", "--name", "extract", "--"]
    proc = subprocess.Popen(
        [*launcher, *EXTRACT, "--out", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    engines = wait_for_engines(proc, tmp_path, playing=True)
    stage = [pid for pid in descendants(proc.pid) if pid not in engines and "resource_tracker" not in cmdline(pid)]
    for pid in stage:
        os.kill(pid, signal.SIGSTOP)  # none may close an engine before all are killed
    for pid in stage:
        os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == 137
    assert json.loads((tmp_path / "stages.json").read_text())[-1]["exit_code"] == 137
    assert_nothing_left(proc.pid, engines, timeout=1.0)


def test_a_closed_doom_env_leaves_no_engine_or_shared_memory():
    env = make_env(get_task("doom"), max_steps=10)
    ((pid, instance),) = env._engines.items()
    assert engine_instance(pid) == instance and list(Path("/dev/shm").glob(f"ViZDoom*{instance}"))
    env.close()
    assert engine_instance(pid) == "" and not list(Path("/dev/shm").glob(f"ViZDoom*{instance}"))


def test_a_doom_env_makes_its_engine_directory_before_the_engine_starts(tmp_path, monkeypatch):
    """The engine makes ./_vizdoom/ on its first start in a directory; two workers starting together in a fresh one
    raced for it, and the loser's engine died (SIGSEGV)."""
    import env.wrappers as wrappers

    seen = []
    start = wrappers._start

    def start_and_look(game):
        seen.append(Path("_vizdoom").is_dir())
        return start(game)

    monkeypatch.setattr(wrappers, "_start", start_and_look)
    monkeypatch.chdir(tmp_path)
    make_env(get_task("doom"), max_steps=5).close()
    assert seen == [True]


def feed_in_pieces(data: bytes, sizes, gpu=False) -> list[bytes]:
    line_filter = startup_noise_filter(gpu=gpu)
    out, start = [], 0
    for size in sizes:
        out.append(line_filter.feed(data[start : start + size]))
        start += size
    out.append(line_filter.feed(data[start:]))
    out.append(line_filter.flush())
    return out


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_the_filter_drops_whole_startup_lines_only(size):
    kept = b"step 1\nWARNING: something else\nI0000 00:00:1.5 1 other.cc:9] an info line\n" + REAL_ERROR
    data = WARNING + ONEDNN + kept + ONEDNN + CUINIT + b"done"
    pieces = [size] * (len(data) // size)
    assert b"".join(feed_in_pieces(data, pieces)) == kept + b"done"
    assert b"".join(feed_in_pieces(data, pieces, gpu=True)) == kept + CUINIT + b"done"


def test_the_filter_passes_progress_bars_at_once():
    line_filter = startup_noise_filter(gpu=False)
    assert line_filter.feed(b"\r  0%|          | 0/4") == b"\r  0%|          | 0/4"
    assert line_filter.feed(b"\r 25%|##        | 1/4") == b"\r 25%|##        | 1/4"
    assert line_filter.feed(b" [00:01]\n") == b" [00:01]\n"
    assert line_filter.feed(b"I0000 00:00:") == b""  # perhaps the start of a noise line: held back
    assert line_filter.feed(b"1.5 1 other.cc:9] kept\n") == b"I0000 00:00:1.5 1 other.cc:9] kept\n"
    assert line_filter.feed(b"E0000 00:") + line_filter.flush() == b"E0000 00:"


def test_the_noise_patterns_match_the_lines_they_name():
    noise = re.compile(b"|".join(STARTUP_NOISE + NO_GPU_NOISE))
    for line in (WARNING, ONEDNN, CUINIT):
        assert noise.fullmatch(line.rstrip(b"\n"))
    assert not noise.fullmatch(REAL_ERROR.rstrip(b"\n"))


def test_stagelog_filters_stderr_keeps_real_errors_and_the_exit_status(tmp_path):
    script = (
        "import os, subprocess, sys\n"
        f"os.write(2, {WARNING + ONEDNN + WARNING + ONEDNN!r})\n"
        "print('on stdout', flush=True)\n"
        f"os.write(2, {CUINIT + REAL_ERROR!r})\n"
        "subprocess.Popen(['sleep', '60'])  # orphaned at exit, holding stderr open\n"
        "sys.exit(3)\n"
    )
    launcher = [PY, "-m", "env.common.stagelog", "--out", str(tmp_path), "--stage", "4", "--name", "t", "--"]
    start = time.monotonic()
    proc = subprocess.Popen(
        [*launcher, PY, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    stdout, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - start < 20 and proc.returncode == 3
    assert stderr == (CUINIT if os.path.exists("/dev/nvidiactl") else b"") + REAL_ERROR
    assert b"on stdout" in stdout and b"FAILED with exit status 3" in stdout
    (entry,) = json.loads((tmp_path / "stages.json").read_text())
    assert entry["exit_code"] == 3 and entry["stage"] == 4 and entry["name"] == "t"
    assert_nothing_left(proc.pid, {}, timeout=0.0)
