"""Per-task cache defaults and the plan one request follows.

A caller's :class:`~gateway.core.types.Policy` leaves fields unset to mean
"the task's default"; :meth:`Policies.plan` merges the two into a
:class:`Plan` the flow executes without further decisions.

Defaults, and why:

* sentiment: exact hits only. Two differently worded texts can carry opposite
  sentiment ("good" / "not good") while embedding close together; a label is
  cheap to recompute, a wrong one is not.
* chat: exact and semantic hits (the cache's per-task threshold and false-hit
  guard decide).
* sampled decoding (temperature > 0 and no seed): neither looked up nor stored
  nor coalesced. The caller asked for a fresh sample; replaying the first one
  would quietly turn sampling into greedy-with-extra-steps. ``cache_sampled``
  opts in. With a seed a sampled reply is reproducible, so it is cached like a
  greedy one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.core.types import TASK_CHAT, TASK_SENTIMENT, Policy
from reprise.domain import Decoding

REASON_NO_CACHE = "no_cache policy"
REASON_SAMPLED = "sampled decoding"


@dataclass(frozen=True, slots=True)
class TaskDefaults:
    """What an unset policy field means for one task."""

    exact_only: bool = False
    #: None: the cache's per-task threshold.
    min_similarity: float | None = None
    #: None: the cache's default lifetime.
    ttl_s: int | None = None
    max_age_s: int | None = None
    cache_sampled: bool = False
    #: Budget for this task's cache lookups; None: the gateway's ``--cache-timeout-ms``.
    cache_timeout_s: float | None = None


#: A chat miss costs seconds (at least ~0.4 s), a classify miss ~0.1 s: a chat lookup may take
#: longer before it is given up, so a burst of paraphrases queued at the cache's embedder and
#: verifier is served rather than turned into BYPASS (0.25x the cheapest chat miss at worst).
CHAT_CACHE_TIMEOUT_S = 0.1


def default_task_defaults() -> dict[str, TaskDefaults]:
    return {TASK_SENTIMENT: TaskDefaults(exact_only=True), TASK_CHAT: TaskDefaults(cache_timeout_s=CHAT_CACHE_TIMEOUT_S)}


@dataclass(frozen=True, slots=True)
class Plan:
    """How one request uses the cache, every default resolved."""

    lookup: bool
    store: bool
    #: Identical in-flight requests may share one model call.
    coalesce: bool
    exact_only: bool
    min_similarity: float | None
    ttl_s: int | None
    max_age_s: int | None
    #: Why the lookup is skipped (reported as the BYPASS reason).
    reason: str = ""
    #: The lookup's budget; None: the gateway's.
    lookup_timeout_s: float | None = None


@dataclass(frozen=True)
class Policies:
    defaults: Mapping[str, TaskDefaults] = field(default_factory=default_task_defaults)

    def plan(self, task: str, policy: Policy, decoding: Decoding | None = None) -> Plan:
        d = self.defaults.get(task, TaskDefaults())
        sampled = decoding is not None and not decoding.greedy and decoding.seed is None
        cache_sampled = d.cache_sampled if policy.cache_sampled is None else policy.cache_sampled
        uncacheable = sampled and not cache_sampled
        reason = REASON_NO_CACHE if policy.no_cache else REASON_SAMPLED if uncacheable else ""
        return Plan(
            lookup=not (policy.no_cache or uncacheable),
            store=not (policy.no_store or uncacheable),
            coalesce=not uncacheable,
            exact_only=d.exact_only if policy.exact_only is None else policy.exact_only,
            min_similarity=d.min_similarity if policy.min_similarity is None else policy.min_similarity,
            ttl_s=d.ttl_s if policy.ttl_s is None else policy.ttl_s,
            max_age_s=d.max_age_s if policy.max_age_s is None else policy.max_age_s,
            reason=reason,
            lookup_timeout_s=d.cache_timeout_s,
        )
