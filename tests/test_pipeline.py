"""run.sh end to end at the smoke preset, for both tasks: killed mid-run, rerun, complete artifacts and report.

These are the slowest tests of the suite (about 2 minutes each on 2 cores): each runs the whole pipeline,
kills it during a stage, and reruns it to the end.
"""

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import ROOT

RUN_SH = str(ROOT / "run.sh")


def start(args, log):
    return subprocess.Popen([RUN_SH, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def finished_stages(out):
    try:
        return [e["stage"] for e in json.loads((out / "stages.json").read_text())]
    except (OSError, ValueError):
        return []


def kill_during(args, out, stage, progress, log_path):
    """Start run.sh and SIGKILL its whole process group as soon as its output shows `progress`."""
    with open(log_path, "w") as log:
        proc = start(args, log)
        deadline = time.monotonic() + 600
        while progress not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert stage not in finished_stages(out) and stage - 1 in finished_stages(out)


def rerun(args, log_path):
    with open(log_path, "w") as log:
        proc = start(args, log)
        assert proc.wait(timeout=900) == 0, log_path.read_text()[-3000:]
    return log_path.read_text()


def check_complete(out, task, mode, extra_evals=()):
    for name in (mode, "random", *extra_evals):
        result = json.loads((out / "eval" / f"{name}.json").read_text())
        assert result["n"] == 4 and len(result["episodes"]) == 4 and result["settings"]["task"] == task
    report = (out / "report.md").read_text()
    assert f"`{mode}`" in report and "random policy" in report and "(n=4)" in report
    assert (out / "eval" / "returns.png").stat().st_size > 1000
    assert (out / "controller" / mode / "fitness.png").exists()
    assert "after 10 real frames" in report and (out / "rnn" / "dream_ep000000_tau1.00.png").exists()
    stages = finished_stages(out)
    assert set(stages) == {1, 2, 3, 4, 5, 6, 7}
    return report


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, np_, kill_stage, progress, resumed",
    [
        ("carracing", "1", 5, "[stage 5] gen 1/2", "generations 2..2"),  # C continues after its first generation
        ("doom", "2", 2, "[stage 2] doom: V", "[stage 2] doom: V"),  # V, killed before a checkpoint, trains again
    ],
)
def test_smoke_pipeline_survives_a_kill_and_a_rerun(tmp_path, task, np_, kill_stage, progress, resumed):
    out = tmp_path / "run"
    args = [task, "--preset", "smoke", "--np", np_, "--out", str(out)]
    kill_during(args, out, kill_stage, progress, tmp_path / "killed.log")
    text = rerun(args, tmp_path / "rerun.log")
    assert resumed in text
    assert "4 already done" in text  # stage 1's episodes are kept
    if kill_stage > 4:
        assert text.count("already trained with these settings; nothing to do") == 2  # V and M
    mode = "zh" if task == "carracing" else "zch"
    report = check_complete(out, task, mode, ("zch_dream",) if task == "doom" else ())
    assert ("906 ± 21" in report) == (task == "carracing") and ("1092 ± 556" in report) == (task == "doom")
    if task == "doom":
        assert "mpirun" in json.dumps(json.loads((out / "stages.json").read_text()))

    # A complete run is skipped stage by stage; only the report is written again.
    before = {p: p.stat().st_mtime for p in (out / "eval").glob("*.json")}
    text = rerun(args, tmp_path / "again.log")
    assert text.count("nothing to do") >= 4
    assert {p: p.stat().st_mtime for p in (out / "eval").glob("*.json")} == before


def test_run_sh_rejects_bad_arguments(tmp_path):
    for args, message in (
        (["pong"], "unknown argument"),
        (["--preset", "huge", "--out", str(tmp_path)], "unknown preset"),
        (["--np", "0"], "--np must be a positive integer"),
        (["--seed", "-1"], "--seed must be a non-negative integer"),
        (["--seed", "x"], "--seed must be a non-negative integer"),
        (["--seed", "4294967296"], "--seed must be a non-negative integer below 2^32"),
        (["--seed", "1", "--seeds", "0,1"], "--seed and --seeds exclude each other"),
        (["--seeds", "0,,1"], "--seeds must be comma-separated non-negative integers"),
        (["--seeds", "1,1"], "--seeds names a seed twice"),
        (["doom", "--rounds", "0"], "--rounds must be a positive integer"),
        (["carracing", "--rounds", "2"], "--rounds is for doom"),
    ):
        result = subprocess.run([RUN_SH, *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and not result.stdout, (args, result.stderr)
