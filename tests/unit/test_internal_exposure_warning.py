"""Cache and inference warn at start when anyone who reaches their port could call them (issue 24, item 2)."""

from __future__ import annotations


def test_an_internal_service_reachable_without_mutual_tls_is_warned_about(caplog) -> None:  # type: ignore[no-untyped-def]
    """Cache and inference say so at start when anyone who reaches the port could call them (issue 24, item 2)."""
    import logging

    from inference_svc.server import build_parser
    from reprise.rpc.config import server_options

    caplog.set_level(logging.WARNING)
    parser = build_parser()
    server_options(parser.parse_args(["--host", "0.0.0.0"]), internal=True)
    assert "without mutual TLS" in caplog.text
    caplog.clear()
    server_options(parser.parse_args(["--host", "127.0.0.1"]), internal=True)
    server_options(parser.parse_args(["--host", "0.0.0.0", "--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca"]), internal=True)
    server_options(parser.parse_args(["--host", "0.0.0.0"]))  # the gateway: public by design
    assert "without mutual TLS" not in caplog.text
