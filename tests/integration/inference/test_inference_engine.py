"""The engine on the tiny model: the runtime matches transformers, label scoring, KV reuse == recompute."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from inference_svc.core.engine import ChatChunk, Engine, EngineConfig
from inference_svc.core.request import ChatRequest
from inference_svc.runtime.model import SHORTLIST
from inference_svc.runtime.native import int4_gemv
from inference_svc.runtime.native.decode_ops import DECODE_OPS_NAME
from inference_svc.runtime.weights import onednn_packing
from reprise.domain import Decoding, Finish, Role, Turn
from reprise.errors import InvalidArgument

from tests.support.cpu import int8_kernel_name
from tests.support.tiny_model import build_tiny_model


def _engine(model_dir: Path, cache: Path, **kwargs: object) -> Engine:
    engine = Engine(EngineConfig(model=str(model_dir), cache_dir=cache, max_new_tokens=24, **kwargs))  # type: ignore[arg-type]
    engine.load()
    engine.warm_up()
    return engine


@pytest.fixture(scope="module")
def fp32(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return _engine(tiny_model_dir, tmp_path_factory.mktemp("cache"), dtype="fp32")


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _reply(chunks: list[ChatChunk]) -> str:
    return "".join(c.delta for c in chunks)


def _chat(engine: Engine, history: tuple[Turn, ...], text: str, **decoding: object) -> list[ChatChunk]:
    return list(engine.chat(ChatRequest(text, history, decoding=Decoding(**decoding)), threading.Event()))  # type: ignore[arg-type]


def _assert_three_turns_reuse_equals_recompute(engine: Engine) -> None:
    """Each turn's greedy reply is the same from the reused KV as recomputed from scratch."""
    history: tuple[Turn, ...] = ()
    for question in ("Tell me a joke about cats", "another one", "and one about dogs"):
        reused = _chat(engine, history, question, max_new_tokens=16)
        engine.index.clear()
        recomputed = _chat(engine, history, question, max_new_tokens=16)
        assert _reply(reused) == _reply(recomputed)
        if history:
            assert reused[-1].usage.cached_tokens > recomputed[-1].usage.cached_tokens
        history += (Turn(Role.USER, question), Turn(Role.ASSISTANT, _reply(reused) or "x"))


def _assert_batched_scores_equal_single(engine: Engine, tolerance: float) -> None:
    texts = ["short", "a much longer sentence that needs padding in a batch", "中文句子"]
    single = [engine.classify_batch([t])[0].p_positive for t in texts]
    assert [r.p_positive for r in engine.classify_batch(texts)] == pytest.approx(single, abs=tolerance)


