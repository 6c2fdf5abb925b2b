"""Drive one method with ghz's load model on grpc.aio and collect one result per call.

``concurrency`` workers share ``connections`` channels (worker i uses channel
i mod connections). Each worker takes the next request number from a shared
counter and sends ``data[n % len(data)]`` (ghz's round-robin), rendered when it
holds template actions. With ``rps`` the starts are paced globally (request n
starts no earlier than n/rps seconds into the run); the workers still bound
how many are in flight. A run ends after ``total`` requests, or at
``duration`` (then ``duration-stop`` decides about calls in flight: ``close``
cancels and reports them, ``ignore`` cancels and drops them, ``wait`` lets them
finish), or at ``max-duration``.

Outside ghz's model, for :mod:`bench.loadgen.procs` (one load from several
client processes): ``part=(i, k)`` makes this process send request numbers
i, i+k, i+2k ... (so k processes together send each number once, and calls in
flight at the same moment carry different data elements, as in one process);
``warmup`` calls go out on the same channels before the clock starts and are
not reported; ``ready`` is awaited after them, before the clock starts.
"""

from __future__ import annotations

import asyncio
import itertools
import resource
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.loadgen.config import LoadConfig
from bench.loadgen.rpc import GO_CODE, Method, channel_credentials, channel_options
from bench.loadgen.templates import CallData, Template


@dataclass(frozen=True)
class CallResult:
    """One finished call, in ghz's terms plus Reprise's cache status."""

    request_number: int
    #: Wall clock at the start of the call, ns since the epoch.
    timestamp_ns: int
    latency_ns: int
    #: Go-style status name ("OK", "ResourceExhausted", ...).
    status: str
    #: ghz's error string ("rpc error: code = ... desc = ..."), empty when OK.
    error: str = ""
    #: {cache field: status} read from the response (first message of a stream).
    cache: dict[str, str] = field(default_factory=dict)
    #: Time to the first message of a server stream, ns (0 for unary calls).
    first_message_ns: int = 0
    messages: int = 0


@dataclass
class RunResult:
    config: LoadConfig
    method: Method
    results: list[CallResult]
    #: Wall time of the whole run (ghz's "total"), ns.
    total_ns: int
    end_reason: str
    started_ns: int
    #: CPU this client process used (user + system), seconds.
    client_cpu_s: float


class _Request:
    """A data element, serialized once when it has no template actions."""

    def __init__(self, method: Method, data: dict, index: int) -> None:
        self.data = data
        self.where = f"data[{index}]"
        self.templated = Template.has_actions(data)
        self.payload = None if self.templated else method.encode(data, self.where)


def _error_text(code: grpc.StatusCode, details: str | None) -> str:
    return f"rpc error: code = {GO_CODE.get(code.name, code.name)} desc = {details or ''}"


def make_channel(cfg: LoadConfig) -> grpc.aio.Channel:
    creds = channel_credentials(cfg)
    if creds is None:
        return grpc.aio.insecure_channel(cfg.host, options=channel_options(cfg))
    return grpc.aio.secure_channel(cfg.host, creds, options=channel_options(cfg))


