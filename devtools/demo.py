"""``make demo``: start the stack, send a few requests (with repeats), print what came back, stop.

Every line shows where the answer came from (MISS, EXACT, SEMANTIC) and how
long the call took, so the cache's effect is visible at a glance.
"""

from __future__ import annotations

import os
import sys
import time

import grpc

from devtools.devstack import StackConfig, running_stack
from reprise.gateway.v1 import gateway_pb2 as pb
from reprise.gateway.v1 import gateway_pb2_grpc as pb_grpc

STATUS = {v.number: v.name.removeprefix("CACHE_STATUS_") for v in pb.CacheStatus.DESCRIPTOR.values}
LABEL = {1: "Positive", 2: "Negative"}


def _status(info: pb.CacheInfo) -> str:
    # A miss that joined an identical computation (running, or finished and not yet stored).
    return STATUS[info.status] + ("+join" if info.coalesced else "")


def _line(call: str, text: str, info: pb.CacheInfo, ms: float, answer: str) -> str:
    status = _status(info)
    print(f"{call:<10} {status:<9} {ms:8.1f} ms  {text!r:<38} -> {answer}", flush=True)
    return status


def run_tour(stub: pb_grpc.GatewayStub) -> list[str]:
    """Send the tour's calls, print a line each, and return their cache statuses."""
    statuses = []
    for text in ["I love this phone, the battery lasts all day!", "这家餐厅的菜太难吃了，服务也很差。",
                 "I love this phone, the battery lasts all day!"]:
        t = time.perf_counter()
        r = stub.Classify(pb.ClassifyRequest(text=text), timeout=120)
        statuses.append(_line("Classify", text, r.cache, (time.perf_counter() - t) * 1000,
                              f"{LABEL[r.result.label]} ({r.result.probability:.2f})"))
    for text in ["What is a cache, in one sentence?", "What is a cache, in one sentence?"]:
        t = time.perf_counter()
        r = stub.Chat(pb.ChatRequest(text=text), timeout=300)
        statuses.append(_line("Chat", text, r.cache, (time.perf_counter() - t) * 1000, repr(r.reply[:80])))
    text = "The delivery was late but the food was great."
    for _ in range(2):
        t = time.perf_counter()
        r = stub.Analyze(pb.AnalyzeRequest(text=text), timeout=300)
        statuses.append(_line("Analyze", text, r.reply_cache, (time.perf_counter() - t) * 1000,
                              f"{LABEL[r.sentiment.label]} [{_status(r.sentiment_cache)}] / {r.reply[:50]!r}"))
    t = time.perf_counter()
    chunks = list(stub.ChatStream(pb.ChatStreamRequest(text="What is a cache, in one sentence?"), timeout=300))
    statuses.append(_line("ChatStream", "What is a cache, in one sentence?", chunks[0].cache,
                          (time.perf_counter() - t) * 1000,
                          f"{len(chunks)} chunks, {''.join(c.delta for c in chunks)[:50]!r}"))
    return statuses


def main() -> None:
    # The internal hop authenticated, as in make up and the manifests (gateway -> inference over mTLS).
    config = StackConfig(model=os.environ.get("REPRISE_MODEL", "default"), internal_tls=True)
    print("starting redis, inference (the first start converts the model: about a minute), cache, gateway ...",
          flush=True)
    t = time.perf_counter()
    with running_stack(config) as stack:
        print(f"stack ready in {time.perf_counter() - t:.1f}s; gateway at {stack.gateway.address}\n", flush=True)
        with grpc.insecure_channel(stack.gateway.address) as channel:
            statuses = run_tour(pb_grpc.GatewayStub(channel))
    if any(status.endswith("+join") for status in statuses):
        print("\nMISS+join: computed once for an identical request whose answer was not stored yet (singleflight).",
              flush=True)
    print("\nstopped everything the demo started.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
