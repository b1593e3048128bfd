#!/usr/bin/env bash
# Container test: builds the `serve` and `train` images with buildah from a clean clone of this
# repository; the train image exports a small Keras model (`histoedge export --keras`) next to a tiny
# onnx.helper model; the serve image's entrypoint then serves both from a read-only /models and is
# checked from the host over gRPC: health, classify against a direct onnxruntime run on the host,
# metrics, non-root user and process, no TensorFlow or compilers, exit 0 on SIGTERM.
# Prints one CONTAINER TEST PASS/FAIL line last; exits non-zero on any failure.
#
# Usage: tests/container/run_container_test.sh        (as root; installs buildah if missing)
# Environment:
#   HISTOEDGE_BIN         host `histoedge` used as the client (default: `histoedge` on PATH)
#   HISTOEDGE_PYTHON      host Python with numpy, opencv, onnx, onnxruntime (or PYTHON_BIN;
#                         default: the python next to HISTOEDGE_BIN, else python3)
#   CONTAINER_TEST_SOURCE clone (default: `git clone` of HEAD, proving a clean checkout builds)
#                         or worktree (build the working tree, uncommitted files included)
#   CONTAINER_TEST_TRAIN  1 (default) builds and checks the train image; 0 skips it
#   BASE_IMAGE            default localhost/pybase:bookworm, made by ../shared/tools/make_base_image.sh
#   MAKE_BASE_IMAGE       path of that script (default: <repo>/../shared/tools/make_base_image.sh)
set -euo pipefail

START=$SECONDS
ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
HELPER=$ROOT/tests/container/container_helper.py
BASE_IMAGE=${BASE_IMAGE:-localhost/pybase:bookworm}
MAKE_BASE_IMAGE=${MAKE_BASE_IMAGE:-$ROOT/../shared/tools/make_base_image.sh}
SOURCE_MODE=${CONTAINER_TEST_SOURCE:-clone}
TEST_TRAIN=${CONTAINER_TEST_TRAIN:-1}
SERVE_TAG=localhost/histoedge-serve:test
TRAIN_TAG=localhost/histoedge-train:test
BUILD_TIMEOUT=${CONTAINER_TEST_BUILD_TIMEOUT:-1500}
HISTOEDGE_BIN=${HISTOEDGE_BIN:-histoedge}
HISTOEDGE_BIN=$(command -v "$HISTOEDGE_BIN" || true)
HISTOEDGE_PYTHON=${HISTOEDGE_PYTHON:-${PYTHON_BIN:-}}
if [[ -z $HISTOEDGE_PYTHON ]]; then
  if [[ -n $HISTOEDGE_BIN && -x $(dirname "$HISTOEDGE_BIN")/python ]]; then
    HISTOEDGE_PYTHON=$(dirname "$HISTOEDGE_BIN")/python
  else
    HISTOEDGE_PYTHON=python3
  fi
fi

WORK=$(mktemp -d /tmp/histoedge-container-test.XXXXXX)
CONTAINERS=()
SERVER_JOB=""
SERVER_PID=""
PASSED=()
FAILED=()

