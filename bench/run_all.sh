#!/usr/bin/env bash
# Every benchmark, then bench/results/summary.md.  About 15 minutes on 2 cores
# (plus about 3 minutes the first time, to build and export the models into bench/.cache/).
#   bash bench/run_all.sh            full run
#   bash bench/run_all.sh --quick    smoke run (tiny counts, results/*.quick.*)
#   PYTHON=/path/to/venv/bin/python bash bench/run_all.sh    another interpreter
#   BENCH_RUN=demo/run bash bench/run_all.sh   also fp32 vs int8 test ROC-AUC on a trained run
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/python.sh
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
QUICK=""
if [ "${1:-}" = "--quick" ]; then QUICK="--quick"; fi

status=0
run() {
    echo "=== $* ==="
    local start=$SECONDS
    if ! "$PY" -m "$@" $QUICK; then
        echo "!!! $1 failed" >&2
        status=1
    fi
    echo "=== $1: $((SECONDS - start)) s ==="
}

run bench.bench_serving
run bench.bench_monitoring
if [ -f bench/bench_quantization.py ]; then
    if [ -z "$QUICK" ]; then
        # Its defaults (batch 64, 5 rounds) take 10-15 minutes alone; these keep the total
        # under 20 minutes. QUANTIZATION_ARGS="" restores the defaults.
        # shellcheck disable=SC2086
        echo "=== bench/bench_quantization.py ${QUANTIZATION_ARGS---batches 1,16 --rounds 3} ==="
        start=$SECONDS
        "$PY" bench/bench_quantization.py ${QUANTIZATION_ARGS---batches 1,16 --rounds 3} || { echo "!!! bench_quantization failed" >&2; status=1; }
        echo "=== bench_quantization: $((SECONDS - start)) s ==="
    elif "$PY" bench/bench_quantization.py --help 2>/dev/null | grep -q -- --quick; then
        run bench.bench_quantization
    else
        echo "(bench_quantization has no --quick: skipped in the smoke run)"
    fi
fi
if [ -z "$QUICK" ] && [ -n "${BENCH_RUN:-}" ]; then
    # Test ROC-AUC of fp32 vs int8 needs trained weights: BENCH_RUN names a trained run directory
    # (e.g. the demo's demo/run). Its results go to bench/results/trained/.
    echo "=== bench/bench_quantization.py --run $BENCH_RUN ==="
    "$PY" bench/bench_quantization.py --run "$BENCH_RUN" --calibration 200 \
        --out bench/results/trained || { echo "!!! bench_quantization --run failed" >&2; status=1; }
fi
run bench.bench_pipeline
run bench.bench_scaling
run bench.bench_rest
"$PY" -m bench.summarize $QUICK
exit $status
