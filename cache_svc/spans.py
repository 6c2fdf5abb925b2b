"""The cache tiers of one lookup as trace spans, laid out from the stage timings the core measured.

The core (:mod:`cache_svc.core.service`) times each pipeline stage into
``LookupResult.stage_ms`` and knows nothing of tracing; the servicer calls
:func:`lookup_spans` afterwards with the wall-clock start of the call. The
stages run one after another (``stage_ms`` keeps their order), so their spans
are placed end to end from that start: normalize, the exact tier, the semantic
tier (embed, search, fetch, under one ``cache.semantic`` span) and the
verification guard.
"""

from __future__ import annotations

from cache_svc.core.types import LookupResult
from reprise import tracing

#: Span name per stage; a stage not listed here is traced as ``cache.<stage>``.
_NAMES = {
    "normalize": "cache.normalize",
    "exact": "cache.exact",
    "embed": "cache.semantic.embed",
    "search": "cache.semantic.search",
    "fetch": "cache.semantic.fetch",
    "guard": "cache.verify",
}
_SEMANTIC = ("embed", "search", "fetch")


def lookup_spans(start_ns: int, namespace: str, result: LookupResult) -> None:
    """Record the stages of ``result`` as children of the current (Lookup RPC) span."""
    if not tracing.enabled():
        return
    base = {tracing.NAMESPACE: namespace, tracing.CACHE_TIER: result.tier.value}
    tracing.annotate({**base, tracing.SIMILARITY: result.similarity})  # on the Lookup RPC's span
    t = start_ns
    semantic_start: int | None = None
    semantic_end: int | None = None
    timed: list[tuple[str, int, int, str]] = []
    for stage, ms in result.stage_ms.items():  # the order the core timed them in
        end = t + int(ms * 1e6)
        timed.append((stage, t, end, _NAMES.get(stage, f"cache.{stage}")))
        if stage in _SEMANTIC:
            semantic_start = t if semantic_start is None else semantic_start
            semantic_end = end
        t = end
    parent = None
    if semantic_start is not None and semantic_end is not None:
        # One span for the semantic tier, its stages below it.
        attrs = {**base, tracing.SIMILARITY: result.similarity}
        parent = tracing.record("cache.semantic", semantic_start, semantic_end, attrs)
    for stage, begin, end, name in timed:
        attrs = dict(base)
        if stage in ("search", "guard"):
            attrs[tracing.SIMILARITY] = result.similarity
        tracing.record(name, begin, end, attrs, parent=parent if stage in _SEMANTIC else None)
