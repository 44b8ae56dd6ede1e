#!/usr/bin/env bash
# World Models (Ha & Schmidhuber 2018) in TensorFlow/Keras: setup, pipeline, tests.
#
#   ./run.sh [carracing|doom] [--preset smoke|small|paper] [--seed S] [--np N] [--out DIR]   run the pipeline
#   ./run.sh doom [--preset P] [--seed S] --rounds K                                         ... with iterative training
#   ./run.sh [carracing|doom] [--preset P] --seeds 0,1,2 [--np N] [--out DIR]                a run per seed, replicates
#   ./run.sh test [pytest args]                                                              run the test suite
#   ./run.sh bench                                                                           print benchmarks
#   ./run.sh lint                                                                            ruff: lint and format check
#
#   --seed S   (default 0) seeds stages 1, 2, 4 and 5; stage 6 plays the same held-out episodes for every seed.
#              Default --out: runs/<task>-<preset> for seed 0, runs/<task>-<preset>-seed<S> otherwise.
#   --seeds L  the pipeline once per seed of L into that default (or OUT-seed<S> with --out), then the table
#              of controller.results.replicates in runs/<task>-<preset>-replicates.md (or OUT-replicates.md).
#   --np N     (default: cores + 1) stage 5 runs under mpirun -np N when N > 1: rank 0 runs CMA-ES, N - 1 play.
#   --rounds K (Doom; default the preset's: small 3, else 1) iterative training: after the pipeline, rounds 2..K each play the last round's C
#              in VizDoom with exploration, continue M on all data so far and C (small: afresh, half the
#              episodes mirrored) in the new dream, and score
#              both, in OUT/round<R>/; controller.results.rounds tabulates every round in OUT/rounds.md.
#   Every run directory gets OUT/run.json: task, preset, seed, np, rounds and the command line that made it.
#
# The first call creates .venv from requirements.txt; a changed requirements.txt re-syncs it.
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$(pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

die() { echo "error: $*" >&2; exit 2; }

ensure_venv() {
    local stamp="$VENV/.requirements.sha256" want
    want="$(sha256sum requirements.txt | cut -d' ' -f1)"
    if [[ -x "$PY" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    echo "[setup] installing requirements.txt into .venv (first run: a few minutes)" >&2
    if [[ ! -x "$PY" ]]; then
        python3 -m venv "$VENV" || die "could not create $VENV (python3 with venv is required)"
    fi
    "$PY" -m pip install --quiet --upgrade pip >&2
    "$PY" -m pip install --quiet -r requirements.txt >&2 || die "pip install -r requirements.txt failed"
    echo "$want" > "$stamp"
}

# TensorFlow's defaults (oneDNN kernels on, start-up noise off) are set once, in env/__init__.py.
export PYTHONUNBUFFERED=1
# At most 2 glibc malloc arenas: with tf.data's many threads the default lets a training process's
# RSS creep up by hundreds of MB over an hour; with 2 it stays flat.
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"

case "${1:-}" in
    test)
        shift
        ensure_venv
        exec "$PY" -m pytest tests "$@"
        ;;
    lint)
        shift
        ensure_venv
        "$VENV/bin/ruff" check . || exit $?
        exec "$VENV/bin/ruff" format --check .
        ;;
    bench)
        shift
        ensure_venv
        for bench in tests/benchmarks/bench_*.py; do
            "$PY" "$bench" "$@"
        done
        exit 0
        ;;
esac

