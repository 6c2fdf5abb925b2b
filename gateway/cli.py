"""Command line for trying the gateway by hand: ``python -m gateway.cli analyze|classify|chat|stats``.

    python -m gateway.cli analyze "这家餐厅的菜太难吃了"
    python -m gateway.cli classify "I love this phone" --json
    python -m gateway.cli chat "What is a cache?"            # streamed
    python -m gateway.cli chat                                # interactive, history kept
    python -m gateway.cli --token "$TOKEN" stats

Connection flags go before the command and also read ``REPRISE_CLIENT_*``
environment variables (``REPRISE_CLIENT_TARGET``, ``REPRISE_CLIENT_TOKEN``, ...).
Each answer ends with where it came from (cache status, hot layer, tokens,
timings) on stderr, so stdout stays the answer alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from gateway.core.types import TASKS, CacheInfo, CacheStatus, Policy, Timings
from gateway.sdk import Client, ClientOptions
from reprise.domain import Decoding, Role, Turn, Usage
from reprise.errors import ServiceError
from reprise.rpc.config import EnvArgumentParser
from reprise.rpc.tls import ClientTLS


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser("REPRISE_CLIENT_", prog="python -m gateway.cli", description="Talk to a Reprise gateway.")
    p.add_option("--target", default="127.0.0.1:50050", help="gateway address host:port")
    p.add_option("--token", default="", help="bearer token (when the gateway has auth on)")
    p.add_option("--timeout", default=120.0, type=float, help="deadline per call in seconds")
    p.add_option("--tls-ca", help="CA to verify the gateway with; enables TLS")
    p.add_option("--tls-cert", help="client certificate for mTLS")
    p.add_option("--tls-key", help="client key for mTLS")
    p.add_option("--tls-server-name", help="name to verify in the gateway certificate")
    p.add_flag("--json", help="print the whole response as JSON")
    sub = p.add_subparsers(dest="command", required=True, parser_class=argparse.ArgumentParser)

    def policy_flags(sp: argparse.ArgumentParser) -> None:
        g = sp.add_argument_group("cache policy")
        g.add_argument("--no-cache", action="store_true", help="do not look up (always compute)")
        g.add_argument("--no-store", action="store_true", help="do not store the answer")
        g.add_argument("--exact-only", dest="exact_only", action="store_true", default=None, help="exact hits only")
        g.add_argument("--semantic", dest="exact_only", action="store_false", help="allow semantic hits")
        g.add_argument("--min-similarity", type=float, help="semantic threshold in [0, 1]")
        g.add_argument("--ttl", type=int, help="lifetime of the stored answer, seconds")
        g.add_argument("--max-age", type=int, help="accept only answers at most this old, seconds")
        g.add_argument("--cache-sampled", action="store_true", default=None, help="cache sampled replies too")

    def decoding_flags(sp: argparse.ArgumentParser) -> None:
        g = sp.add_argument_group("decoding")
        g.add_argument("--temperature", type=float)
        g.add_argument("--top-p", type=float)
        g.add_argument("--max-new-tokens", type=int)
        g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
        g.add_argument("--seed", type=int)
        g.add_argument("--top-k", type=int, help="sample among the k likeliest tokens (0 = no limit)")
        g.add_argument("--min-p", type=float, help="drop tokens below this share of the likeliest one's probability")
        g.add_argument("--repetition-penalty", type=float, help="> 1 discourages repeating tokens (1 = off)")

    sp = sub.add_parser("analyze", help="sentiment and a reply for one text")
    sp.add_argument("text")
    sp.add_argument("--tasks", default="", help=f"comma-separated subset of {','.join(TASKS)}")
    policy_flags(sp)
    decoding_flags(sp)
    sp = sub.add_parser("classify", help="sentiment of one text")
    sp.add_argument("text")
    policy_flags(sp)
    sp = sub.add_parser("chat", help="one chat turn (streamed), or an interactive chat without TEXT")
    sp.add_argument("text", nargs="?")
    sp.add_argument("--system", help="system prompt")
    sp.add_argument("--no-stream", action="store_true", help="wait for the whole reply")
    policy_flags(sp)
    decoding_flags(sp)
    sub.add_parser("stats", help="this gateway's counters for your tenant")
    return p


def _policy(a: argparse.Namespace) -> Policy:
    return Policy(
        no_cache=a.no_cache,
        no_store=a.no_store,
        exact_only=a.exact_only,
        min_similarity=a.min_similarity,
        ttl_s=a.ttl,
        max_age_s=a.max_age,
        cache_sampled=a.cache_sampled,
    )


def _decoding(a: argparse.Namespace) -> Decoding:
    return Decoding(
        a.temperature, a.top_p, a.max_new_tokens, tuple(a.stop), a.seed, a.top_k, a.min_p, a.repetition_penalty
    )


def _plain(obj: Any) -> Any:
    """JSON-ready form of the SDK's dataclasses."""
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def describe(cache: CacheInfo | None, usage: Usage | None, timings: Timings | None) -> str:
    """One line: where the answer came from and what it cost."""
    parts = []
    if cache is not None:
        status = cache.status.value
        if cache.status is CacheStatus.EXACT:
            status = "exact hit" + (" (hot)" if cache.hot else "")
        elif cache.status is CacheStatus.SEMANTIC:
            status = f"semantic hit {cache.similarity:.3f} of {cache.matched_text!r}"
        elif cache.status is CacheStatus.BYPASS:
            status = f"bypass ({cache.reason})"
        if cache.coalesced:
            status += ", coalesced"
        parts.append(status)
    if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
        parts.append(f"{usage.prompt_tokens} prompt tokens ({usage.cached_tokens} cached), {usage.completion_tokens} generated")
    if timings is not None:
        parts.append(f"{timings.total_ms:.1f} ms (cache {timings.cache_ms:.1f}, model {timings.inference_ms:.1f})")
    return "[" + " · ".join(parts) + "]"


