"""The backends' comparison: its agreement rule by hand, and the command's table against the evaluation files and
the frames it reads."""

import json
import math

import numpy as np
import pytest
from test_controller_stages import CAR, make_run

from controller import evaluate, train
from controller.results import backends
from env.common.cli import UserError


def score(mean, std, n):
    return {"mean": mean, "std": std, "n": n}


@pytest.mark.parametrize(
    "reference, other, se, agree",
    [
        # sample variance = population variance · n/(n - 1): 100 · 100/99 per side, two sides
        (score(100.0, 10.0, 100), score(103.0, 10.0, 100), math.sqrt(200 / 99), True),  # z 2.1, but 3 % apart
        (score(100.0, 30.0, 100), score(108.0, 30.0, 100), math.sqrt(1800 / 99), True),  # 8 % apart, z 1.88
        (score(100.0, 10.0, 100), score(110.0, 10.0, 100), math.sqrt(200 / 99), False),  # z 7, 10 % apart
        (score(-50.0, 40.0, 5), score(-54.0, 0.0, 5), math.sqrt(1600 / 4), True),  # one side without spread
        (score(-50.0, 0.0, 100), score(-54.0, 0.0, 100), 0.0, False),  # no spread: only the 5 % rule, 8 % apart
    ],
)
def test_two_means_agree_within_two_standard_errors_or_five_percent(reference, other, se, agree):
    found = backends.agreement(reference, other)
    assert found["difference"] == pytest.approx(other["mean"] - reference["mean"])
    assert found["se"] == pytest.approx(se)
    assert found["relative"] == pytest.approx(abs(other["mean"] - reference["mean"]) / abs(reference["mean"]))
    assert found["agree"] is agree


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = make_run(tmp_path_factory.mktemp("car"), CAR)
    flags = ["--popsize", "4", "--num-episode", "1", "--max-steps", "30", "--eval-episodes", "2", "--generations", "1"]
    assert train.main(["--out", str(out), "--task", "carracing", *flags]) == 0
    stage6 = ["--out", str(out), "--task", "carracing", "--episodes", "3", "--max-steps", "40", "--workers", "1"]
    assert evaluate.main([*stage6, "--random", "true"]) == 0  # as run.sh's stage 6 plays it
    args = ["--out", str(out), "--episodes", "3", "--frame-episodes", "2", "--frame-every", "5"]
    args += ["--max-steps", "40", "--workers", "1"]
    assert backends.main(args) == 0
    return out, args


def test_the_table_holds_each_policy_on_both_backends_with_the_check(compared):
    out, _ = compared
    found = json.loads((out / "backends.json").read_text())
    assert found["backends"] == ["gymnasium", "envpool"]
    assert not list((out / "eval").glob("*.previous*"))  # stage 6's own result was reused, not set aside
    assert [r["policy"] for r in found["rows"]] == ["random", "zh"]
    assert "trained on envpool" in found["rows"][1]["label"]
    text = (out / "backends.md").read_text()
    for row in found["rows"]:
        results = {}
        for backend, stem in (("gymnasium", row["policy"]), ("envpool", f"{row['policy']}_envpool")):
            result = json.loads((out / "eval" / f"{stem}.json").read_text())
            returns = [e["return"] for e in result["episodes"]]
            assert result["settings"]["backend"] == backend and result["settings"]["max_steps"] == 40
            assert row["scores"][backend] == {
                "mean": pytest.approx(np.mean(returns)),
                "std": pytest.approx(np.std(returns)),
                "n": 3,
            }
            results[backend] = returns
        check = row["agreement"]["envpool"]
        gym, pool = np.array(results["gymnasium"]), np.array(results["envpool"])
        se = math.sqrt(gym.var(ddof=1) / 3 + pool.var(ddof=1) / 3)
        assert check["difference"] == pytest.approx(pool.mean() - gym.mean())
        assert check["se"] == pytest.approx(se)
        line = next(line for line in text.splitlines() if line.startswith(f"| {row['label']}"))
        assert line.endswith(f"| {'yes' if check['agree'] else 'no'} |")
    recon = found["reconstruction"]
    assert set(recon) == {"gymnasium", "envpool"}
    for backend in recon:
        assert recon[backend]["n"] == 2 and recon[backend]["frames"] == 16  # frames 0, 5, ..., 35 of 40 steps
        assert recon[backend]["mean"] > 0 and math.isfinite(recon[backend]["mean"])


def test_vs_loss_is_the_squared_error_of_the_frames_decoded_from_mu(compared):
    out, _ = compared
    from vae.model import load_vae

    frames, lengths = backends.held_out_frames(CAR, "envpool", 2, 5, 40)
    assert lengths == [40, 40] and [len(f) for f in frames] == [8, 8]
    vae = load_vae(out / "vae", CAR)
    per_episode = []
    for episode in frames:
        x = episode / np.float32(255)
        mu = vae.encoder.predict(x, verbose=0)[0]
        y = vae.decoder.predict(mu, verbose=0)
        per_episode.append(((x - y) ** 2).reshape(len(x), -1).sum(axis=1).mean())
    found = json.loads((out / "backends.json").read_text())["reconstruction"]["envpool"]
    assert found["mean"] == pytest.approx(np.mean(per_episode), rel=1e-4)
    assert found["std"] == pytest.approx(np.std(per_episode), rel=1e-3, abs=1e-3)


def test_a_rerun_reuses_every_evaluation_and_a_one_backend_task_is_refused(compared, capsys):
    out, args = compared
    capsys.readouterr()
    assert backends.main(args) == 0
    assert capsys.readouterr().out.count("nothing to do") == 4
    with pytest.raises(UserError, match="one backend"):
        backends.main(["--out", str(out), "--task", "doom"])
    with pytest.raises(UserError, match="no trained controller"):
        backends.main([*args, "--names", "zh,missing"])
