"""The tenant a call is made for, as it travels between Reprise's services.

The gateway authenticates the caller (``gateway/auth.py``) and passes the tenant
to the services behind it in this metadata header; the inference service queues
each tenant's work fairly with it. Services behind the gateway trust the header:
they are reachable only by the gateway (loopback or mutual TLS).
"""

from __future__ import annotations

import contextvars

TENANT_HEADER = "x-reprise-tenant"

#: The tenant of the request being served (set by the gateway's servicer; read by its clients).
tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant", default=None)


def from_metadata(metadata: object, default: str) -> str:
    """The tenant named in a call's invocation metadata, or ``default``."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == TENANT_HEADER and value:
            return str(value)
    return default
