#!/usr/bin/env bash
# World Models (Ha & Schmidhuber 2018) in TensorFlow/Keras: setup, pipeline, tests.
#
#   ./run.sh [carracing|doom] [--preset smoke|small|paper] [--np N] [--out DIR]   run the pipeline
#   ./run.sh test [pytest args]                                                   run the test suite
#   ./run.sh bench                                                                print benchmarks
#   ./run.sh lint                                                                 ruff: lint and format check
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

# TensorFlow on CPU: oneDNN kernels on (default only on AVX-512 CPUs), start-up noise off.
export TF_ENABLE_ONEDNN_OPTS="${TF_ENABLE_ONEDNN_OPTS:-1}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
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
        "$VENV/bin/ruff" check . && exec "$VENV/bin/ruff" format --check .
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

TASK=carracing
PRESET=small
NP=1
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        carracing|doom) TASK="$1"; shift ;;
        --preset) [[ $# -ge 2 ]] || die "--preset needs a value"; PRESET="$2"; shift 2 ;;
        --np) [[ $# -ge 2 ]] || die "--np needs a value"; NP="$2"; shift 2 ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a value"; OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see ./run.sh --help)" ;;
    esac
done
[[ "$NP" =~ ^[1-9][0-9]*$ ]] || die "--np must be a positive integer, got '$NP'"
OUT="${OUT:-runs/$TASK-$PRESET}"

ensure_venv
stage_flags() { "$PY" -m env.common.presets --task "$TASK" --preset "$PRESET" --stage "$1" --np "$NP" || exit 2; }

# step NUMBER NAME COMMAND...: a header line, the command, its wall and CPU time (appended to OUT/stages.json).
step() {
    local number="$1" name="$2"
    shift 2
    "$PY" -m env.common.stagelog --out "$OUT" --stage "$number" --name "$name" -- "$@" || exit $?
}

COMMON=(--task "$TASK" --out "$OUT")
# A stage rerun with other settings (or on a retrained V or M) starts afresh; complete stages are skipped.
AFRESH=(--restart-on-change true)
LAUNCH=()
if [[ "$NP" -gt 1 ]]; then
    LAUNCH=("$VENV/bin/mpirun" -np "$NP")
fi
echo "[run.sh] $TASK, preset $PRESET, --np $NP → $OUT"

F_EXTRACT="$(stage_flags extract)"; F_VAE="$(stage_flags vae)"; F_SERIES="$(stage_flags series)"
F_RNN="$(stage_flags rnn)"; F_CONTROLLER="$(stage_flags controller)"; F_EVALUATE="$(stage_flags evaluate)"

# shellcheck disable=SC2086  # preset flags are single words
step 1 extract "$PY" -m env.extract "${COMMON[@]}" "${AFRESH[@]}" $F_EXTRACT
step 2 vae "$PY" -m vae.train "${COMMON[@]}" "${AFRESH[@]}" $F_VAE
step 3 series "$PY" -m vae.series "${COMMON[@]}" "${AFRESH[@]}" $F_SERIES
step 4 rnn "$PY" -m rnn.train "${COMMON[@]}" "${AFRESH[@]}" $F_RNN
step 5 controller "${LAUNCH[@]}" "$PY" -m controller.train "${COMMON[@]}" "${AFRESH[@]}" $F_CONTROLLER
step 6 evaluate "$PY" -m controller.evaluate "${COMMON[@]}" --gif true $F_EVALUATE
if [[ "$TASK" == doom ]]; then
    step 6 evaluate-dream "$PY" -m controller.evaluate "${COMMON[@]}" --env dream $F_EVALUATE
fi
step 6 random "$PY" -m controller.evaluate "${COMMON[@]}" --random true $F_EVALUATE
step 7 visualize "$PY" -m rnn.visualize "${COMMON[@]}" --episode 0 --tau 1.0 --context 10
step 7 report "$PY" -m controller.results.report "${COMMON[@]}" --preset "$PRESET"
