#!/usr/bin/env bash
# histoedge next to the servers a user would pick instead: Seldon MLServer 1.7 and KServe's
# Python ModelServer 0.21, each in its own virtual environment under bench/.cache/peers/
# (they conflict with our pins), serving the same ONNX file on the same pinned core with the
# same load generator.  About 10 minutes on 2 cores, plus a few minutes the first time to
# install the two environments (skipped once they are there).
#   bash bench/run_peers.sh                      build a 64 px int8 ensemble from synthetic data
#   bash bench/run_peers.sh --repo demo/models   serve a model repository you already have
#   bash bench/run_peers.sh --quick              smoke run (results/peers.quick.*)
#   PYTHON=/path/to/venv/bin/python bash bench/run_peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/python.sh
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

PEERS=bench/.cache/peers
# The peers run the same onnxruntime as histoedge, so only the server differs.
ORT_VERSION="$("$PY" -c 'import onnxruntime; print(onnxruntime.__version__)')"
BASE_PY="$("$PY" -c 'import sys; print(sys._base_executable)')"

# make_venv NAME PACKAGE...: a venv at $PEERS/NAME with exactly these requirements, installed once.
make_venv() {
    local name=$1; shift
    local venv="$PEERS/$name" wanted="$*"
    if [ -f "$venv/.installed" ] && [ "$(cat "$venv/.installed")" = "$wanted" ]; then
        echo "=== $name: already installed ($wanted) ==="
        return
    fi
    echo "=== $name: installing $wanted ==="
    rm -rf "$venv"
    "$BASE_PY" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q "$@"
    echo "$wanted" > "$venv/.installed"
}

mkdir -p "$PEERS"
# uvloop 0.22 raises in asyncio.get_event_loop() without a running loop, which MLServer 1.7.1's
# inference worker processes (parallel_workers >= 1) call at start-up: they die and the model never loads.
make_venv mlserver-venv "mlserver==1.7.*" "onnxruntime==$ORT_VERSION" "uvloop<0.22"
make_venv kserve-venv "kserve==0.21.*" "onnxruntime==$ORT_VERSION"

"$PY" -m bench.bench_peers --peers "$PEERS" "$@"
"$PY" -m bench.summarize