def _chat_turn(client: Client, a: argparse.Namespace, text: str, history: list[Turn], out: TextIO, err: TextIO) -> str:
    kwargs = dict(history=history, system_prompt=a.system, decoding=_decoding(a), policy=_policy(a))
    if a.no_stream or a.json:
        r = client.chat(text, **kwargs)  # type: ignore[arg-type]
        if a.json:
            print(json.dumps(_plain(r), ensure_ascii=False), file=out)
        else:
            print(r.reply, file=out)
            print(describe(r.cache, r.usage, r.timings), file=err)
        return r.reply
    pieces, cache = [], None
    for d in client.chat_stream(text, **kwargs):  # type: ignore[arg-type]
        cache = d.cache or cache
        pieces.append(d.delta)
        print(d.delta, end="", file=out, flush=True)
        if d.timings is not None:
            print(file=out)
            print(describe(cache, d.usage, d.timings), file=err)
    return "".join(pieces)


def run(a: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr, stdin: TextIO = sys.stdin) -> int:
    tls = None
    if a.tls_ca or a.tls_cert or a.tls_key:
        tls = ClientTLS(ca=a.tls_ca, cert=a.tls_cert, key=a.tls_key, server_name=a.tls_server_name)
    options = ClientOptions(a.target, token=a.token or None, tls=tls, timeout_s=a.timeout)
    try:
        with Client(options) as client:
            if a.command == "classify":
                r = client.classify(a.text, policy=_policy(a))
                if a.json:
                    print(json.dumps(_plain(r), ensure_ascii=False), file=out)
                else:
                    print(f"{r.result.label.value} {r.result.probability:.3f}", file=out)
                    print(describe(r.cache, r.usage, r.timings), file=err)
            elif a.command == "analyze":
                tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
                r = client.analyze(a.text, decoding=_decoding(a), policy=_policy(a), tasks=tasks)
                if a.json:
                    print(json.dumps(_plain(r), ensure_ascii=False), file=out)
                else:
                    if r.sentiment is not None:
                        s = r.sentiment
                        print(f"sentiment: {s.result.label.value} {s.result.probability:.3f}", file=out)
                        print(describe(s.cache, s.usage, s.timings), file=err)
                    if r.chat is not None:
                        print(f"reply: {r.chat.reply}", file=out)
                        print(describe(r.chat.cache, r.chat.usage, r.chat.timings), file=err)
            elif a.command == "chat":
                if a.text is not None:
                    _chat_turn(client, a, a.text, [], out, err)
                else:
                    history: list[Turn] = []
                    print("chat (empty line or Ctrl-D ends)", file=err)
                    for line in stdin:
                        text = line.strip()
                        if not text:
                            break
                        reply = _chat_turn(client, a, text, history, out, err)
                        history += [Turn(Role.USER, text), Turn(Role.ASSISTANT, reply)]
            else:
                s = client.stats()
                if a.json:
                    print(json.dumps(_plain(s), ensure_ascii=False), file=out)
                else:
                    c = s.counters
                    hit = (c.exact_hits + c.semantic_hits) / c.requests if c.requests else 0.0
                    print(f"tenant {s.tenant}: {c.requests} requests, hit ratio {hit:.1%} "
                          f"(exact {c.exact_hits}, hot {c.hot_hits}, semantic {c.semantic_hits}), "
                          f"{c.misses} misses, {c.bypassed} bypassed, {c.coalesced} coalesced, "
                          f"{c.model_calls} model calls", file=out)
                    print(f"breaker {s.breaker_state}; hot layer {'on' if s.hot_active else 'off'} "
                          f"({s.hot_entries} entries); in flight {s.in_flight} (model {s.model_in_flight}); "
                          f"refused {s.rejected_overload}", file=out)
                    entries = "unknown (cache unreachable)" if s.cache_entries is None else str(s.cache_entries)
                    model = f"{s.model.model_id} @ {s.model.revision}" if s.model else "unknown"
                    print(f"cache entries {entries}; model {model}", file=out)
    except ServiceError as exc:
        print(f"error: {exc.code}: {exc.message}", file=err)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = run(args)
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)


if __name__ == "__main__":
    main()
