"""Command-line flags with environment-variable defaults, read only from ``main()``.

Every flag ``--some-option`` of service ``X`` can also be set with
``REPRISE_X_SOME_OPTION``; the flag wins. ``--help`` shows each variable name.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from reprise.rpc.server import ServerOptions
from reprise.rpc.tls import ClientTLS, ServerTLS

log = logging.getLogger(__name__)


class EnvArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose options default to ``<prefix><OPTION>`` environment variables."""

    def __init__(self, env_prefix: str, environ: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(**kwargs)
        self.env_prefix = env_prefix
        self._environ = os.environ if environ is None else environ

    def env_name(self, flag: str) -> str:
        return self.env_prefix + flag.lstrip("-").replace("-", "_").upper()

    def add_option(
        self,
        flag: str,
        *,
        default: Any = None,
        type: Callable[[str], Any] = str,
        help: str,
        choices: Sequence[Any] | None = None,
    ) -> None:
        env = self.env_name(flag)
        raw = self._environ.get(env)
        if raw is not None:
            try:
                default = type(raw)
            except ValueError as exc:
                self.error(f"{env}={raw!r}: {exc}")
        self.add_argument(flag, default=default, type=type, choices=choices, help=f"{help} [env {env}]")

    def add_flag(self, flag: str, *, help: str) -> None:
        """A boolean switch; the env var accepts 1/true/yes."""
        env = self.env_name(flag)
        default = self._environ.get(env, "").lower() in ("1", "true", "yes", "on")
        self.add_argument(flag, action="store_true", default=default, help=f"{help} [env {env}]")


def add_server_options(parser: EnvArgumentParser, default_port: int, default_metrics_port: int) -> None:
    """Flags every service shares: where to listen, shutdown grace, limits, TLS, metrics, logging."""
    parser.add_option("--host", default="0.0.0.0", help="address to listen on")
    parser.add_option("--port", default=default_port, type=int, help="gRPC port (0 picks a free one)")
    parser.add_option("--grace", default=10.0, type=float, help="seconds in-flight calls get on SIGTERM")
    parser.add_option("--max-message-bytes", default=4 * 1024 * 1024, type=int, help="largest gRPC message accepted")
    parser.add_option("--tls-cert", help="server certificate (PEM); enables TLS")
    parser.add_option("--tls-key", help="server private key (PEM)")
    parser.add_option("--tls-client-ca", help="CA that client certificates must chain to; enables mTLS")
    parser.add_option("--metrics-port", default=default_metrics_port, type=int, help="Prometheus /metrics port (0: off)")
    parser.add_option("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_option("--log-format", default="json", choices=("json", "text"), help="log line format")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_options(args: argparse.Namespace, max_concurrent_rpcs: int | None = None, *, internal: bool = False) -> ServerOptions:
    """``internal``: a service only the gateway should call (cache, inference): a warning when anyone could."""
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("--tls-cert and --tls-key go together")
        tls = ServerTLS(cert=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca)
    if internal and not _loopback(args.host) and (tls is None or tls.client_ca is None):
        log.warning(
            "listening on %s:%d without mutual TLS: anyone who can reach the port can call it; bind 127.0.0.1 "
            "(a sidecar) or set --tls-client-ca (docs/deploy.md, Internal authentication)", args.host, args.port,
        )
    return ServerOptions(
        host=args.host,
        port=args.port,
        grace_s=args.grace,
        max_message_bytes=args.max_message_bytes,
        max_concurrent_rpcs=max_concurrent_rpcs,
        tls=tls,
        metrics_port=args.metrics_port,
    )


def add_client_tls_options(parser: EnvArgumentParser, peer: str) -> None:
    """Flags for a TLS connection to ``peer`` ("cache", "inference")."""
    parser.add_option(f"--{peer}-tls-ca", help=f"CA to verify the {peer} service with; enables TLS to it")
    parser.add_option(f"--{peer}-tls-cert", help=f"client certificate for mTLS to the {peer} service")
    parser.add_option(f"--{peer}-tls-key", help=f"client key for mTLS to the {peer} service")


def client_tls(args: argparse.Namespace, peer: str) -> ClientTLS | None:
    ca, cert, key = (getattr(args, f"{peer}_tls_{part}") for part in ("ca", "cert", "key"))
    if not (ca or cert or key):
        return None
    return ClientTLS(ca=ca, cert=cert, key=key)
