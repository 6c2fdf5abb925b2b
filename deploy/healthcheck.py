"""Exit 0 when a gRPC server answers grpc.health.v1 Check with SERVING, else 1.

    python /app/deploy/healthcheck.py 127.0.0.1:50051 [service]

The images' Docker HEALTHCHECK. Kubernetes does not use it: the manifests
use native `grpc:` probes against the same health service.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout_s: float = 3.0) -> bool:
    with grpc.insecure_channel(address) as channel:
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
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: healthcheck.py host:port [service]")
    sys.exit(0 if check(*sys.argv[1:]) else 1)
