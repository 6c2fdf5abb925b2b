"""Exit 0 when a gRPC server answers grpc.health.v1 Check with SERVING, else 1.

    python /app/deploy/healthcheck.py 127.0.0.1:50051 [service]
    python /app/deploy/healthcheck.py 127.0.0.1:50051 --ca ca.crt --cert tls.crt --key tls.key --server-name reprise-inference

The images' Docker HEALTHCHECK, and the Kubernetes probe (an ``exec`` probe)
of the two servers a native ``grpc:`` probe cannot reach: the cache sidecar,
which listens on the pod's loopback only, and inference, which requires
mutual TLS (the kubelet's gRPC probe speaks neither). With ``--cert`` the
probe shows a certificate of the internal CA (the inference pod's own).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _channel(address: str, ca: str | None, cert: str | None, key: str | None, server_name: str | None) -> grpc.Channel:
    if not (ca or cert):
        return grpc.insecure_channel(address)
    read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
    creds = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(address, creds, options=options)


def check(
    address: str, service: str = "", timeout_s: float = 3.0, *,
    ca: str | None = None, cert: str | None = None, key: str | None = None, server_name: str | None = None,
) -> bool:
    with _channel(address, ca, cert, key, server_name) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as err:
            print(f"{address}: {err.code().name} {err.details()}", file=sys.stderr)
            return False
    print(f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)}", file=sys.stderr)
    return response.status == health_pb2.HealthCheckResponse.SERVING


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="healthcheck.py")
    p.add_argument("address", help="host:port")
    p.add_argument("service", nargs="?", default="", help="service name (default: the server's overall health)")
    p.add_argument("--ca", help="CA to verify the server with (enables TLS)")
    p.add_argument("--cert", help="client certificate (mutual TLS)")
    p.add_argument("--key", help="client key")
    p.add_argument("--server-name", help="name to verify in the server certificate")
    p.add_argument("--timeout", type=float, default=3.0)
    a = p.parse_args()
    sys.exit(0 if check(a.address, a.service, a.timeout, ca=a.ca, cert=a.cert, key=a.key, server_name=a.server_name) else 1)