COMMAND_LINE=("$0" "$@")
TASK=carracing
PRESET=small
NP=""
OUT=""
SEED=""
SEEDS=""
SEED_GIVEN=0
SEEDS_GIVEN=0
ROUNDS=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        carracing|doom) TASK="$1"; shift ;;
        --preset) [[ $# -ge 2 ]] || die "--preset needs a value"; PRESET="$2"; shift 2 ;;
        --np) [[ $# -ge 2 ]] || die "--np needs a value"; NP="$2"; shift 2 ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a value"; OUT="$2"; shift 2 ;;
        --seed) [[ $# -ge 2 ]] || die "--seed needs a value"; SEED="$2"; SEED_GIVEN=1; shift 2 ;;
        --seeds) [[ $# -ge 2 ]] || die "--seeds needs a value"; SEEDS="$2"; SEEDS_GIVEN=1; shift 2 ;;
        --rounds) [[ $# -ge 2 ]] || die "--rounds needs a value"; ROUNDS="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see ./run.sh --help)" ;;
    esac
done
# A seed reaches numpy's legacy seeding (np.random.seed) in stages 2, 4 and 5, which takes [0, 2^32).
valid_seed() { [[ "$1" =~ ^(0|[1-9][0-9]{0,9})$ ]] && (( $1 <= 4294967295 )); }
# The cores this process may use (nproc would also obey OMP_NUM_THREADS, which is not about cores).
cores() { env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1; }
NP="${NP:-$(( $(cores) + 1 ))}"
[[ "$NP" =~ ^[1-9][0-9]*$ ]] || die "--np must be a positive integer, got '$NP'"
if [[ -n "$ROUNDS" ]]; then
    [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer, got '$ROUNDS'"
    [[ "$ROUNDS" == 1 || "$TASK" == doom ]] || die "--rounds is for doom: the car's controller trains in the real env"
fi
[[ "$SEED_GIVEN" == 0 || "$SEEDS_GIVEN" == 0 ]] || die "--seed and --seeds exclude each other (--seeds runs the pipeline once per seed)"
if [[ "$SEEDS_GIVEN" == 1 ]]; then
    IFS=, read -r -a SEED_LIST <<< "$SEEDS"
    [[ "${#SEED_LIST[@]}" -ge 1 && "$SEEDS" != *, ]] || die "--seeds must be comma-separated non-negative integers below 2^32, got '$SEEDS'"
    for s in "${SEED_LIST[@]}"; do
        valid_seed "$s" || die "--seeds must be comma-separated non-negative integers below 2^32, got '$SEEDS'"
    done
    [[ "$(printf '%s\n' "${SEED_LIST[@]}" | sort | uniq -d)" == "" ]] || die "--seeds names a seed twice: '$SEEDS'"
else
    [[ "$SEED_GIVEN" == 1 ]] || SEED=0
    valid_seed "$SEED" || die "--seed must be a non-negative integer below 2^32, got '$SEED'"
    SEED_LIST=("$SEED")
fi
OUT_GIVEN="$OUT"

ensure_venv
stage_flags() { "$PY" -m env.common.presets --task "$TASK" --preset "$PRESET" --stage "$1" --np "$NP" || exit 2; }

# step NUMBER NAME COMMAND...: a header line, the command, its wall and CPU time (appended to OUT/stages.json).
step() {
    local number="$1" name="$2"
    shift 2
    "$PY" -m env.common.stagelog --out "$OUT" --stage "$number" --name "$name" -- "$@" || exit $?
}

# OUT/run.json, written atomically: what made this run directory.
write_run_json() {
    "$PY" - "$OUT" "$TASK" "$PRESET" "$SEED" "$NP" "$ROUNDS" "${COMMAND_LINE[@]}" <<'PYTHON' || exit 2
import shlex
import sys
from pathlib import Path

from env.common.cli import run
from env.common.files import ensure_dir, git_commit, write_json

out, task, preset, seed, np_, rounds, *command = sys.argv[1:]
info = {"task": task, "preset": preset, "seed": int(seed), "np": int(np_), "rounds": int(rounds)}
info["command"] = shlex.join(command)
run(lambda _: write_json(ensure_dir(Path(out)) / "run.json", {**info, "commit": git_commit()}))
PYTHON
}

F_EXTRACT="$(stage_flags extract)"; F_VAE="$(stage_flags vae)"; F_SERIES="$(stage_flags series)"
F_RNN="$(stage_flags rnn)"; F_CONTROLLER="$(stage_flags controller)"; F_EVALUATE="$(stage_flags evaluate)"
# The preset's number of rounds unless --rounds gave one (presets: the `run` entry; 1 = the original's single pass).
if [[ -z "$ROUNDS" ]]; then
    ROUNDS="$(stage_flags run | sed -n 's/.*--rounds=\([0-9]*\).*/\1/p')"
    ROUNDS="${ROUNDS:-1}"
fi
if [[ "$ROUNDS" -gt 1 ]]; then
    F_ROUND_EXTRACT="$(stage_flags round-extract)"; F_ROUND_RNN="$(stage_flags round-rnn)"
    F_ROUND_CONTROLLER="$(stage_flags round-controller)"
fi

# pipeline: stages 1-7 of TASK at PRESET with SEED into OUT.
pipeline() {
    local common=(--task "$TASK" --out "$OUT")
    # A stage rerun with other settings (or on a retrained V or M) starts afresh; complete stages are skipped.
    local afresh=(--restart-on-change true)
    local seeded=(--seed "$SEED")
    local launch=()
    if [[ "$NP" -gt 1 ]]; then
        launch=("$VENV/bin/mpirun" -np "$NP")
    fi
    echo "[run.sh] $TASK, preset $PRESET, seed $SEED, --np $NP → $OUT"
    write_run_json

    # shellcheck disable=SC2086  # preset flags are single words
    step 1 extract "$PY" -m env.extract "${common[@]}" "${afresh[@]}" "${seeded[@]}" $F_EXTRACT
    step 2 vae "$PY" -m vae.train "${common[@]}" "${afresh[@]}" "${seeded[@]}" $F_VAE
    step 3 series "$PY" -m vae.series "${common[@]}" "${afresh[@]}" $F_SERIES
    step 4 rnn "$PY" -m rnn.train "${common[@]}" "${afresh[@]}" "${seeded[@]}" $F_RNN
    step 5 controller "${launch[@]}" "$PY" -m controller.train "${common[@]}" "${afresh[@]}" "${seeded[@]}" $F_CONTROLLER
    # Stage 6 keeps its default --seed, an offset into the held-out test seeds: every seed plays the same episodes.
    step 6 evaluate "$PY" -m controller.evaluate "${common[@]}" --gif true $F_EVALUATE
    if [[ "$TASK" == doom ]]; then
        step 6 evaluate-dream "$PY" -m controller.evaluate "${common[@]}" --env dream $F_EVALUATE
    fi
    step 6 random "$PY" -m controller.evaluate "${common[@]}" --random true $F_EVALUATE
    step 7 visualize "$PY" -m rnn.visualize "${common[@]}" "${seeded[@]}" --episode 0 --tau 1.0 --context 10
    if [[ "$ROUNDS" -gt 1 ]]; then
        rounds
    fi
    step 7 report "$PY" -m controller.results.report "${common[@]}" --preset "$PRESET"
}

# rounds: iterative training (the paper's section 5), rounds 2..ROUNDS of OUT in OUT/round<R>/, each a run
# directory sharing OUT's V: collect with the last round's C, encode, continue M on all series so far, continue C.
rounds() {
    local base="$OUT" previous="$OUT" more="" r dir
    for (( r = 2; r <= ROUNDS; r++ )); do
        dir="$base/round$r"
        mkdir -p "$dir"
        [[ -e "$dir/vae" ]] || ln -s ../vae "$dir/vae"
        echo "[run.sh] round $r of $ROUNDS → $dir"
        more="${more:+$more,}$previous/series"
        local OUT="$dir"
        local common=(--task "$TASK" --out "$dir") afresh=(--restart-on-change true) seeded=(--seed "$SEED")
        # shellcheck disable=SC2086  # preset flags are single words
        step 1 collect "$PY" -m env.extract "${common[@]}" "${afresh[@]}" "${seeded[@]}" --round "$r" \
            --play "$previous" $F_ROUND_EXTRACT
        step 3 series "$PY" -m vae.series "${common[@]}" "${afresh[@]}" $F_SERIES
        step 4 rnn "$PY" -m rnn.train "${common[@]}" "${afresh[@]}" "${seeded[@]}" --init "$previous/rnn" \
            --more-series "$more" $F_ROUND_RNN
        step 5 controller "${launch[@]}" "$PY" -m controller.train "${common[@]}" "${afresh[@]}" "${seeded[@]}" \
            --init "$previous" $F_ROUND_CONTROLLER
        step 6 evaluate "$PY" -m controller.evaluate "${common[@]}" $F_EVALUATE
        step 6 evaluate-dream "$PY" -m controller.evaluate "${common[@]}" --env dream $F_EVALUATE
        previous="$dir"
    done
    OUT="$base"
    step 7 rounds "$PY" -m controller.results.rounds --task "$TASK" --out "$base" --rounds "$ROUNDS"
}

# Run directories: runs/<task>-<preset> for seed 0 and runs/<task>-<preset>-seed<S> for seed S > 0; with --out,
# OUT itself (--seed) or OUT-seed<S> for every seed of --seeds.
BASE="${OUT_GIVEN:-runs/$TASK-$PRESET}"
for SEED in "${SEED_LIST[@]}"; do
    if [[ "$SEEDS_GIVEN" == 1 && -n "$OUT_GIVEN" ]]; then
        OUT="$OUT_GIVEN-seed$SEED"
    elif [[ -n "$OUT_GIVEN" || "$SEED" == 0 ]]; then
        OUT="$BASE"
    else
        OUT="$BASE-seed$SEED"
    fi
    pipeline
done

if [[ "$SEEDS_GIVEN" == 1 ]]; then
    echo "=== replicates: seeds $SEEDS ==="
    "$PY" -m controller.results.replicates --task "$TASK" --preset "$PRESET" --runs "$(dirname "$BASE")" \
        --name "$(basename "$BASE")" --seeds "$SEEDS" --out "$BASE-replicates.md" || exit $?
fi