log() { printf '[container-test %4ss] %s\n' "$((SECONDS - START))" "$*"; }
pass() { PASSED+=("$1"); log "ok   $1"; }
fail() { FAILED+=("$1"); log "FAIL $1"; }
# check NAME CMD...: run CMD (output to the log) and record the result without stopping the test.
check() {
  local name=$1; shift
  if "$@" >"$WORK/check.out" 2>&1; then pass "$name"; else fail "$name"; sed 's/^/    /' "$WORK/check.out" | tail -20; fi
}
summary() {
  local status=$1
  if [[ $status -eq 0 && ${#FAILED[@]} -eq 0 ]]; then
    echo "CONTAINER TEST PASS: ${#PASSED[@]} checks in $((SECONDS - START)) s"
  elif [[ ${#FAILED[@]} -eq 0 ]]; then
    echo "CONTAINER TEST FAIL: aborted with exit $status after ${#PASSED[@]} passed checks, $((SECONDS - START)) s"
  else
    local joined; joined=$(printf '%s; ' "${FAILED[@]}")
    echo "CONTAINER TEST FAIL: ${#FAILED[@]} failed (${joined%; }), ${#PASSED[@]} passed, $((SECONDS - START)) s"
  fi
}
cleanup() {
  local status=$?
  set +e
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then kill -KILL "$SERVER_PID"; fi
  if [[ -n $SERVER_JOB ]] && kill -0 "$SERVER_JOB" 2>/dev/null; then kill -TERM "$SERVER_JOB"; wait "$SERVER_JOB"; fi
  for container in "${CONTAINERS[@]}"; do buildah rm "$container" >/dev/null 2>&1; done
  rm -rf "$WORK"
  summary "$status"
  if [[ $status -eq 0 && ${#FAILED[@]} -gt 0 ]]; then exit 1; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { fail "$1"; exit 1; }
helper() { PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} timeout 120 "$HISTOEDGE_PYTHON" "$HELPER" "$@"; }
image_size() { buildah images --format '{{.Size}}' "$1" | head -1; }
# in_ctr [BUILDAH-RUN-OPTIONS...] CONTAINER -- CMD...: print CMD's output (stdout and stderr) and
# return its status. buildah 1.28 with chroot isolation has been seen to return a command's status
# with none of its output, so an empty answer is retried before checks read it.
in_ctr() {
  local out="" status=0 attempt
  for attempt in 1 2 3; do
    status=0
    out=$(timeout 300 buildah run --isolation=chroot "$@" 2>&1) || status=$?
    [[ -n $out ]] && break
    echo "(buildah run gave no output, attempt $attempt, status $status)"
  done
  printf '%s\n' "$out"
  return "$status"
}
# expect_output PATTERN [BUILDAH-RUN-OPTIONS...] CONTAINER -- CMD...: CMD's output matches PATTERN.
expect_output() {
  local pattern=$1 out; shift
  out=$(in_ctr "$@") || true
  printf '%s\n' "$out"
  grep -Eq -- "$pattern" <<<"$out"
}

# 1. Tools ---------------------------------------------------------------------------------------
[[ -n $HISTOEDGE_BIN ]] || die "host histoedge not found (set HISTOEDGE_BIN)"
if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null || ! command -v podman >/dev/null; then
  [[ $(id -u) -eq 0 ]] || die "buildah/debootstrap/podman missing and not root to apt-get them"
  log "installing buildah, debootstrap, podman"
  timeout 600 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq buildah debootstrap podman </dev/null >/dev/null
fi
log "buildah $(buildah --version | awk '{print $3}'), host client $HISTOEDGE_BIN, python $HISTOEDGE_PYTHON"

# 2. Base image (a stand-in for python:3.11-slim; made once per machine) -------------------------
if buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  log "base image $BASE_IMAGE exists"
else
  [[ -f $MAKE_BASE_IMAGE ]] || die "base image script $MAKE_BASE_IMAGE not found"
  log "making $BASE_IMAGE with $MAKE_BASE_IMAGE"
  timeout 900 bash "$MAKE_BASE_IMAGE" "$BASE_IMAGE" || die "make base image"
  buildah inspect --type image "$BASE_IMAGE" >/dev/null || die "base image $BASE_IMAGE missing after make"
fi

# 3. Build the serve image from a clean clone ----------------------------------------------------
case $SOURCE_MODE in
  clone)
    git clone --quiet --no-hardlinks "$ROOT" "$WORK/src" || die "git clone $ROOT"
    CONTEXT=$WORK/src
    log "building from a clean clone of $(git -C "$ROOT" rev-parse --short HEAD)" ;;
  worktree)
    CONTEXT=$ROOT
    log "building from the working tree $ROOT (uncommitted files included)" ;;
  *) die "CONTAINER_TEST_SOURCE must be clone or worktree, not $SOURCE_MODE" ;;
esac
build() {  # build TARGET TAG: records the result, returns non-zero on failure
  local begin=$SECONDS
  if timeout "$BUILD_TIMEOUT" buildah bud --isolation=chroot --layers --format docker \
      --build-arg BASE_IMAGE="$BASE_IMAGE" --target "$1" -t "$2" "$CONTEXT" >"$WORK/build-$1.log" 2>&1; then
    pass "build $1 image ($((SECONDS - begin)) s, $(image_size "$2"))"
  else
    tail -40 "$WORK/build-$1.log" | sed 's/^/    /'
    fail "build $1 image"
    return 1
  fi
}
build serve "$SERVE_TAG" || exit 1

# 4. A model repository without TensorFlow, and the expected answers ----------------------------
helper make-repo "$WORK/models" "$WORK/images" "$WORK/expected-tiny.json" >"$WORK/make-repo.log" 2>&1 \
  || { cat "$WORK/make-repo.log"; die "make tiny model repository"; }
# The server runs as an unprivileged user: the bind-mounted repository must be world-readable.
chmod 0755 "$WORK"; chmod -R a+rX "$WORK/models" "$WORK/images"
pass "tiny model repository $(ls "$WORK/models")/1 and $(ls "$WORK/images" | wc -l) PNGs"

# 5. Train image: builds, imports TensorFlow as non-root, exports a Keras model for the server ---
MODELS_SERVED=(tiny)
if [[ $TEST_TRAIN == 1 ]]; then
  if build train "$TRAIN_TAG"; then
    TRAIN_CTR=$(buildah from "$TRAIN_TAG"); CONTAINERS+=("$TRAIN_CTR")
    for command in train export; do
      check "train image: histoedge --help lists $command" expect_output "^ +$command " \
        "$TRAIN_CTR" -- histoedge --help
    done
    check "train image: TensorFlow, tf2onnx, onnxruntime import as non-root" expect_output '^versions ' \
      "$TRAIN_CTR" -- python -c "
import os, tensorflow, tf2onnx, onnx, onnxruntime
assert os.getuid() != 0, os.getuid()
print('versions', tensorflow.__version__, tf2onnx.__version__, onnx.__version__, onnxruntime.__version__, 'uid', os.getuid())"
    # The train image's user writes into a scratch folder; the result joins the served repository.
    install -d -m 0777 "$WORK/train-out"
    if timeout 600 buildah run --isolation=chroot -v "$ROOT/tests/container:/work/test:ro" \
        -v "$WORK/train-out:/work/out" "$TRAIN_CTR" -- sh -c '
          python /work/test/make_keras_model.py /work/out/tiny.keras 16 &&
          histoedge export --keras /work/out/tiny.keras --repo /work/out/models --name keras16 \
            --classes benign,malignant &&
          histoedge export verify /work/out/models/keras16/1' >"$WORK/export.log" 2>&1 \
       && cp -r "$WORK/train-out/models/keras16" "$WORK/models/" \
       && helper expect "$WORK/models/keras16/1" "$WORK/images" "$WORK/expected-keras16.json" >>"$WORK/export.log" 2>&1
    then
      pass "train image: histoedge export --keras writes a verified model package (keras16/1)"
      MODELS_SERVED+=(keras16)
    else
      grep -v -E 'oneDNN|absl|^WARNING: All' "$WORK/export.log" | tail -20 | sed 's/^/    /'
      fail "train image: histoedge export --keras writes a verified model package"
    fi
    log "train image $TRAIN_TAG: $(image_size "$TRAIN_TAG")"
  fi
else
  log "train image skipped (CONTAINER_TEST_TRAIN=0)"
fi
chmod -R a+rX "$WORK/models"

# 6. Serve image configuration ------------------------------------------------------------------
buildah inspect --type image "$SERVE_TAG" >"$WORK/serve-image.json"
mapfile -t ENTRYPOINT < <(helper image-config "$WORK/serve-image.json" Entrypoint)
mapfile -t CMD < <(helper image-config "$WORK/serve-image.json" Cmd)
mapfile -t HEALTHCHECK < <(helper image-config "$WORK/serve-image.json" Healthcheck)
IMAGE_USER=$(helper image-config "$WORK/serve-image.json" User)
check "entrypoint is exec-form histoedge serve (${ENTRYPOINT[*]})" \
  test "${ENTRYPOINT[*]}" = "histoedge serve"
check "image env HISTOEDGE_REPO=/models" grep -q '"HISTOEDGE_REPO=/models"' "$WORK/serve-image.json"
check "image user is not root ($IMAGE_USER)" test -n "$IMAGE_USER" -a "${IMAGE_USER%%:*}" != root -a "${IMAGE_USER%%:*}" != 0
check "HEALTHCHECK runs histoedge health (${HEALTHCHECK[*]:1})" grep -q 'histoedge health' <<<"${HEALTHCHECK[*]:-}"
check "ports 8000 8001 8002 exposed" "$HISTOEDGE_PYTHON" -c '
import json, sys
ports = json.load(open(sys.argv[1]))["OCIv1"]["config"].get("ExposedPorts", {})
sys.exit(0 if {"8000/tcp", "8001/tcp", "8002/tcp"} <= set(ports) else f"exposed: {sorted(ports)}")' "$WORK/serve-image.json"

# 7. Run ENTRYPOINT + CMD as `docker run -e HISTOEDGE_PORT=.. -v MODELS:/models:ro` would -------
# (buildah run shares the host network, so the ports move to free ones through the environment).
read -r PORT METRICS_PORT HTTP_PORT < <(helper free-ports 3)
SERVE_CTR=$(buildah from "$SERVE_TAG"); CONTAINERS+=("$SERVE_CTR")
log "starting ${ENTRYPOINT[*]} ${CMD[*]} in $SERVE_CTR on 127.0.0.1:$PORT (metrics $METRICS_PORT, REST $HTTP_PORT)"
timeout 600 buildah run --isolation=chroot --env "HISTOEDGE_PORT=$PORT" --env "HISTOEDGE_METRICS_PORT=$METRICS_PORT" \
  --env "HISTOEDGE_HTTP_PORT=$HTTP_PORT" \
  -v "$WORK/models:/models:ro" "$SERVE_CTR" -- "${ENTRYPOINT[@]}" "${CMD[@]}" >"$WORK/server.log" 2>&1 &
SERVER_JOB=$!
SERVER_PID=$(helper find-server "$SERVER_JOB") || { cat "$WORK/server.log"; die "server process did not start"; }

healthy=false
for _ in $(seq 1 90); do
  if timeout 10 "$HISTOEDGE_BIN" health --server "127.0.0.1:$PORT" >"$WORK/health.out" 2>&1; then healthy=true; break; fi
  kill -0 "$SERVER_JOB" 2>/dev/null || break
  sleep 1
done
if ! $healthy; then cat "$WORK/health.out" "$WORK/server.log"; die "server became healthy"; fi
pass "server healthy after $((SECONDS - START)) s: $(cat "$WORK/health.out")"

check "host: histoedge health reports SERVING" grep -q SERVING "$WORK/health.out"
for model in "${MODELS_SERVED[@]}"; do
  check "classify --model $model over gRPC matches onnxruntime on the host" bash -c '
    timeout 60 "$1" classify --server "127.0.0.1:$2" --model "$3" --json "$4"/*.png >"$5" &&
    cat "$5" && timeout 60 "$6" "$7" compare "$8" "$5"' _ "$HISTOEDGE_BIN" "$PORT" "$model" \
    "$WORK/images" "$WORK/classify-$model.jsonl" "$HISTOEDGE_PYTHON" "$HELPER" "$WORK/expected-$model.json"
done
check "metrics endpoint on $METRICS_PORT" helper metrics "http://127.0.0.1:$METRICS_PORT/metrics"
check "REST upload on $HTTP_PORT (curl -F) answers a label" bash -c '
  curl --silent --show-error --fail --max-time 30 -F "image=@$(ls "$2"/*.png | head -n 1)" \
    "http://127.0.0.1:$1/v2/models/$3/classify" | grep -q "\"label\""' _ "$HTTP_PORT" "$WORK/images" "${MODELS_SERVED[0]}"
check "status page on $HTTP_PORT" bash -c 'curl --silent --fail --max-time 10 "http://127.0.0.1:$1/" | grep -q "<title>histoedge"' _ "$HTTP_PORT"
SERVER_UID=$(helper uid "$SERVER_PID" || echo unknown)
check "server process (PID $SERVER_PID) runs as uid $SERVER_UID, not root" \
  test "$SERVER_UID" != 0 -a "$SERVER_UID" != unknown
check "container default user is not root" expect_output '^[1-9][0-9]*$' "$SERVE_CTR" -- id -u
check "image HEALTHCHECK command passes inside the container" \
  in_ctr --env "HISTOEDGE_PORT=$PORT" "$SERVE_CTR" -- "${HEALTHCHECK[@]:1}"
# Negative checks look for the specific error, so a container that fails to start cannot pass them.
check "model repository is read-only inside" expect_output 'Read-only file system' \
  -v "$WORK/models:/models:ro" "$SERVE_CTR" -- touch /models/x
check "serve image has no TensorFlow" expect_output "No module named 'tensorflow'" \
  "$SERVE_CTR" -- python -c "import tensorflow"
check "serve image has no OpenCV (Pillow decodes)" expect_output "No module named 'cv2'" \
  "$SERVE_CTR" -- python -c "import cv2"
check "serve image has no compiler or build tools" expect_output '^none$' "$SERVE_CTR" -- sh -c \
  'for tool in gcc cc g++ c++ make ld; do command -v $tool && exit 1; done; echo none'

# SIGTERM goes straight to the server process (PID 1 under `docker run`): it must drain and exit 0.
kill -TERM "$SERVER_PID"
status=0
for _ in $(seq 1 60); do kill -0 "$SERVER_JOB" 2>/dev/null || break; sleep 0.5; done
if kill -0 "$SERVER_JOB" 2>/dev/null; then
  fail "server exits within 30 s of SIGTERM"
else
  wait "$SERVER_JOB" || status=$?
  SERVER_JOB=""; SERVER_PID=""
  check "server exits 0 on SIGTERM (exit $status)" test "$status" -eq 0
fi
tail -5 "$WORK/server.log" | sed 's/^/    server: /'
log "serve image $SERVE_TAG: $(image_size "$SERVE_TAG") (base $BASE_IMAGE: $(image_size "$BASE_IMAGE"))"

