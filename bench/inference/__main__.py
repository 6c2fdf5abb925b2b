"""``python -m bench.inference`` (``make bench-inference``): the inference benchmark, one run, one machine.

Writes ``bench/results/inference-<cpu kind>.json`` and ``.md`` (the current run on this kind of CPU), a row
of ``bench/results/HISTORY.md`` and the docs' generated blocks (``bench.render_docs``).
Run it under ``flock /tmp/reprise-bench.lock`` (the Make target does) so no
other measurement shares the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from bench import headlines, render_docs, results_io
from bench.inference import concurrency, datasets, peer, report
from bench.inference.baseline import GenerateBaseline
from bench.inference.engines import RESULTS, add_model_cache, make_engine
from inference_svc.core.decoding import pick_token
from inference_svc.core.engine import Engine, EngineConfig
from inference_svc.core.request import ChatRequest
from inference_svc.runtime import loader, model_source, placement, precision
from inference_svc.runtime.kv import PrefixIndex
from inference_svc.runtime.native import int4_gemv
from inference_svc.runtime.native.decode_ops import DecodeOps, StepPlan
from inference_svc.runtime.weights import WeightFormat
from reprise.domain import Decoding, Role, Turn

log = logging.getLogger("bench.inference")
PROMPT_TEXT = (
    "Caching is a technique that stores copies of data in a faster storage layer so that future requests for that "
    "data can be served more quickly. " * 40
)
# fp32 dense first: the greedy-agreement reference. bf16 formats run only where the CPU multiplies bf16
# natively; elsewhere torch emulates it (a 64-row bf16 matmul ~3x slower than fp32) and no one would serve them.
# int4 under fp32 needs Reprise's AVX2 kernel (any x86-64 CPU of the last decade).
GREEDY = Decoding()
#: (dtype, weights, activations): under fp32 int4 serves with int8 activations ("auto") and, as a lever row,
#: with fp32 ones (the fp16 prefill copy).
FORMATS = [
    ("fp32", "dense", "auto"), ("fp32", "fp16", "auto"), ("fp32", "int4", "auto"), ("fp32", "int4", "fp32"),
    ("bf16", "dense", "auto"), ("bf16", "int8", "auto"), ("bf16", "int4", "auto"),
]
AGREEMENT_PROMPTS = [
    "Write a Python function that checks whether a number is prime.",
    "Explain what a hash map is in two sentences.",
    "What is the difference between a process and a thread?",
    "Give three tips for writing readable code.",
    "用一句话解释什么是缓存。",
    "Translate 'good morning' into French and Spanish.",
]
MULTI_TURN = [
    "Explain in detail how an LRU cache works and how to implement one in Python.",
    "Now explain how Redis implements eviction and how that differs.",
    "Compare that with how a CPU cache works, in detail.",
    "Write a complete, commented Python implementation of a thread-safe LRU cache.",
    "Summarize everything we discussed in three bullet points.",
]


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


# -- machine -----------------------------------------------------------------


def memory_bandwidth_gbs() -> dict[str, float]:
    """Streaming read (sum) and copy of 512 MB with torch on the pinned threads."""
    a = torch.ones(128 * 1024 * 1024)
    b = torch.empty_like(a)
    read, copy = [], []
    for _ in range(7):
        start = time.perf_counter()
        a.sum()
        read.append(time.perf_counter() - start)
        start = time.perf_counter()
        b.copy_(a)
        copy.append(time.perf_counter() - start)
    nbytes = a.numel() * 4
    return {"read": nbytes / statistics.median(read) / 1e9, "copy": 2 * nbytes / statistics.median(copy) / 1e9}


def machine() -> dict[str, Any]:
    info = dict(
        (k.strip(), v.strip()) for k, _, v in (l.partition(":") for l in Path("/proc/cpuinfo").read_text().splitlines()) if v
    )
    cpu = info.get("model name", "?")
    # The brand string alone hides the generation ("AMD EPYC" is Zen 4 or Zen 5 on these VMs), and with it
    # the AVX-512 width: family/model tell them apart.
    if "cpu family" in info and "model" in info:
        cpu += f" (family {info['cpu family']} model {info['model']})"
    return {
        "cpu": cpu,
        "cpus": list(os.sched_getaffinity(0)),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


# -- our engine ----------------------------------------------------------------


def prompt_ids(engine: Engine, n: int) -> list[int]:
    ids = engine.tokenizer.encode(PROMPT_TEXT, add_special_tokens=False)
    assert len(ids) >= n
    return ids[:n]


@torch.inference_mode()
def prefill_tok_s(engine: Engine, n: int, repeats: int = peer.PREFILL_REPEATS) -> float:
    ids = torch.tensor(prompt_ids(engine, n))
    times = []
    for _ in range(repeats):
        kv = engine.model.new_kv(n)
        start = time.perf_counter()
        engine.model.logits(engine.model.forward(ids, kv))
        times.append(time.perf_counter() - start)
    return n / statistics.median(times[1:])


@torch.inference_mode()
def decode_tok_s(engine: Engine, steps: int = 64, repeats: int = 3, context: int = 32) -> float:
    """Greedy steps after a ``context``-token prompt (32 by default): forward one token, LM head, argmax (what
    llama.cpp's eval does)."""
    text = prompt_ids(engine, min(context, 512))
    ids = (text * (context // len(text) + 1))[:context]  # longer contexts repeat the prompt text
    runs = []
    for _ in range(repeats):
        kv = engine.model.new_kv(context + steps)
        for chunk in range(0, context, 512):
            hidden = engine.model.forward(torch.tensor(ids[chunk : chunk + 512]), kv)
        logits = engine.model.logits(hidden)[0]
        start = time.perf_counter()
        for _ in range(steps):
            token = pick_token(logits, GREEDY, None)
            logits = engine.model.logits(engine.model.forward(torch.tensor([token]), kv))[0]
        runs.append(steps / (time.perf_counter() - start))
    return statistics.median(runs)


def greedy_replies(engine: Engine, max_new: int = 48) -> list[list[str]]:
    out = []
    for prompt in AGREEMENT_PROMPTS:
        chunks = list(engine.chat(ChatRequest(prompt, decoding=Decoding(max_new_tokens=max_new)), threading.Event(), remember=False))
        out.append("".join(c.delta for c in chunks))
    return out


def agreement(reference: list[str], other: list[str]) -> dict[str, float]:
    same = sum(a == b for a, b in zip(reference, other))
    prefix = [len(os.path.commonprefix([a, b])) / max(len(a), 1) for a, b in zip(reference, other)]
    return {"identical": same / len(reference), "mean_common_prefix": statistics.mean(prefix)}


def batched_correct(engine: Engine, examples: list[datasets.Example]) -> list[bool]:
    correct: list[bool] = []
    for i in range(0, len(examples), 16):
        batch = examples[i : i + 16]
        results = engine.classify_batch([e.text for e in batch])
        correct += [(r.p_positive >= 0.5) == e.positive for r, e in zip(results, batch)]
    return correct


def sentiment_accuracy(engine: Engine, examples: list[datasets.Example]) -> float:
    correct = batched_correct(engine, examples)
    return sum(correct) / len(correct)


def sentiment_single(engine: Engine, examples: list[datasets.Example], supported: list[bool] | None) -> dict[str, Any]:
    """One request at a time, like a caller without concurrency: p50 latency and accuracy."""
    times, correct = [], []
    for e in examples:
        start = time.perf_counter()
        result = engine.classify_batch([e.text])[0]
        times.append(time.perf_counter() - start)
        correct.append((result.p_positive >= 0.5) == e.positive)
    return {"p50_ms": median_ms(times), **accuracies(correct, supported)}


def label_supported(lang: str, name: str, examples: list[datasets.Example]) -> list[bool] | None:
    """Per text: does the audit agree with its corpus label? (Chinese only; None when not audited.)"""
    if lang != "zh":
        return None
    try:
        return datasets.supported_mask(name, examples)
    except ValueError as exc:  # another --per-label gives another split than the one audited
        log.warning("zh label audit not applied: %s", exc)
        return None


def accuracies(correct: list[bool], supported: list[bool] | None) -> dict[str, Any]:
    """Accuracy on the corpus' labels and, where audited, on the texts whose label a reader agrees with."""
    out: dict[str, Any] = {"accuracy": sum(correct) / len(correct), "n": len(correct)}
    if supported is not None:
        kept = [c for c, keep in zip(correct, supported) if keep]  # the baseline scores a prefix of the split
        out.update(accuracy_label_supported=sum(kept) / len(kept), n_label_supported=len(kept))
    return out


def multi_turn(engine: Engine) -> dict[str, Any]:
    """Turn 5 of a conversation with ~1,000 tokens of history: time to first token reusing KV vs recomputing."""
    history: tuple[Turn, ...] = ()
    for question in MULTI_TURN[:4]:
        chunks = list(engine.chat(ChatRequest(question, history, decoding=Decoding(max_new_tokens=300)), threading.Event()))
        history += (Turn(Role.USER, question), Turn(Role.ASSISTANT, "".join(c.delta for c in chunks)))
    question = MULTI_TURN[4]

    def turn5(index: PrefixIndex) -> tuple[float, str, int, int]:
        saved, engine.index = engine.index, index
        try:
            chat = ChatRequest(question, history, decoding=Decoding(max_new_tokens=32))
            chunks = list(engine.chat(chat, threading.Event(), remember=False))
        finally:
            engine.index = saved
        last = chunks[-1]
        return last.prefill_ms, "".join(c.delta for c in chunks), last.usage.prompt_tokens, last.usage.cached_tokens

    reuse = [turn5(engine.index) for _ in range(3)]
    fresh = [turn5(PrefixIndex(engine.config.kv_cache_bytes)) for _ in range(3)]
    ttft_reuse = statistics.median(r[0] for r in reuse)
    ttft_fresh = statistics.median(r[0] for r in fresh)
    return {
        "prompt_tokens": reuse[0][2],
        "history_tokens": reuse[0][2] - len(engine.tokenizer.encode(question)),
        "cached_tokens": reuse[0][3],
        "ttft_reuse_ms": ttft_reuse,
        "ttft_recompute_ms": ttft_fresh,
        "ratio": ttft_reuse / ttft_fresh,
        "greedy_identical": all(r[1] == fresh[0][1] for r in (*reuse, *fresh)),
    }


async def _concurrent_classify(
    cache: Path, texts: list[str], max_batch: int, rounds: int = 5, model: str = "default"
) -> dict[str, float]:
    import grpc

    from inference_svc.core.service import Batching
    from inference_svc.server import InferenceApp
    from reprise.inference.v1 import inference_pb2 as pb
    from reprise.inference.v1 import inference_pb2_grpc as pb_grpc
    from reprise.rpc.server import ServerOptions, ServiceHost

    app = InferenceApp(EngineConfig(model=model, cache_dir=cache), batching=Batching(max_batch=max_batch, max_wait_ms=3.0))
    host = ServiceHost(app, ServerOptions(port=0))
    await host.start()
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = pb_grpc.InferenceStub(channel)
            await stub.Classify(pb.ClassifyRequest(text="warm"))
            times, sizes = [], []
            for r in range(rounds):
                batch = texts[r * 16 : (r + 1) * 16]
                start = time.perf_counter()
                replies = await asyncio.gather(*(stub.Classify(pb.ClassifyRequest(text=t)) for t in batch))
                times.append(time.perf_counter() - start)
                sizes += [x.batch_size for x in replies]
    finally:
        await host.stop(0)
    return {"requests_per_s": 16 / statistics.median(times), "round_ms": median_ms(times), "mean_batch": statistics.mean(sizes)}


def startup(cache: Path, source: model_source.ResolvedModel) -> dict[str, float]:
    """Cold conversion from the fp32 copy, then a warm start from the converted copy, in a scratch cache."""
    hf = loader.fp32_copy_dir(source, cache)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        scratch = Path(tmp)
        gguf = cache / model_source.DEFAULT_GGUF_NAME
        for f in (gguf, gguf.with_suffix(".sha256")):
            (scratch / f.name).symlink_to(f.resolve())
        (scratch / "converted").mkdir()
        (scratch / "converted" / hf.name).symlink_to(hf.resolve())
        out = {}
        for label in ("convert_from_fp32_copy_s", "start_from_converted_s"):
            start = time.perf_counter()
            engine = make_engine("auto", "auto", scratch)
            out[label] = time.perf_counter() - start
            out[label.replace("_s", "_load_s")] = engine.loaded.load_seconds
            del engine
            gc.collect()
    return out


# -- main ------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    where = placement.apply(args.cpus)
    cache = args.model_cache.resolve()
    results: dict[str, Any] = {"machine": machine(), "placement": where.describe()}
    log.info("placement %s", where.describe())
    results["bandwidth_gbs"] = memory_bandwidth_gbs()
    log.info("bandwidth %s", results["bandwidth_gbs"])
    source = model_source.resolve("default", cache)
    model_source.materialize(source, cache)  # llama.cpp reads the GGUF itself
    sets = datasets.load(args.per_label)

    # Peer first: same GGUF, same threads, same token ids as our prefill.
    probe = make_engine("auto", "auto", cache)
    ids = prompt_ids(probe, 512)
    if peer.available():
        results["llamacpp"] = peer.measure(cache / model_source.DEFAULT_GGUF_NAME, where.threads, ids, (64, 512), 64)
        log.info("llama.cpp %s", results["llamacpp"])
    else:
        results["llamacpp"] = None
        log.warning("llama-cpp-python not installed (make llamacpp): peer skipped")
    del probe
    gc.collect()

    formats: dict[str, Any] = {}
    reference: list[str] | None = None
    skipped: dict[str, str] = {}
    for dtype, weights, activations in FORMATS:
        name = f"{weights}-{dtype}" + ("" if activations == "auto" else f"-{activations}-activations")
        if dtype == "bf16" and not precision.cpu_supports_bf16():
            skipped[name] = "no AVX512-BF16/AMX on this CPU"
            continue
        if (dtype, weights) == ("fp32", "int4") and int4_gemv.load_fp32(cache / "native")[0] is None:
            skipped[name] = int4_gemv.load_fp32(cache / "native")[1]
            continue
        engine = make_engine(dtype, weights, cache, activations=activations)
        entry = {
            "weights_mb": engine.loaded.weight_bytes / 1e6,
            "decode_mb_per_token": engine.loaded.decode_bytes / 1e6,
            "decode_tok_s": decode_tok_s(engine),
            "prefill_tok_s": {str(n): prefill_tok_s(engine, n) for n in (64, 512)},
        }
        entry["roofline_tok_s"] = results["bandwidth_gbs"]["read"] * 1e9 / engine.loaded.decode_bytes
        replies = greedy_replies(engine)
        if reference is None:
            reference = replies
        entry["greedy_vs_fp32"] = agreement(reference, replies)
        entry["sentiment_accuracy"] = {lang: sentiment_accuracy(engine, s.test) for lang, s in sets.items()}
        formats[name] = entry
        log.info("%s: %s", name, entry)
        del engine
        gc.collect()
    results["formats"] = formats
    results["formats_skipped"] = skipped

    serving = make_engine("auto", "auto", cache)
    results["serving_format"] = f"{serving.loaded.spec.weights.value}-{'bf16' if serving.model.dtype == torch.bfloat16 else 'fp32'}"
    results["precision_reason"] = serving.precision_reason
    results["lm_head_last_position_only"] = lm_head_saving(serving)
    # Only int4/int8 keep a dense prefill copy (not with int8 activations); elsewhere both passes run one kernel.
    results["dense_prefill_copy"] = dense_prefill_effect(serving) if serving.loaded.spec.prefill_copy else None
    supported = {lang: label_supported(lang, "test", s.test) for lang, s in sets.items()}
    results["sentiment"] = {lang: sentiment_single(serving, s.test, supported[lang]) for lang, s in sets.items()}
    # The tuning half, batched: where it disagrees with test, the test figure is partly luck.
    results["sentiment_dev"] = {
        lang: accuracies(batched_correct(serving, s.dev), label_supported(lang, "dev", s.dev)) for lang, s in sets.items()
    }
    log.info("sentiment ours %s", results["sentiment"])
    results["multi_turn"] = multi_turn(serving)
    log.info("multi-turn %s", results["multi_turn"])
    results["int4_kernel"] = serving.loaded.int4_kernel
    results["decode_ops"] = serving.loaded.decode_ops
    results["decode_ops_effect"] = decode_ops_effect(serving)
    log.info("decode ops %s", results["decode_ops_effect"])
    if serving.loaded.int4_kernel == int4_gemv.NAME or serving.loaded.int4_kernel.startswith(int4_gemv.F32_NAME):
        results["int4_kernel_effect"] = int4_kernel_effect(serving, cache)
        log.info("int4 kernel %s", results["int4_kernel_effect"])
    if serving.loaded.spec.int8_activations:
        results["activations_effect"] = activations_effect(serving, cache, sets)
        log.info("int8 activations %s", results["activations_effect"])
    if serving.loaded.int4_kernel.endswith("-vnni"):
        results["vnni_effect"] = vnni_effect(serving, sets)
        log.info("vnni %s", results["vnni_effect"])
    if precision.cpu_supports_bf16() and serving.loaded.spec.weights is WeightFormat.INT4 and (
        serving.loaded.spec.dtype == torch.bfloat16 or serving.loaded.spec.int8_activations
    ):
        results["bf16_vs_int8_effect"] = bf16_vs_int8_effect(serving, cache, sets)
        log.info("bf16 vs int8 activations %s", results["bf16_vs_int8_effect"])
    del serving
    gc.collect()

    texts = [e.text for s in sets.values() for e in s.test]
    async def both() -> dict[str, Any]:  # one event loop for both servers (grpc.aio keeps per-loop state)
        return {
            "batched": await _concurrent_classify(cache, texts, 16),
            "one_at_a_time": await _concurrent_classify(cache, texts, 1),
        }

    results["classify_16_concurrent"] = asyncio.run(both())
    log.info("concurrency %s", results["classify_16_concurrent"])
    # Aggregate decode of 1/4/8/16 concurrent greedy chats through the service as its own process.
    chats = asyncio.run(concurrency.run("default", cache, 16, 1 if args.quick else 3, args.cpus))
    results["chat_concurrency"] = {"file": str(concurrency.write(chats, args.out)), "speedup": chats["speedup"],
                                   "tok_s": {n: v["tok_s"] for n, v in chats["levels"].items()}}
    if args.out == RESULTS:
        concurrency.render_doc()
    log.info("chat concurrency %s", results["chat_concurrency"])

    baseline = GenerateBaseline(loader.fp32_copy_dir(source, cache))
    results["sentiment_baseline"] = {}
    for lang, s in sets.items():
        times, correct, unparsed = [], [], 0
        for e in s.test[: args.baseline_n]:
            positive, seconds = baseline.classify(e.text)
            times.append(seconds)
            correct.append(positive == e.positive)
            unparsed += positive is None
        results["sentiment_baseline"][lang] = {
            "p50_ms": median_ms(times), "unparsed": unparsed, **accuracies(correct, supported[lang])
        }
    log.info("sentiment baseline %s", results["sentiment_baseline"])
    del baseline
    gc.collect()

    if not args.skip_startup:
        results["startup"] = startup(cache, source)
    results["machine"]["loadavg_end"] = os.getloadavg()[0]
    return results


def int4_kernel_effect(serving: Engine, cache: Path) -> dict[str, Any]:
    """Decode with Reprise's int4 kernel vs without it, alternating in one process: under bf16 the same format
    with torch's int4 kernel, under fp32 the fp16 format (fbgemm), which serves where the kernel does not."""
    spec = serving.loaded.spec
    if spec.dtype == torch.float32:
        other = make_engine("fp32", "fp16", cache)
    else:
        other = make_engine("bf16", spec.weights.value, cache, int4_kernel="torch")
    ours, theirs = [], []
    for _ in range(3):
        ours.append(decode_tok_s(serving, repeats=1))
        theirs.append(decode_tok_s(other, repeats=1))
    same = agreement(greedy_replies(other), greedy_replies(serving))
    del other
    gc.collect()
    return {"decode_tok_s": statistics.median(ours), "torch_decode_tok_s": statistics.median(theirs), "greedy_vs_torch_kernel": same}


def prompt_speeds(engine: Engine, examples: list[datasets.Example], decode: bool = False) -> dict[str, float]:
    """Prefill tok/s at 64 and 512 tokens, one classify request at a time (p50 ms), and optionally decode tok/s."""
    out = {
        "prefill_64": prefill_tok_s(engine, 64),
        "prefill_512": prefill_tok_s(engine, 512, repeats=3),
        "classify_p50_ms": sentiment_single(engine, examples, None)["p50_ms"],
    }
    if decode:
        out["decode"] = decode_tok_s(engine, repeats=1)
    return out


def alternating(sides: dict[str, Callable[[], dict[str, float]]], rounds: int = 3) -> dict[str, dict[str, float]]:
    """An A/B in one process: each side measured once per round, in turn; the median of each figure per side."""
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    for _ in range(rounds):
        for side, measure in sides.items():
            runs[side].append(measure())
    return {side: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for side, rs in runs.items()}


def activations_effect(serving: Engine, cache: Path, sets: dict[str, datasets.Split]) -> dict[str, Any]:
    """int8 activations (serving) vs fp32 ones (the fp16 prefill copy through fbgemm), alternating in one process:
    prefill at 64 and 512 tokens, one classify request at a time (p50 over 40 texts per language), decode."""
    other = make_engine("fp32", "int4", cache, activations="fp32")
    examples = [e for s in sets.values() for e in s.test[:40]]

    out: dict[str, Any] = alternating(
        {"int8": lambda: prompt_speeds(serving, examples, decode=True), "fp32": lambda: prompt_speeds(other, examples, decode=True)}
    )
    out["greedy_vs_fp32_activations"] = agreement(greedy_replies(other), greedy_replies(serving))
    out["fp32_weights_mb"] = other.loaded.weight_bytes / 1e6
    del other
    gc.collect()
    return out


def bf16_vs_int8_effect(serving: Engine, cache: Path, sets: dict[str, datasets.Split]) -> dict[str, Any]:
    """On a CPU with native bf16, int4 weights with bf16 activations (a dense bf16 copy for prefill; what auto serves
    with AMX) vs int8 activations (no dense copy; what auto serves elsewhere), alternating in one process, whichever
    of the two is served: prefill at 64 and 512 tokens, one classify request at a time (p50 over 40 texts per
    language), decode, and eight streams decoded together; weights in memory."""
    served = "bf16" if serving.loaded.spec.dtype == torch.bfloat16 else "int8"
    other = make_engine("fp32", "int4", cache, activations="int8") if served == "bf16" else make_engine("bf16", "int4", cache)
    engines = {served: serving, "int8" if served == "bf16" else "bf16": other}
    examples = [e for s in sets.values() for e in s.test[:40]]
    out: dict[str, Any] = alternating(
        {name: (lambda e=e: {**prompt_speeds(e, examples, decode=True), "decode_8_rows_tok_s": batched_decode_tok_s(e, 8)})
         for name, e in engines.items()}
    )
    out["served"] = served
    out["int8_kernel"] = engines["int8"].loaded.int4_kernel
    out["int8_weights_mb"] = engines["int8"].loaded.weight_bytes / 1e6
    out["bf16_weights_mb"] = engines["bf16"].loaded.weight_bytes / 1e6
    out["greedy_vs_int8"] = agreement(greedy_replies(engines["int8"]), greedy_replies(engines["bf16"]))
    del other, engines
    gc.collect()
    return out


def batched_decode_tok_s(engine: Engine, rows: int, context: int = 100, steps: int = 16) -> float:
    """Tokens per second of ``rows`` streams decoded together (one pass per token, logits included), median step."""
    model = engine.model
    prompt = torch.arange(1000, 1000 + context)
    with torch.inference_mode():
        kvs = [model.new_kv(context + steps + 4) for _ in range(rows)]
        for kv in kvs:
            model.forward(prompt, kv)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            model.logits(model.decode_batch([5] * rows, kvs), rows_alone=True)
            times.append(time.perf_counter() - start)
    return rows / statistics.median(times)


def vnni_effect(serving: Engine, sets: dict[str, datasets.Split]) -> dict[str, Any]:
    """int8 rows through the AVX512-VNNI paths (serving) vs the AVX2 ones, alternating in one process on the same
    weights: prefill at 64 and 512 tokens, one classify request at a time (p50 over 40 texts per language), decode."""
    model = serving.model
    kernels = {x.kernel for l in model.layers for x in l.linears} | {model.head.kernel}
    kernels = {k for k in kernels if isinstance(k, int4_gemv.Int4KernelF32)}
    plan = model.step_plan
    examples = [e for s in sets.values() for e in s.test[:40]]

    @contextlib.contextmanager
    def avx2_paths() -> Iterator[None]:  # the kernels' and the one-call step's
        for k in kernels:
            k.vnni = False
        if plan is not None:
            model.step_plan = dataclasses.replace(plan, kernel_arg=next(iter(kernels)).step_arg)
        try:
            yield
        finally:
            for k in kernels:
                k.vnni = True
            model.step_plan = plan

    def through_avx2() -> dict[str, float]:
        with avx2_paths():
            return prompt_speeds(serving, examples, decode=True)

    out: dict[str, Any] = alternating({"vnni": lambda: prompt_speeds(serving, examples, decode=True), "avx2": through_avx2})
    mine = greedy_replies(serving)
    with avx2_paths():
        out["greedy_vs_avx2"] = agreement(greedy_replies(serving), mine)
    return out


def decode_ops_effect(serving: Engine) -> dict[str, Any] | None:
    """Decode with a step's small operations fused in C vs torch's, alternating in one process (same weights),
    after a 32-token prompt and after 1,400 tokens (a fifth turn's context). Where the layers run in one C call
    per step, also with the fused operations called per layer (``per_op_tok_s``)."""
    model = serving.model
    ops, plan = model.ops, model.step_plan
    if ops is None:
        return None

    @contextlib.contextmanager
    def path(use_ops: DecodeOps | None, use_plan: StepPlan | None) -> Iterator[None]:
        model.ops, model.step_plan = use_ops, use_plan
        try:
            yield
        finally:
            model.ops, model.step_plan = ops, plan

    def decode(context: int, use_ops: DecodeOps | None, use_plan: StepPlan | None) -> float:
        with path(use_ops, use_plan):
            return decode_tok_s(serving, repeats=1, context=context)

    out: dict[str, Any] = {}
    for context in (32, 1400):
        runs: dict[str, list[float]] = {"fused_tok_s": [], "torch_tok_s": [], "per_op_tok_s": []}
        for _ in range(5):
            runs["fused_tok_s"].append(decode(context, ops, plan))
            runs["torch_tok_s"].append(decode(context, None, None))
            if plan is not None:
                runs["per_op_tok_s"].append(decode(context, ops, None))
        out[str(context)] = {k: statistics.median(v) for k, v in runs.items() if v}
    mine = greedy_replies(serving)
    with path(None, None):
        out["greedy_vs_torch_ops"] = agreement(greedy_replies(serving), mine)
    return out


@torch.inference_mode()
def lm_head_saving(engine: Engine, n: int = 512) -> dict[str, float]:
    """What running the LM head on every prompt position would cost, versus the last one only."""
    hidden = torch.randn(n, engine.model.shape.hidden)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        engine.model.logits(hidden)
        times.append(time.perf_counter() - start)
    return {"all_positions_ms": median_ms(times), "prefill_512_ms": n / prefill_tok_s(engine, n) * 1000}


@torch.inference_mode()
def dense_prefill_effect(engine: Engine) -> dict[str, float]:
    from inference_svc.runtime import weights

    with_copy = prefill_tok_s(engine, 512)
    saved, weights.DENSE_MIN_ROWS = weights.DENSE_MIN_ROWS, 1 << 30
    try:
        without = prefill_tok_s(engine, 512)
    finally:
        weights.DENSE_MIN_ROWS = saved
    return {"prefill_512_with_dense_copy": with_copy, "prefill_512_quantized_kernel_only": without}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inference", description=__doc__)
    add_model_cache(parser)
    parser.add_argument("--cpus", default="", help="pin like the service's --cpus (default: inherited mask)")
    parser.add_argument("--per-label", type=int, default=100, help="held-out sentences per label and language")
    parser.add_argument("--baseline-n", type=int, default=200, help="test sentences per language for the slow baseline")
    parser.add_argument("--skip-startup", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sets, two formats, no startup (numbers meaningless)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.quick:
        global FORMATS
        FORMATS = [("fp32", "fp16", "auto"), ("fp32", "int4", "auto"), ("bf16", "int4", "auto")]
        args.per_label, args.baseline_n, args.skip_startup = 4, 2, True
        args.out = Path(tempfile.mkdtemp(prefix="bench-inference-quick-"))
    results = run(args)
    results_io.write_current("inference", results, report.markdown(results), out=args.out)
    if args.out == RESULTS:
        results_io.append_history("inference", headlines.inference(results))
        render_docs.main([])
    print(report.markdown(results))


if __name__ == "__main__":
    main()
