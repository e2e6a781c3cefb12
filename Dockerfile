# syntax=docker/dockerfile:1.7
# inferd image: build the release binary against the pinned libtorch, then
# run it on a slim CUDA base as a non-root user.
#
#   docker build -t inferd:latest .
#   docker run --gpus all -v $PWD/weights:/app/weights:ro -p 8080:8080 inferd:latest \
#       serve --config /app/deploy/config/gpu.toml --host 0.0.0.0 --port 8080
#
# libtorch comes from the PyPI torch wheel pinned in scripts/requirements.txt
# (torch==2.11.0+cu130, what tch 0.24 expects). Its CUDA libraries come from
# the wheel's nvidia-* dependencies, so the runtime base needs no CUDA
# toolkit: only the driver hooks of nvidia/cuda's "base" flavour. The same
# image runs on CPU (the CPU profile of docker-compose.cpu.yml).

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04

# ---- build -------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
# tcmalloc: build.rs links it so it serves libtorch's allocations.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv libtcmalloc-minimal4 \
 && rm -rf /var/lib/apt/lists/*
# torch into a plain folder (no interpreter needed at run time); torch/lib
# keeps its relative rpaths to ../../nvidia/*/lib.
COPY scripts/requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/pip \
 && /opt/pip/bin/pip install --no-cache-dir --target /opt/site-packages "$(grep -E '^torch==' /tmp/requirements.txt)" \
 && test -f /opt/site-packages/torch/lib/libtorch_cuda.so
# build.rs adds an rpath to $LIBTORCH/lib and forces libtorch_cuda in.
ENV LIBTORCH=/opt/site-packages/torch
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin inferd \
 && mkdir -p /out && cp target/release/inferd /out/inferd \
 && strip --strip-debug /out/inferd

# ---- run ---------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
# The binary needs tcmalloc (Ubuntu 24.04 names the package ...4t64).
RUN apt-get update \
 && (apt-get install -y --no-install-recommends libtcmalloc-minimal4t64 \
     || apt-get install -y --no-install-recommends libtcmalloc-minimal4) \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 inferd \
 && useradd --system --uid 10001 --gid inferd --home-dir /app --shell /usr/sbin/nologin inferd
# Same paths as in the builder, so the binary's rpath finds libtorch.
COPY --from=builder /opt/site-packages/torch/lib /opt/site-packages/torch/lib
COPY --from=builder /opt/site-packages/nvidia /opt/site-packages/nvidia
COPY --from=builder /out/inferd /usr/local/bin/inferd
ENV LD_LIBRARY_PATH=/opt/site-packages/torch/lib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /app
# Configs ship in the image; compose and Kubernetes mount their own over them.
COPY config/ /app/config/
COPY deploy/config/ /app/deploy/config/
# Weights are never baked in: mount a volume at /app/weights. /app/data is
# [server] data_dir (config/default.toml's "../data", deploy/config/gpu.toml's).
RUN mkdir -p /app/weights /app/data && chown -R inferd:inferd /app
USER inferd:inferd
EXPOSE 8080
# Liveness only (the process answers); readiness (/health/ready, 503 while
# loading or draining) is for the balancer. bash's /dev/tcp: no curl needed.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 && printf "GET /health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" >&3 && head -n1 <&3 | grep -q " 200 "'
ENTRYPOINT ["inferd"]
# The default command is a local demo without API keys (it warns at start);
# real deployments mount a config with [auth] keys_file or set
# INFERD_API_KEYS_FILE, and drop --allow-unauthenticated.
CMD ["serve", "--config", "/app/config/default.toml", "--host", "0.0.0.0", "--port", "8080", "--allow-unauthenticated"]
