"""The run-directory contract (env/common/rundir.py): one table of what is on disk, what a rerun asks
for, and what must happen — new, resume, complete, refused, or set aside — with nothing ever deleted
but an interrupted write's temporary file."""

import json

import pytest

from env.common.cli import UserError
from env.common.rundir import COMPLETE, NEW, RESUME, open_output

RECORD = {"settings": {"epochs": 1, "checkpoint_every": 100, "out": "a"}, "inputs": {"frames": 9}}
DONE = {**RECORD, "result": {"loss": 1.0}}
RESUMABLE = {"resumable": ("checkpoint_every",)}
NEW_FLAG = {**RECORD, "settings": {**RECORD["settings"], "policy": ""}, "defaults": {"policy": ""}}
NEW_FLAG_SET = {**NEW_FLAG, "settings": {**NEW_FLAG["settings"], "policy": "left"}}
ENGINE = {**RECORD, "settings": {**RECORD["settings"], "backend": "envpool"}, "defaults": {"backend": ""}}
ENGINE_IMPLIED = {**ENGINE, "implied": {"backend": "gymnasium"}}
ENGINE_AS_BEFORE = {**ENGINE_IMPLIED, "settings": {**RECORD["settings"], "backend": "gymnasium"}}


def settings(**changed):
    return {**RECORD, "settings": {**RECORD["settings"], **changed}}


def inputs(**changed):
    return {**RECORD, "inputs": {**RECORD["inputs"], **changed}}


# on disk: None = nothing; "empty" = an empty directory; "files" = files but no record; "garbled" = a record
# that is not JSON; else the record found. Expected: a state, or ("refused", text of the error), with the
# names of the set-aside copies that must exist afterwards.
CASES = [
    ("nothing yet", None, RECORD, {}, NEW, []),
    ("an empty directory", "empty", RECORD, {}, NEW, []),
    ("interrupted, same settings", RECORD, RECORD, {}, RESUME, []),
    ("finished, same settings", DONE, RECORD, {}, COMPLETE, []),
    ("finished, a resumable setting changed", DONE, settings(checkpoint_every=5), RESUMABLE, COMPLETE, []),
    ("finished, only --out changed", DONE, settings(out="b"), {}, COMPLETE, []),
    ("a setting changed", DONE, settings(epochs=2), {}, ("refused", "--epochs=1 (now 2)"), []),
    ("an input changed", DONE, inputs(frames=10), {}, ("refused", "input frames 9 (now 10)"), []),
    ("a setting changed, restart", DONE, settings(epochs=2), {"restart": True}, NEW, ["out.previous"]),
    ("an input changed, restart", RECORD, inputs(frames=10), {"restart": True}, NEW, ["out.previous"]),
    ("files but no record", "files", RECORD, {}, ("refused", "holds files but no record"), []),
    ("files but no record, restart", "files", RECORD, {"restart": True}, NEW, ["out.previous"]),
    ("an unreadable record", "garbled", RECORD, {}, ("refused", "unreadable"), []),
    ("an unreadable record, restart", "garbled", RECORD, {"restart": True}, NEW, ["out.previous"]),
    ("unchanged but forced", DONE, RECORD, {"force": True}, NEW, ["out.previous"]),
    ("a custom completeness test", DONE, RECORD, {"complete": lambda previous: False}, RESUME, []),
    ("a flag added since, at its default", DONE, NEW_FLAG, {}, COMPLETE, []),
    ("a flag added since, not at its default", DONE, NEW_FLAG_SET, {}, ("refused", "--policy=None (now 'left')"), []),
    ("a flag added since, what it was implied", DONE, ENGINE_AS_BEFORE, {}, COMPLETE, []),
    (
        "a flag added since, not what it was",
        DONE,
        ENGINE_IMPLIED,
        {},
        ("refused", "--backend='gymnasium' (now 'envpool')"),
        [],
    ),
]


def lay_out(output, on_disk):
    if on_disk is None:
        return
    output.mkdir()
    if on_disk == "files":
        (output / "model.keras").write_text("weights")
    elif on_disk == "garbled":
        (output / "config.json").write_text("{not json")
    elif on_disk != "empty":
        (output / "config.json").write_text(json.dumps(on_disk))
        (output / "model.keras").write_text("weights")


@pytest.mark.parametrize("case, on_disk, record, options, expected, set_aside", CASES, ids=[c[0] for c in CASES])
def test_a_directory_output(tmp_path, capsys, case, on_disk, record, options, expected, set_aside):
    output = tmp_path / "out"
    lay_out(output, on_disk)
    before = sorted(p.name for p in output.iterdir()) if output.exists() else []
    if isinstance(expected, tuple):
        with pytest.raises(UserError, match="rerun with those, use another --out") as err:
            open_output(output, record, stage="stage 2", **options)
        assert expected[1] in str(err.value) and str(output) in str(err.value)
        assert sorted(p.name for p in output.iterdir()) == before  # refused: untouched
        return
    assert open_output(output, record, stage="stage 2", **options) == expected
    assert output.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", *set_aside])
    if set_aside:
        assert not any(output.iterdir())  # afresh in an empty directory ...
        assert sorted(p.name for p in (tmp_path / "out.previous").iterdir()) == before  # ... the old one kept whole
        assert "[stage 2] " in capsys.readouterr().out
    elif expected != NEW:
        assert sorted(p.name for p in output.iterdir()) == before


def test_each_change_is_set_aside_beside_the_earlier_ones(tmp_path, capsys):
    output = tmp_path / "vae"
    for epochs in (1, 2, 3):
        state = open_output(output, settings(epochs=epochs), stage="stage 2", restart=True)
        assert state == NEW
        (output / "config.json").write_text(json.dumps(settings(epochs=epochs)))
    kept = {p.name: json.loads((p / "config.json").read_text())["settings"]["epochs"] for p in tmp_path.iterdir()}
    assert kept == {"vae": 3, "vae.previous": 1, "vae.previous.2": 2}
    assert capsys.readouterr().out.count("starts afresh: --epochs=") == 2


def test_a_result_file_is_its_own_record(tmp_path):
    result = tmp_path / "zh.json"
    assert open_output(result, RECORD, stage="stage 6", record_file=result) == NEW
    assert not result.exists()
    result.write_text(json.dumps({**RECORD, "mean": 1.0}))
    complete = {"record_file": result, "complete": lambda previous: "mean" in previous}
    assert open_output(result, settings(out="b"), stage="stage 6", **complete) == COMPLETE
    assert open_output(result, settings(epochs=2), stage="stage 6", restart=True, **complete) == NEW
    assert not result.exists() and json.loads((tmp_path / "zh.json.previous").read_text())["mean"] == 1.0


def test_a_resumed_output_loses_only_interrupted_temporary_files(tmp_path):
    output = tmp_path / "record"
    lay_out(output, RECORD)
    (output / "checkpoint").mkdir()
    temporary = [output / ".ep_000002.npz.x1y2.tmp", output / "checkpoint" / ".train.weights.h5.77.tmp.weights.h5"]
    for path in temporary:
        path.write_bytes(b"partial")
    kept = [output / "ep_000001.npz", output / ".hidden", output / "tmp.npz"]
    for path in kept:
        path.write_bytes(b"data")
    assert open_output(output, RECORD, stage="stage 1") == RESUME
    assert not any(p.exists() for p in temporary) and all(p.exists() for p in kept)