async def run_load(
    cfg: LoadConfig,
    method: Method,
    *,
    on_result: Callable[[CallResult], None] | None = None,
    part: tuple[int, int] = (0, 1),
    warmup: int = 0,
    ready: Callable[[], Awaitable[None]] | None = None,
) -> RunResult:
    """Run the load described by ``cfg`` against ``method`` and return every call's result."""
    requests = [_Request(method, dict(d), i) for i, d in enumerate(cfg.data)]
    static_metadata = None if Template.has_actions(dict(cfg.metadata)) else tuple(cfg.metadata.items())
    channels = [make_channel(cfg) for _ in range(cfg.connections)]
    results: list[CallResult] = []
    counter = itertools.count(*part)
    loop = asyncio.get_running_loop()
    stop_issuing = asyncio.Event()
    end_reason = "normal"
    timeout = cfg.timeout_s or None

    def record(result: CallResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    # One multi-callable per channel, built once: the hot loop only serializes and awaits.
    callables = [
        (ch.unary_stream(method.path, response_deserializer=method.output_class.FromString) if method.server_streaming
         else ch.unary_unary(method.path, response_deserializer=method.output_class.FromString))
        for ch in channels
    ]

    def rendered(worker: int, n: int) -> tuple[bytes, tuple[tuple[str, str], ...]]:
        """Request ``n``'s payload and metadata (serialized once up front unless templated)."""
        req = requests[n % len(requests)]
        payload = req.payload
        metadata = static_metadata
        if payload is None or metadata is None:
            call_data = CallData(
                worker_id=str(worker), request_number=n, fully_qualified_name=method.full_name,
                method_name=method.name, service_name=method.service, input_name=method.input_name,
                output_name=method.output_name, is_server_streaming=method.server_streaming,
            )
            if payload is None:
                payload = method.encode(Template.render(req.data, call_data, req.where), req.where)
            if metadata is None:
                metadata = tuple(Template.render(dict(cfg.metadata), call_data, "metadata").items())
        return payload, metadata

    try:
        for n in range(warmup):  # one at a time, not reported: connections up, both sides' caches warm
            payload, metadata = rendered(0, part[0] + n)
            call = callables[0](payload, timeout=timeout, metadata=metadata or None)
            if method.server_streaming:
                async for _ in call:
                    pass
            else:
                await call
        if ready is not None:
            await ready()
    except BaseException:
        for channel in channels:
            await channel.close()
        raise
    started_mono = loop.time()
    started_ns = time.time_ns()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)

    async def one_call(worker: int, n: int, call_fn: Any) -> None:
        payload, metadata = rendered(worker, n)
        start_wall = time.time_ns()
        t0 = time.perf_counter_ns()
        cache: dict[str, str] = {}
        first_ns = 0
        messages = 0
        try:
            if method.server_streaming:
                async for msg in call_fn(payload, timeout=timeout, metadata=metadata or None):
                    if messages == 0:
                        first_ns = time.perf_counter_ns() - t0
                        cache = method.cache_status(msg)
                    messages += 1
            else:
                response = await call_fn(payload, timeout=timeout, metadata=metadata or None)
                cache = method.cache_status(response)
                messages = 1
            record(CallResult(n, start_wall, time.perf_counter_ns() - t0, "OK", "", cache, first_ns, messages))
        except grpc.aio.AioRpcError as err:
            record(CallResult(n, start_wall, time.perf_counter_ns() - t0, GO_CODE.get(err.code().name, err.code().name),
                              _error_text(err.code(), err.details()), cache, first_ns, messages))
        except asyncio.CancelledError:
            if cfg.duration_stop == "close":
                record(CallResult(n, start_wall, time.perf_counter_ns() - t0, "Canceled",
                                  _error_text(grpc.StatusCode.CANCELLED, "grpc: the client connection is closing"),
                                  cache, first_ns, messages))
            raise

    async def worker(worker_id: int) -> None:
        call_fn = callables[worker_id % len(callables)]
        while not stop_issuing.is_set():
            n = next(counter)
            if not cfg.duration_s and n >= cfg.total:
                return
            if cfg.rps:
                delay = started_mono + n / cfg.rps - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if stop_issuing.is_set():
                    return
            await one_call(worker_id, n, call_fn)

    workers = [asyncio.create_task(worker(i)) for i in range(cfg.concurrency)]
    limit = cfg.duration_s or cfg.max_duration_s
    try:
        if limit:
            done, pending = await asyncio.wait(workers, timeout=limit)
            if pending:
                end_reason = "timeout"
                stop_issuing.set()
                if cfg.duration_s and cfg.duration_stop == "wait":
                    await asyncio.wait(pending)
                else:
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
        else:
            await asyncio.gather(*workers)
    finally:
        stop_issuing.set()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        total_ns = int((loop.time() - started_mono) * 1e9)
        for channel in channels:
            await channel.close()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return RunResult(cfg, method, results, total_ns, end_reason, started_ns, cpu_s)


def passes(results: Sequence[CallResult], data_length: int) -> list[list[CallResult]]:
    """Results grouped by pass through the data array (pass k: request numbers k*len .. (k+1)*len-1)."""
    groups: dict[int, list[CallResult]] = {}
    for r in results:
        groups.setdefault(r.request_number // data_length, []).append(r)
    return [groups[k] for k in sorted(groups)]