def _stepped_and_at_once(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Last-position logits of ``ids`` fed one token at a time (decode steps), and all at once (one prefill)."""
    kv = model.new_kv(len(ids))
    for i in range(len(ids)):
        stepped = model.logits(model.forward(ids[i : i + 1], kv))
    return stepped, model.logits(model.forward(ids, model.new_kv(len(ids))))


@torch.inference_mode()
def test_runtime_logits_match_transformers(fp32: Engine, reference) -> None:  # type: ignore[no-untyped-def]
    ids = torch.randint(0, fp32.model.shape.vocab, (41,), generator=torch.Generator().manual_seed(1))
    expected = reference(input_ids=ids[None]).logits[0]
    kv = fp32.model.new_kv(64)
    fp32.model.forward(ids[:17], kv)  # two chunks, then one token at a time: all paths must agree
    fp32.model.forward(ids[17:40], kv)
    last = fp32.model.logits(fp32.model.forward(ids[40:], kv))[0]
    torch.testing.assert_close(last, expected[-1], atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_label_scoring_is_the_label_logit_softmax_of_the_full_prompt(fp32: Engine, reference) -> None:  # type: ignore[no-untyped-def]
    tok = fp32.tokenizer
    texts = ["I love this phone", "服务太差了，我不喜欢", "I love this phone", "ok"]
    results = fp32.classify_batch(texts)
    for text, result in zip(texts, results):
        spec = fp32.config.sentiment
        messages = [{"role": "system", "content": spec.system}]
        for example, label in spec.examples:
            messages += [{"role": "user", "content": spec.user(example)}, {"role": "assistant", "content": spec.answer(label)}]
        messages.append({"role": "user", "content": spec.user(text)})
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        logits = reference(input_ids=torch.tensor([ids])).logits[0, -1]
        pos, neg = (tok.encode(w, add_special_tokens=False)[0] for w in ("Positive", "Negative"))
        p_pos = torch.sigmoid(logits[pos] - logits[neg] - spec.bias_for(text)).item()
        assert result.p_positive == pytest.approx(p_pos, abs=1e-4)
        assert result.result.probability == pytest.approx(max(p_pos, 1 - p_pos), abs=1e-4)
        assert result.usage.prompt_tokens == len(ids) and result.usage.cached_tokens > 0
    assert results[0] == results[2]


def test_batched_scores_equal_single_scores_and_duplicates_run_once(fp32: Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    texts = ["short", "a much longer sentence that needs padding in a batch", "short", "中文句子"]
    single = [fp32.classify_batch([t])[0].p_positive for t in texts]
    rows_seen: list[int] = []
    original = fp32.model.score_batch

    def spy(prefix, prefix_len, rows, label_rows):  # type: ignore[no-untyped-def]
        rows_seen.append(len(rows))
        return original(prefix, prefix_len, rows, label_rows)

    monkeypatch.setattr(fp32.model, "score_batch", spy)
    batched = [r.p_positive for r in fp32.classify_batch(texts)]
    assert batched == pytest.approx(single, abs=1e-5)
    assert sum(rows_seen) == 3


def test_long_texts_take_the_chunked_path_with_the_same_scores(tiny_model_dir: Path, tmp_path: Path, fp32: Engine) -> None:
    chunked = _engine(tiny_model_dir, tmp_path, dtype="fp32", prefill_chunk=40)
    texts = ["a long sentence about cats and dogs that runs past one prefill chunk of sixteen tokens", "short", "ok"]
    assert [r.p_positive for r in chunked.classify_batch(texts)] == pytest.approx(
        [r.p_positive for r in fp32.classify_batch(texts)], abs=1e-4
    )


def _round_trip_turn(engine: Engine) -> tuple[str, list[ChatChunk]]:
    """A first turn whose reply the next turn's prompt spells with the very tokens generated.

    The random model's replies are mostly byte fragments that decode to U+FFFD and re-encode
    otherwise: the next turn can then reuse the KV only up to the reply (as with any server that
    keys its prefix cache on token ids). The reply must round-trip for the reply's KV to be reusable.
    """
    for text in ("Tell me a joke about cats", "hello there", "what is a cat", "dogs and cats"):
        for n in (20, 8, 4, 2):
            engine.index.clear()
            chunks = _chat(engine, (), text, max_new_tokens=n)
            reply, usage = _reply(chunks), chunks[-1].usage
            if usage is not None and len(engine.tokenizer.encode(reply, add_special_tokens=False)) == usage.completion_tokens:
                return text, chunks
    raise AssertionError("no round-tripping reply from the tiny model (its weights or tokenizer changed?)")


def test_chat_reuses_kv_and_matches_recompute(fp32: Engine) -> None:
    text, first = _round_trip_turn(fp32)
    usage = first[-1].usage
    assert usage is not None and usage.cached_tokens > 0  # the pinned system prompt
    history = (Turn(Role.USER, text), Turn(Role.ASSISTANT, _reply(first)))
    reused = _chat(fp32, history, "another one", max_new_tokens=20)
    assert reused[-1].usage.cached_tokens > usage.prompt_tokens  # the whole first turn was reused
    fp32.index.clear()
    recomputed = _chat(fp32, history, "another one", max_new_tokens=20)
    assert recomputed[-1].usage.cached_tokens < usage.prompt_tokens
    assert _reply(reused) == _reply(recomputed)
    assert reused[-1].usage.completion_tokens == recomputed[-1].usage.completion_tokens


def test_bf16_quantized_engines_reuse_kv_and_classify(tiny_model_dir: Path, tmp_path: Path) -> None:
    for weights in ("int4", "int8"):
        engine = _engine(tiny_model_dir, tmp_path, dtype="bf16", weights=weights)
        assert engine.describe().weights == weights and engine.describe().dtype == "bfloat16"
        for layer in (engine.model.head, engine.model.layers[0].qkv):
            # Weights must be 64-byte aligned: the int8 kernel crashed on safetensors' offsets with 4-row inputs.
            assert all(t.data_ptr() % 64 == 0 for t in (layer.q8, layer.q4) if t is not None)
            assert layer(torch.randn(4, engine.model.shape.hidden).bfloat16()).shape[0] == 4
        body = engine.model.layers[0].gate_up
        # The dense prefill copies are reordered for oneDNN once at load, where the CPU allows it.
        assert (body.onednn is not None, body.dense is None) == (onednn_packing()[0],) * 2
        # Decode rows of int4 layers go through Reprise's kernel where it builds and the CPU has AVX512-BF16.
        native_here = int4_gemv.load(tmp_path / "native")[0] is not None
        packed = [x.native is not None for l in engine.model.layers for x in l.linears]
        if weights == "int4":
            assert packed == [native_here and body.onednn is not None] * len(packed)
            assert engine.describe().int4_kernel == ("reprise-avx512bf16" if native_here else "torch")
        result = engine.classify_batch(["I love it"])[0]
        assert 0.5 <= result.result.probability <= 1.0
        first = _chat(engine, (), "hello there", max_new_tokens=8)
        history = (Turn(Role.USER, "hello there"), Turn(Role.ASSISTANT, _reply(first) or "x"))
        again = _chat(engine, history, "and then?", max_new_tokens=4)
        assert again[-1].usage.cached_tokens >= first[-1].usage.prompt_tokens
        engine.index.clear()  # recompute the whole conversation: prefill (dense copy) where decode ran int4/int8
        assert _reply(_chat(engine, history, "and then?", max_new_tokens=4)) == _reply(again)


def test_int4_kernel_torch_keeps_torchs_layout_and_the_same_logits(tiny_model_dir: Path, tmp_path: Path) -> None:
    ours = _engine(tiny_model_dir, tmp_path, dtype="bf16", weights="int4")
    theirs = _engine(tiny_model_dir, tmp_path, dtype="bf16", weights="int4", int4_kernel="torch")
    assert theirs.describe().int4_kernel == "torch"
    assert all(x.q4 is not None and x.native is None for l in theirs.model.layers for x in l.linears)
    for n in (1, 5, 20):  # one decode row; a few rows (AMX where present); a prefill chunk
        ids = torch.arange(3, 3 + n)
        a, b = (e.model.logits(e.model.forward(ids, e.model.new_kv(n))) for e in (ours, theirs))
        # The same quantized weights, multiplied in another order: logits agree to bf16 rounding.
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05 * b.abs().max().item())
    with pytest.raises(ValueError, match="int4 kernel must be"):
        Engine(EngineConfig(model=str(tiny_model_dir), cache_dir=tmp_path, dtype="bf16", weights="int4", int4_kernel="fast")).load()


def test_int4_kernel_auto_is_reprises_wherever_it_builds_without_a_start_up_race(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two kernels round differently: which one serves is decided by what runs here, never by a timing."""
    from inference_svc.runtime import loader, precision

    monkeypatch.setattr(loader, "race_int4_kernels", lambda kernel: pytest.fail("a start never times the kernels"))
    monkeypatch.setattr(precision, "race", lambda *a, **k: pytest.fail("a start never times anything"))
    available = int4_gemv.load(tmp_path / "native")[0] is not None
    expected = "reprise-avx512bf16" if available else "torch"
    revisions = set()
    for _ in range(2):
        engine = _engine(tiny_model_dir, tmp_path, dtype="bf16", weights="int4")
        assert engine.describe().int4_kernel == expected
        assert (engine.model.layers[0].gate_up.native is not None) == available
        revisions.add(engine.describe().revision)
    torch_kernel = _engine(tiny_model_dir, tmp_path, dtype="bf16", weights="int4", int4_kernel="torch").describe()
    assert len(revisions) == 1 and (torch_kernel.revision in revisions) == (expected == "torch")


def test_without_dense_copies_int4_layers_take_the_native_kernel_only_with_amx(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Without AMX the native kernel multiplies one row at a time: prefill rows stay with torch's int4 kernel."""
    engine = _engine(tiny_model_dir, tmp_path, dtype="bf16", weights="int4", dense_prefill=False)
    kernel = int4_gemv.load(tmp_path / "native")[0]
    layer = engine.model.layers[0].gate_up
    assert layer.dense is None and layer.onednn is None
    assert (layer.native is not None) == (kernel is not None and kernel.amx)
    first = _chat(engine, (), "hello there", max_new_tokens=6)
    history = (Turn(Role.USER, "hello there"), Turn(Role.ASSISTANT, _reply(first) or "x"))
    again = _chat(engine, history, "and then?", max_new_tokens=4)
    engine.index.clear()
    assert _reply(_chat(engine, history, "and then?", max_new_tokens=4)) == _reply(again)


def test_max_new_tokens_and_stop_strings(fp32: Engine) -> None:
    chunks = _chat(fp32, (), "What is the capital of France?", max_new_tokens=5)
    last = chunks[-1]
    if last.finish is Finish.LENGTH:
        assert last.usage.completion_tokens == 5
    full = _reply(_chat(fp32, (), "What is the capital of France?", max_new_tokens=24))
    if len(full) > 4:
        stop = full[2:4]
        cut = _chat(fp32, (), "What is the capital of France?", max_new_tokens=24, stop=(stop,))
        assert _reply(cut) == full[: full.index(stop)] and cut[-1].finish is Finish.STOP


def test_cancellation_stops_decoding_within_a_token(fp32: Engine) -> None:
    cancelled = threading.Event()
    produced = 0
    gen = fp32.chat(ChatRequest("Tell me a long story", decoding=Decoding(max_new_tokens=200)), cancelled)
    for chunk in gen:
        if chunk.finish is not None:
            break
        produced += 1
        cancelled.set()
    assert chunk.finish is not None and chunk.usage.completion_tokens <= produced + 1 < 200


def test_prompt_over_the_context_is_invalid(tiny_model_dir: Path, tmp_path: Path) -> None:
    # The tiny model's whole 4,096: with its byte-level tokenizer the sentiment prompt's prefix alone is ~3,000 tokens.
    engine = _engine(tiny_model_dir, tmp_path, dtype="fp32", max_context_tokens=4096)
    with pytest.raises(InvalidArgument, match="text"):
        _chat(engine, (), "word " * 4200)
    assert isinstance(engine.classify_batch(["word " * 4200])[0], InvalidArgument)
    with pytest.raises(ValueError, match="max-context-tokens"):
        _engine(tiny_model_dir, tmp_path, dtype="fp32", max_context_tokens=64)


def test_kv_budget_bounds_the_index(tiny_model_dir: Path, tmp_path: Path) -> None:
    engine = _engine(tiny_model_dir, tmp_path, dtype="fp32", kv_cache_bytes=256 * 1024)
    for i in range(12):
        _chat(engine, (), f"question number {i} about cats and dogs", max_new_tokens=8)
    stats = engine.index.stats()
    assert stats.bytes <= 256 * 1024 and stats.evictions > 0 and stats.entries >= 2


def test_bf16_label_logits_are_not_rounded_to_bf16(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The label margin decides the answer: it must be the fp32 dot product of the hidden state and the label rows.

    Rounded to bf16 (steps of 0.125 for a logit near 20 on the real model), many margins became
    exactly 0 and a text's label flipped with the batch it happened to share.
    """
    engine = _engine(tiny_model_dir, tmp_path, dtype="bf16", weights="int4")
    prefix = engine._sentiment
    assert prefix is not None and prefix.label_rows.dtype == torch.float32
    rows = [engine._encode(t) + prefix.suffix_ids for t in ("I love it", "terrible, never again", "ok")]
    identity = torch.eye(engine.model.shape.hidden)
    hidden = engine.model.score_batch(prefix.kv, len(prefix.ids), rows, identity)
    logits = engine.model.score_batch(prefix.kv, len(prefix.ids), rows, prefix.label_rows)
    assert logits.dtype == torch.float32
    expected = hidden @ prefix.label_rows.t()
    assert torch.allclose(logits, expected, rtol=1e-6, atol=1e-6)
    assert not torch.equal(expected, expected.bfloat16().float())  # the check can tell the two apart


def test_fp32_fp16_engine_reuses_kv_equal_to_recompute_and_scores_rows_alone(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The format `--dtype auto` serves on CPUs without native bf16 (fp32 activations, fbgemm kernels)."""
    engine = _engine(tiny_model_dir, tmp_path, dtype="fp32", weights="fp16")
    info = engine.describe()
    assert (info.dtype, info.weights) == ("float32", "fp16")
    layer = engine.model.layers[0].gate_up
    assert layer.fbgemm is not None and layer.fbgemm.fp16 is not None and layer.dense is None
    head = engine.model.head
    assert head.fbgemm is not None and head.fbgemm.int8 is not None and head.q8 is not None  # rows(): embedding, labels
    _assert_batched_scores_equal_single(engine, tolerance=1e-5)
    _assert_three_turns_reuse_equals_recompute(engine)


def test_quantized_lm_head_shortlists_with_int4_and_rescores_exactly(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The int4 copy of the head only picks candidates: the top ones carry the exact int8 logits, in fp32."""
    engine = _engine(tiny_model_dir, tmp_path, dtype="bf16", weights="int8")
    head = engine.model.head
    assert engine.loaded.spec.name.endswith("-h4") and head.has_int4 and head.q8 is not None
    hidden = torch.randn(5, engine.model.shape.hidden, generator=torch.Generator().manual_seed(7))
    exact = hidden @ (head.q8.float() * head.s8.float()[:, None]).t()
    approx = head(hidden.bfloat16()).float()  # what the int4 copy alone gives
    logits = engine.model.logits(hidden)
    top = approx.topk(SHORTLIST, dim=-1).indices
    torch.testing.assert_close(logits.gather(1, top), exact.gather(1, top), rtol=1e-5, atol=1e-5)
    assert torch.equal(logits.argmax(-1), exact.argmax(-1))  # greedy = the int8 head's choice
    assert not torch.equal(approx.argsort(-1, descending=True)[:, :8], exact.argsort(-1, descending=True)[:, :8])
    assert head.decode_bytes < head.q8.numel()  # decode streams the int4 copy, not the int8 rows


def test_fp32_int4_engine_decodes_through_the_avx2_kernel_and_reuses_kv_equal_to_recompute(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The format `--dtype auto` serves on CPUs without native bf16 where the AVX2 kernel builds, here with
    `--activations fp32` (the fp16 prefill copy)."""
    if int4_gemv.load_fp32(tmp_path / "native")[0] is None:
        with pytest.raises(ValueError, match="needs Reprise's AVX2 int4 kernel"):
            _engine(tiny_model_dir, tmp_path, dtype="fp32", weights="int4")
        return
    engine = _engine(tiny_model_dir, tmp_path, dtype="fp32", weights="int4", activations="fp32")
    info = engine.describe()
    assert (info.dtype, info.weights, info.int4_kernel) == ("float32", "int4", "reprise-avx2")
    assert engine.loaded.spec.name == "int4-fp32-tied-pf-h4"
    for layer in engine.model.layers[0].linears:
        assert layer.native is not None and layer.fbgemm is not None and layer.fbgemm.fp16 is not None
        assert layer.kernel_rows == int4_gemv.F32_MAX_ROWS and layer.dense is None
    assert engine.loaded.decode_bytes < sum(x.memory_bytes for l in engine.model.layers for x in l.linears)
    model, ids = engine.model, torch.arange(3, 3 + int4_gemv.F32_MAX_ROWS + 8)
    # 40 tokens at once (the fp16 prefill copy) vs one at a time (the int4 kernel): the same int4 weights,
    # the copy's rounded to fp16 (2^-11; this random model's wide weights turn that into ~1% of a logit).
    stepped, at_once = _stepped_and_at_once(model, ids)
    torch.testing.assert_close(stepped, at_once, rtol=0.02, atol=0.02 * at_once.abs().max().item())
    stepped, short = _stepped_and_at_once(model, ids[:20])  # a short chunk: the kernel, 20 rows at once
    torch.testing.assert_close(stepped, short, rtol=1e-4, atol=1e-4 * short.abs().max().item())
    # Alone a short text runs through the kernel; in a batch of 32+ rows, through the fp16 copy.
    _assert_batched_scores_equal_single(engine, tolerance=1e-3)
    _assert_three_turns_reuse_equals_recompute(engine)
    with pytest.raises(ValueError, match="torch has no int4 kernel for fp32"):
        Engine(EngineConfig(model=str(tiny_model_dir), cache_dir=tmp_path, dtype="fp32", weights="int4", int4_kernel="torch")).load()


def test_fp32_int4_without_prefill_copies_runs_every_row_through_the_kernel(tiny_model_dir: Path, tmp_path: Path) -> None:
    if int4_gemv.load_fp32(tmp_path / "native")[0] is None:
        return  # the test above checks the refusal
    engine = _engine(tiny_model_dir, tmp_path, dtype="fp32", weights="int4", dense_prefill=False, activations="fp32")
    layer = engine.model.layers[0].gate_up
    assert layer.native is not None and layer.fbgemm is None and layer.dense is None
    assert engine.loaded.spec.name == "int4-fp32-tied-h4"
    stepped, at_once = _stepped_and_at_once(engine.model, torch.arange(3, 23))
    # The kernel's one-row and several-row paths differ only in summation order (fp32), as does attention.
    torch.testing.assert_close(stepped, at_once, rtol=1e-4, atol=1e-4 * at_once.abs().max().item())


@torch.inference_mode()
@pytest.mark.parametrize("head_dim", [16, 64])
def test_fp32_int4_with_int8_activations_computes_a_tokens_kv_alike_alone_or_in_a_chunk(
    tiny_model_dir: Path, tmp_path: Path, head_dim: int
) -> None:
    """What `--dtype auto` serves on CPUs without bf16 (`--activations auto`): every row through the int8
    kernel, no fp16 copy, and prompts through a step's operations row by row, so a token's KV and logits
    are the same bits decoded alone, in a prompt, or in prompt chunks of any size. Head size 64 (the real
    model's) takes the step's vectorized attention, prompt rows in parallel; 16 the portable one."""
    if int4_gemv.load_fp32(tmp_path / "native")[0] is None:
        return  # the fp32-activation test checks the refusal
    if head_dim != 16:
        tiny_model_dir = build_tiny_model(tmp_path / f"tiny-d{head_dim}", head_dim=head_dim)
    engine = _engine(tiny_model_dir, tmp_path, dtype="fp32", weights="int4")
    info = engine.describe()
    assert (info.dtype, info.weights, info.int4_kernel) == ("float32", "int4", int8_kernel_name())
    assert engine.loaded.spec.name == "int4-fp32-tied-h4"  # no prefill copy converted, loaded or packed
    for layer in engine.model.layers[0].linears:
        assert layer.native is not None and layer.fbgemm is None and layer.dense is None
    assert engine.loaded.weight_bytes < 2 * engine.loaded.decode_bytes
    model = engine.model
    assert model.step_plan is not None and model.step_plan.rows_exact
    ids = torch.randint(0, model.shape.vocab, (70,), generator=torch.Generator().manual_seed(9))
    one_by_one, stepped_kv = _steps(model, ids)
    for chunks in ((70,), (1, 30, 39), (64, 6)):
        kv, at = model.new_kv(70), 0
        for n in chunks:
            last = model.logits(model.forward(ids[at : at + n], kv))
            at += n
        assert torch.equal(last, one_by_one[-1:]), chunks
        assert torch.equal(torch.stack([kv.k, kv.v]), stepped_kv), chunks
    _assert_batched_scores_equal_single(engine, tolerance=1e-6)  # torch's norms over more rows: last bits
    _assert_three_turns_reuse_equals_recompute(engine)
    with pytest.raises(ValueError, match="--activations int8 applies to int4 weights under fp32"):
        _engine(tiny_model_dir, tmp_path, dtype="fp32", weights="fp16", activations="int8")
    with pytest.raises(ValueError, match="--activations 'int4'"):
        _engine(tiny_model_dir, tmp_path, dtype="fp32", weights="int4", activations="int4")


def _steps(model, ids: torch.Tensor, without: str = "") -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Logits after each of ``ids`` fed one token at a time, and the KV they wrote; with ``without`` ("ops" or
    "step_plan") that attribute of the model set to None for the run, so another decode path serves."""
    saved = getattr(model, without) if without else None
    if without:
        setattr(model, without, None)
    try:
        kv = model.new_kv(len(ids))
        logits = torch.cat([model.logits(model.forward(ids[i : i + 1], kv)) for i in range(len(ids))])
    finally:
        if without:
            setattr(model, without, saved)
    return logits, torch.stack([kv.k, kv.v])


@torch.inference_mode()
@pytest.mark.parametrize(("dtype", "weights"), [("fp32", "dense"), ("bf16", "int4"), ("bf16", "dense")])
def test_fused_decode_steps_match_torchs_operations(tiny_model_dir: Path, tmp_path: Path, dtype: str, weights: str) -> None:
    """One-token steps through decode_ops.c against the torch operations they replace, on the same weights.

    fp32 agrees to float rounding. In bf16 a norm output or attention value lands one bf16 step away
    here and there (sums in another order), which this random model's wide weights amplify: ~1% of a
    step's logits (median), 2% at most over 70 steps when measured.
    """
    engine = _engine(tiny_model_dir, tmp_path, dtype=dtype, weights=weights)
    model = engine.model
    assert model.ops is not None and engine.describe().decode_ops == DECODE_OPS_NAME
    ids = torch.randint(0, model.shape.vocab, (70,), generator=torch.Generator().manual_seed(3))
    fused, fused_kv = _steps(model, ids)
    plain, plain_kv = _steps(model, ids, without="ops")
    if dtype == "fp32":
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())
        torch.testing.assert_close(fused_kv, plain_kv, rtol=1e-5, atol=1e-5 * plain_kv.abs().max().item())
        assert torch.equal(fused.argmax(-1), plain.argmax(-1))
        return
    error = (fused - plain).norm(dim=-1) / plain.norm(dim=-1)
    assert error.median().item() < 0.02 and error.max().item() < 0.05, error
    kv_error = (fused_kv.float() - plain_kv.float()).norm() / plain_kv.float().norm()
    assert kv_error.item() < 0.02


def test_decode_ops_torch_keeps_torchs_operations(tiny_model_dir: Path, tmp_path: Path) -> None:
    engine = _engine(tiny_model_dir, tmp_path, dtype="fp32", decode_ops="torch")
    assert engine.model.ops is None and engine.describe().decode_ops == "torch"
    _assert_three_turns_reuse_equals_recompute(engine)
    with pytest.raises(ValueError, match="decode ops 'fast'"):
        Engine(EngineConfig(model=str(tiny_model_dir), cache_dir=tmp_path, dtype="fp32", decode_ops="fast")).load()


@torch.inference_mode()
@pytest.mark.parametrize(
    ("dtype", "activations", "kernel"),
    [("bf16", "auto", int4_gemv.NAME), ("fp32", "fp32", int4_gemv.F32_NAME), ("fp32", "int8", int8_kernel_name())],
)
def test_int4_layers_step_in_one_call_with_the_per_operation_bits(
    tiny_model_dir: Path, tmp_path: Path, dtype: str, activations: str, kernel: str
) -> None:
    """Where every layer is int4 through Reprise's kernel, a step runs in one C call: the same functions in
    the same order as the per-operation path, so the same logits and KV, bit for bit."""
    engine = _engine(tiny_model_dir, tmp_path, dtype=dtype, weights="int4", activations=activations)
    model = engine.model
    if engine.describe().int4_kernel != kernel:  # this CPU lacks the kernel (no AVX512-BF16 / AVX2): no plan
        assert model.step_plan is None and model.ops is not None
        return
    assert model.step_plan is not None
    ids = torch.randint(0, model.shape.vocab, (40,), generator=torch.Generator().manual_seed(5))
    whole, whole_kv = _steps(model, ids)
    per_op, per_op_kv = _steps(model, ids, without="step_plan")
    assert torch.equal(whole, per_op) and torch.equal(whole_kv, per_op_kv)
    _assert_three_turns_reuse_equals_recompute(engine)
