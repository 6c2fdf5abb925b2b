"""A redis.asyncio client from one URL: standalone, Sentinel or Cluster; AUTH and TLS.

URL forms (``rediss`` variants use TLS):

- ``redis://[[user]:password@]host:port[/db]``, ``rediss://...``, ``unix:///path.sock``
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]``:
  the master of ``service_name`` as the Sentinels report it; follows failovers.
- ``redis+cluster://[[user]:password@]host:port[,host:port...]``: a Redis Cluster,
  discovered from any of the given nodes.

A password given by flag (``--redis-password``) wins over the URL's, so the
secret can come from a mounted file or an env var instead of the URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel


@dataclass(frozen=True)
class RedisOptions:
    url: str = "redis://127.0.0.1:6379/0"
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    #: Verify the server's host name against its certificate.
    tls_check_hostname: bool = True
    socket_timeout_s: float = 2.0


def _hosts(netloc: str) -> list[tuple[str, int]]:
    hostpart = netloc.rsplit("@", 1)[-1]
    out = []
    for item in hostpart.split(","):
        host, _, port = item.rpartition(":")
        if not host:
            host, port = port, "6379"
        out.append((host.strip("[]"), int(port or 6379)))
    return out


def _auth(netloc: str) -> tuple[str | None, str | None]:
    if "@" not in netloc:
        return None, None
    creds = netloc.rsplit("@", 1)[0]
    user, _, password = creds.partition(":")
    return (unquote(user) or None, unquote(password) or None)


def connect(opts: RedisOptions) -> Any:
    """The client for ``opts.url`` (not yet connected: the first command connects)."""
    parts = urlsplit(opts.url)
    scheme = parts.scheme
    tls = scheme.startswith("rediss")
    common: dict[str, Any] = {"socket_timeout": opts.socket_timeout_s, "socket_connect_timeout": opts.socket_timeout_s}
    if tls:
        common.update(ssl_ca_certs=opts.tls_ca, ssl_certfile=opts.tls_cert, ssl_keyfile=opts.tls_key,
                      ssl_check_hostname=opts.tls_check_hostname)
    user, password = _auth(parts.netloc)
    password = opts.password or password
    if scheme in ("redis", "rediss", "unix"):
        kwargs = dict(common) if tls else {k: v for k, v in common.items() if not k.startswith("ssl_")}
        url = opts.url
        if opts.password:
            # redis-py lets the URL's password win over keyword arguments: drop it from the URL.
            kwargs["password"] = opts.password
            if "@" in parts.netloc:
                url = parts._replace(netloc=(f"{user}@" if user else "") + parts.netloc.rsplit("@", 1)[1]).geturl()
        return aioredis.from_url(url, **kwargs)
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("a sentinel URL needs the service name: redis+sentinel://host:port/mymaster[/db]")
        db = int(path[1]) if len(path) > 1 else 0
        ssl = {"ssl": True} if tls else {}
        sentinel = Sentinel(
            _hosts(parts.netloc),
            sentinel_kwargs={**common, **ssl, "password": password, "username": user},
            **common, **ssl, password=password, username=user, db=db,
        )
        return sentinel.master_for(path[0])
    if scheme in ("redis+cluster", "rediss+cluster"):
        nodes = [ClusterNode(h, p) for h, p in _hosts(parts.netloc)]
        return RedisCluster(startup_nodes=nodes, password=password, username=user, ssl=tls, **common)
    raise ValueError(f"unsupported redis URL scheme {scheme!r}")


def hint(opts: RedisOptions, error: str) -> str:
    """A likely cause of a failed connection that ``error`` alone does not name ("" when none applies).

    A connection reset (or closed) is what a TLS port gives a plain client, and (depending on timing, in
    TLS 1.3) what a Redis that requires client certificates gives a client without one.
    """
    if not any(s in error for s in ("reset by peer", "Connection closed by server", "certificate required")):
        return ""
    if not urlsplit(opts.url).scheme.startswith("rediss"):
        return "if that port speaks TLS, use a rediss:// URL"
    if not opts.tls_cert:
        return "if that Redis requires client certificates, pass --redis-tls-cert and --redis-tls-key"
    return ""

