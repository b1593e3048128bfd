# histoedge container images.
#
#   serve (default, last stage): the Open Inference Protocol server (gRPC and REST) on onnxruntime.
#       docker build -t histoedge-serve .
#   train: `histoedge train` / `histoedge export` (TensorFlow, tf2onnx, onnx).
#       docker build --target train -t histoedge-train .
#   GPU serve: onnxruntime-gpu (the `gpu` extra) on a CUDA + cuDNN runtime base.
#       docker build --build-arg DEVICE=gpu \
#           --build-arg BASE_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 -t histoedge-serve:gpu .
#
# BASE_IMAGE needs Python >= 3.11 with venv, or apt-get to install the distribution's python3
# (CUDA runtime images have no Python). For GPU, match the CUDA and cuDNN major versions that the
# installed onnxruntime-gpu was built for: 1.31 from PyPI needs CUDA 13 and cuDNN 9 (see the
# "Requirements" table of onnxruntime's CUDA Execution Provider page).

ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# python-base: the interpreter and the unprivileged user, shared by every stage.
FROM ${BASE_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
# CUDA runtime images ship without Python: fall back to the distribution's python3.
RUN set -eux; \
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -c 'import sys; assert sys.version_info >= (3, 11), f"histoedge needs Python >= 3.11, base has {sys.version}"'; \
    groupadd --system --gid 10001 histoedge; \
    useradd --system --uid 10001 --gid histoedge --create-home --home-dir /home/histoedge \
        --shell /usr/sbin/nologin histoedge

# ---------------------------------------------------------------------------------------------
# wheel: builds the histoedge wheel from the source tree (the only stage that sees the sources).
FROM python-base AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# Only what the distribution contains (pyproject: histoedge/ and the stage folders installed as
# histoedge.training, histoedge.export and histoedge.serving), so edits to the Dockerfile, docker/
# or tests do not rebuild the wheel and the venvs after it.
COPY pyproject.toml README.md /src/
COPY histoedge /src/histoedge
COPY training /src/training
COPY export /src/export
COPY serving /src/serving
RUN python3 -m pip wheel --no-deps --wheel-dir /wheels /src

# ---------------------------------------------------------------------------------------------
# requirements: the dependency lists of each image, extracted from pyproject.toml. The dependency
# layers below are keyed on these lists, so code edits or a version bump reuse them.
FROM python-base AS requirements
COPY pyproject.toml docker/extras_requirements.py /tmp/build/
RUN set -eux; \
    mkdir /requirements; \
    python3 /tmp/build/extras_requirements.py /tmp/build/pyproject.toml serve > /requirements/cpu.txt; \
    python3 /tmp/build/extras_requirements.py /tmp/build/pyproject.toml gpu > /requirements/gpu.txt; \
    python3 /tmp/build/extras_requirements.py /tmp/build/pyproject.toml train,export > /requirements/train.txt

# ---------------------------------------------------------------------------------------------
# serve-venv: /opt/venv with the `serve` extra (or `gpu` with DEVICE=gpu); no TensorFlow.
FROM python-base AS serve-venv
ARG DEVICE=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
RUN case "$DEVICE" in cpu|gpu) ;; *) echo "DEVICE must be cpu or gpu, not $DEVICE" >&2; exit 1 ;; esac
COPY --from=requirements /requirements/${DEVICE}.txt /tmp/build/requirements.txt
RUN set -eux; \
    python3 -m venv /opt/venv; \
    pip install -r /tmp/build/requirements.txt
COPY --from=wheel /wheels /tmp/wheels
COPY docker/slim_venv.sh /tmp/build/
RUN set -eux; \
    case "$DEVICE" in gpu) extra=gpu ;; *) extra=serve ;; esac; \
    wheel=$(ls /tmp/wheels/histoedge-*.whl); \
    pip install "histoedge[$extra] @ file://$wheel"; \
    pip check; \
    if python -c 'import tensorflow' 2>/dev/null; then echo "TensorFlow leaked into serve" >&2; exit 1; fi; \
    sh /tmp/build/slim_venv.sh --serve /opt/venv

# ---------------------------------------------------------------------------------------------
# train: run `histoedge train` / `histoedge export` with data, runs and models mounted under /work.
#   docker run --rm -v $PWD/data:/work/data:ro -v $PWD/runs:/work/runs -v $PWD/models:/work/models \
#       histoedge-train export --run runs/r1 --repo models --name breast
# Built in place rather than copied from a builder stage: every dependency is a binary wheel, and
# copying a 2 GB TensorFlow venv between stages costs minutes on each build for nothing.
FROM python-base AS train
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=1
COPY --from=requirements /requirements/train.txt /tmp/build/requirements.txt
COPY docker/slim_venv.sh /tmp/build/
RUN set -eux; \
    python3 -m venv /opt/venv; \
    pip install -r /tmp/build/requirements.txt; \
    sh /tmp/build/slim_venv.sh --keep-pip /opt/venv; \
    rm -rf /tmp/build
COPY --from=wheel /wheels /tmp/wheels
RUN set -eux; \
    pip install --no-deps /tmp/wheels/histoedge-*.whl; \
    pip check; \
    rm -rf /tmp/wheels; \
    install -d -o histoedge -g histoedge /work
WORKDIR /work
USER histoedge:histoedge
ENTRYPOINT ["histoedge"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
# serve (default): only the runtime venv on top of the base; no compilers, no TensorFlow.
FROM python-base AS serve
COPY --from=serve-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HISTOEDGE_REPO=/models \
    HISTOEDGE_HOST=0.0.0.0 \
    HISTOEDGE_PORT=8001 \
    HISTOEDGE_METRICS_PORT=8002 \
    HISTOEDGE_HTTP_PORT=8000 \
    HISTOEDGE_METRICS_HOST=0.0.0.0
# Inside the container the metrics port must listen beyond loopback to be published at all;
# publish it only to the monitoring network (-p 127.0.0.1:8002:8002, or a firewall rule), or set
# HISTOEDGE_METRICS_TLS / a bearer token (see SECURITY.md).
# The model repository is mounted read-only here: docker run -v $PWD/models:/models:ro ...
RUN install -d -m 0755 /models
WORKDIR /home/histoedge
USER histoedge:histoedge
# 8000: REST (Open Inference Protocol), image upload and status page; 8001: gRPC; 8002: metrics.
EXPOSE 8000 8001 8002
# Follows HISTOEDGE_PORT when it is overridden; exits 0 only while gRPC health reports SERVING.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "exec histoedge health --server 127.0.0.1:${HISTOEDGE_PORT:-8001}"]
# Exec form: the server is PID 1 and drains on SIGTERM itself (docker stop: give it more than
# HISTOEDGE_GRACE_SECONDS, default 10, e.g. --stop-timeout 20); it starts no
# child processes, so there are no zombies to reap and no init is needed (`docker run --init`
# adds one if a platform wants it). Configuration comes from the HISTOEDGE_* environment;
# arguments after the image name are appended: docker run IMAGE --max-batch-size 8
ENTRYPOINT ["histoedge", "serve"]
CMD []
