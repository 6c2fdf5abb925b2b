"""Per-tenant counters behind the Stats RPC (Prometheus has the fleet-wide view)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.types import CacheInfo, CacheStatus, TenantStats


@dataclass(slots=True)
class _Mutable:
    requests: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    hot_hits: int = 0
    misses: int = 0
    bypassed: int = 0
    coalesced: int = 0
    model_calls: int = 0


class Counters:
    """Plain integers per tenant; the tenant set is bounded by the token table."""

    def __init__(self) -> None:
        self._by_tenant: dict[str, _Mutable] = {}

    def _get(self, tenant: str) -> _Mutable:
        c = self._by_tenant.get(tenant)
        if c is None:
            c = self._by_tenant[tenant] = _Mutable()
        return c

    def count(self, tenant: str, info: CacheInfo) -> None:
        c = self._get(tenant)
        c.requests += 1
        if info.status is CacheStatus.EXACT:
            c.exact_hits += 1
            c.hot_hits += info.hot
        elif info.status is CacheStatus.SEMANTIC:
            c.semantic_hits += 1
        elif info.status is CacheStatus.MISS:
            c.misses += 1
        else:
            c.bypassed += 1
        c.coalesced += info.coalesced

    def model_call(self, tenant: str) -> None:
        self._get(tenant).model_calls += 1

    def of(self, tenant: str) -> TenantStats:
        c = self._get(tenant)
        return TenantStats(
            c.requests, c.exact_hits, c.semantic_hits, c.hot_hits, c.misses, c.bypassed, c.coalesced, c.model_calls
        )

    def per_tenant(self) -> list[tuple[str, TenantStats]]:
        """Every tenant's counters, in the order tenants were first seen (stable across calls)."""
        return [(tenant, self.of(tenant)) for tenant in list(self._by_tenant)]

    def total(self) -> TenantStats:
        """Sum over tenants."""
        c = _Mutable()
        for t in self._by_tenant.values():
            for name in _Mutable.__slots__:  # type: ignore[attr-defined]
                setattr(c, name, getattr(c, name) + getattr(t, name))
        return TenantStats(
            c.requests, c.exact_hits, c.semantic_hits, c.hot_hits, c.misses, c.bypassed, c.coalesced, c.model_calls
        )
