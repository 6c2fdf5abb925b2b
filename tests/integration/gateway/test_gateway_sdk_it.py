"""The typed SDK (blocking and asyncio) and the CLI against a real gateway."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from gateway_support import eventually, start_gateway_host, unique

from gateway.auth import TokenTable
from gateway.cli import build_parser, run
from gateway.sdk import (
    AsyncClient,
    CacheStatus,
    Client,
    ClientOptions,
    Decoding,
    Finish,
    Label,
    Policy,
    Role,
    ServiceError,
    Turn,
)
from devtools.devstack import ROOT
from reprise.rpc.server import ServiceHost

TOKEN = "sdk-tenant-token-0123456789abcdef"


@pytest.fixture(scope="module")
async def sdk_gateway(cache_host, inference_host) -> AsyncIterator[ServiceHost]:  # type: ignore[no-untyped-def]
    host = await start_gateway_host(cache_host.address, inference_host.address, tokens=TokenTable([(TOKEN, "sdk")]))
    yield host
    await host.stop(0)


async def test_async_client_end_to_end(sdk_gateway) -> None:  # type: ignore[no-untyped-def]
    async with AsyncClient(ClientOptions(sdk_gateway.address, token=TOKEN, timeout_s=30)) as client:
        text = unique("The delivery was late and the box was crushed")
        r = await client.classify(text)
        assert r.result.label in (Label.POSITIVE, Label.NEGATIVE) and r.cache.status is CacheStatus.MISS
        hit = await eventually(lambda: client.classify(text), lambda x: x.cache.status is CacheStatus.EXACT)
        assert hit.result == r.result and hit.cache.key == r.cache.key

        history = (Turn(Role.USER, "hi"), Turn(Role.ASSISTANT, "hello"))
        chat = await client.chat(unique("how are you"), history=history, decoding=Decoding(max_new_tokens=8))
        assert chat.finish in (Finish.STOP, Finish.LENGTH) and chat.usage.completion_tokens > 0

        pieces = [d async for d in client.chat_stream(unique("stream please"), policy=Policy(no_store=True))]
        assert pieces[0].cache is not None and pieces[-1].timings is not None and pieces[-1].finish is not None

        both = await client.analyze(unique("这家餐厅的菜太难吃了"))
        assert both.sentiment is not None and both.chat is not None and both.sentiment.usage.prompt_tokens > 0
        stats = await client.stats()
        assert stats.tenant == "sdk" and stats.counters.requests >= 5

        with pytest.raises(ServiceError) as err:
            await client.classify("")
        assert err.value.code == "INVALID_ARGUMENT" and "text" in err.value.message
    async with AsyncClient(ClientOptions(sdk_gateway.address, token="wrong-token-0123456789abcdef")) as bad:
        with pytest.raises(ServiceError) as err:
            await bad.classify("hi")
        assert err.value.code == "UNAUTHENTICATED"


async def test_blocking_client_end_to_end(sdk_gateway) -> None:  # type: ignore[no-untyped-def]
    def use() -> tuple:  # type: ignore[type-arg]
        with Client(ClientOptions(sdk_gateway.address, token=TOKEN, timeout_s=30)) as client:
            text = unique("I love how light this laptop is")
            first = client.classify(text, policy=Policy(exact_only=True))
            stream = list(client.chat_stream(unique("tell me something"), decoding=Decoding(max_new_tokens=8)))
            whole = client.chat(unique("and another thing"), decoding=Decoding(max_new_tokens=8))
            try:
                client.chat("x", decoding=Decoding(temperature=5))
                error = None
            except ServiceError as exc:
                error = exc
            return first, stream, whole, error, client.stats()

    # The blocking client runs in a thread: the servers share this test's event loop.
    first, stream, whole, error, stats = await asyncio.to_thread(use)
    assert first.cache.status is CacheStatus.MISS
    assert "".join(d.delta for d in stream) and stream[-1].usage is not None
    assert whole.reply
    assert error is not None and error.code == "INVALID_ARGUMENT" and error.message.startswith("decoding.temperature")
    assert stats.tenant == "sdk"


async def test_cli_commands(sdk_gateway) -> None:  # type: ignore[no-untyped-def]
    def cli(*argv: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        args = build_parser().parse_args(["--target", sdk_gateway.address, "--token", TOKEN, *argv])
        return run(args, out, err, io.StringIO(stdin)), out.getvalue(), err.getvalue()

    text = unique("I love this phone")
    code, out, err = await asyncio.to_thread(cli, "classify", text)
    assert code == 0 and out.split()[0] in ("positive", "negative") and "miss" in err
    code, out, _ = await asyncio.to_thread(cli, "--json", "classify", text)
    doc = json.loads(out)
    assert code == 0 and doc["cache"]["status"] in ("miss", "exact") and doc["result"]["label"] in ("positive", "negative")
    code, out, err = await asyncio.to_thread(cli, "analyze", unique("这家餐厅的菜太难吃了"), "--tasks", "sentiment")
    assert code == 0 and out.startswith("sentiment: ") and "reply:" not in out
    code, out, err = await asyncio.to_thread(cli, "chat", unique("hello"), "--max-new-tokens", "8")
    assert code == 0 and out.strip() and "ms (cache" in err
    code, out, err = await asyncio.to_thread(cli, "chat", "--max-new-tokens", "8", stdin="hi there\nand again\n\n")
    assert code == 0 and err.count("ms (cache") == 2  # two turns, history kept between them
    code, out, _ = await asyncio.to_thread(cli, "stats")
    assert code == 0 and out.startswith("tenant sdk:") and "breaker closed" in out
    code, _, err = await asyncio.to_thread(cli, "analyze", "x", "--tasks", "poetry")
    assert code == 1 and "INVALID_ARGUMENT" in err and "tasks[0]" in err


def test_cli_module_runs_and_documents_itself() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    for word in ("analyze", "classify", "chat", "stats", "REPRISE_CLIENT_TARGET"):
        assert word in done.stdout
