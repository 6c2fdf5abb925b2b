# syntax=docker/dockerfile:1.7
# Reprise gateway: the public gRPC API. Only the gRPC runtime: no torch, a small image.
#   docker build -f deploy/docker/gateway.Dockerfile -t reprise-gateway:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.9-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml ./
COPY deploy/docker/requirements.py deploy/docker/requirements.py
RUN python deploy/docker/requirements.py gateway > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY protos protos
COPY reprise reprise
COPY gateway gateway
RUN pip install "$(python deploy/docker/requirements.py --pin grpcio-tools)" \
 && python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. $(find protos -name '*.proto') \
 && pip uninstall -y grpcio-tools

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 reprise \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin reprise
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src/reprise /app/reprise
COPY --from=build /src/gateway /app/gateway
COPY deploy/entrypoint.sh deploy/pin.sh deploy/healthcheck.py /app/deploy/
COPY deploy/lib /app/deploy/lib
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    REPRISE_PIN_MODE=none
WORKDIR /app
USER 10001:10001
EXPOSE 50050 9100
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "/app/deploy/healthcheck.py", "127.0.0.1:50050"]
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["python", "-m", "gateway"]
