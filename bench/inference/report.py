"""Markdown summary of ``bench/results/inference.json`` with the issue's targets as ratios."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    peer = r.get("llamacpp")
    serving = r["formats"].get(r["serving_format"], {})
    bw = r["bandwidth_gbs"]["read"]
    lines = [
        "# Inference benchmark",
        "",
        f"{m['date']}, {m['cpu']}, {r['placement']}, torch {m['torch']}; "
        f"load average {m['loadavg_start']:.1f} at start, {m.get('loadavg_end', float('nan')):.1f} at end "
        "(above ~0.5 means other work shared the cores: treat numbers as provisional).",
        f"Memory bandwidth (streaming read, same threads): **{bw:.1f} GB/s** (copy {r['bandwidth_gbs']['copy']:.1f} GB/s).",
        f"Serving format: **{r['serving_format']}** ({r['precision_reason']}).",
        "",
        "## Targets",
        "",
        "| target | measured | ratio | met |",
        "|---|---|---|---|",
    ]
    sent, base = r["sentiment"], r["sentiment_baseline"]
    for lang in sent:
        ratio = sent[lang]["p50_ms"] / base[lang]["p50_ms"]
        lines.append(
            f"| sentiment {lang} latency <= 0.2x baseline | {sent[lang]['p50_ms']:.0f} ms vs {base[lang]['p50_ms']:.0f} ms "
            f"| {ratio:.2f}x | {'yes' if ratio <= 0.2 else 'no'} |"
        )
        acc = sent[lang]["accuracy"]
        lines.append(f"| sentiment {lang} accuracy >= 90% | {acc:.1%} (baseline {base[lang]['accuracy']:.1%}) | | {'yes' if acc >= 0.9 else 'no'} |")
        if "accuracy_label_supported" in sent[lang]:
            sup = sent[lang]["accuracy_label_supported"]
            dev = r.get("sentiment_dev", {}).get(lang, {}).get("accuracy_label_supported")
            met = "yes" if sup >= 0.9 and (dev is None or dev >= 0.9) else ("test only" if sup >= 0.9 else "no")
            lines.append(
                f"| sentiment {lang} accuracy >= 90%, texts whose label a reader agrees with "
                f"({sent[lang]['n_label_supported']} of {sent[lang]['n']}) | {sup:.1%} "
                f"(baseline {base[lang].get('accuracy_label_supported', float('nan')):.1%}"
                + (f"; dev half {dev:.1%}" if dev is not None else "")
                + f") | | {met} |"
            )
    if peer:
        d = serving.get("decode_tok_s", 0.0) / peer["decode_tok_s"]
        lines.append(
            f"| decode >= 0.8x llama.cpp | {serving.get('decode_tok_s', 0):.1f} vs {peer['decode_tok_s']:.1f} tok/s | {d:.2f}x | {'yes' if d >= 0.8 else 'no'} |"
        )
        for n in ("64", "512"):
            p = serving["prefill_tok_s"][n] / peer["prefill_tok_s"][n]
            lines.append(
                f"| prefill {n} >= 2x llama.cpp | {serving['prefill_tok_s'][n]:.0f} vs {peer['prefill_tok_s'][n]:.0f} tok/s "
                f"| {p:.2f}x | {'yes' if p >= 2 else 'no'} |"
            )
    mt = r["multi_turn"]
    lines.append(
        f"| turn-5 TTFT <= 0.1x recompute ({mt['prompt_tokens']} prompt tokens) | {mt['ttft_reuse_ms']:.0f} ms vs "
        f"{mt['ttft_recompute_ms']:.0f} ms | {mt['ratio']:.3f}x | {'yes' if mt['ratio'] <= 0.1 else 'no'} |"
    )
    c = r["classify_16_concurrent"]
    lines += [
        "",
        f"Turn 5 reused {mt['cached_tokens']} of {mt['prompt_tokens']} prompt tokens; greedy reply identical to "
        f"recompute: **{mt['greedy_identical']}**.",
        f"16 concurrent Classify over gRPC: batched **{c['batched']['requests_per_s']:.1f} req/s** (mean batch "
        f"{c['batched']['mean_batch']:.1f}) vs one at a time {c['one_at_a_time']['requests_per_s']:.1f} req/s "
        f"({c['batched']['requests_per_s'] / c['one_at_a_time']['requests_per_s']:.2f}x).",
        *_chat_concurrency(r.get("chat_concurrency")),
        "",
        "## Weight formats (levers)",
        "",
        "| format | MB in memory | MB read / token | decode tok/s | roofline tok/s | prefill 64 | prefill 512 | greedy = fp32 | en acc | zh acc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in r["formats"].items():
        lines.append(
            f"| {name} | {f['weights_mb']:.0f} | {f['decode_mb_per_token']:.0f} | {f['decode_tok_s']:.1f} | "
            f"{f['roofline_tok_s']:.1f} | {f['prefill_tok_s']['64']:.0f} | {f['prefill_tok_s']['512']:.0f} | "
            f"{f['greedy_vs_fp32']['identical']:.0%} ({f['greedy_vs_fp32']['mean_common_prefix']:.0%} prefix) | "
            f"{f['sentiment_accuracy']['en']:.1%} | {f['sentiment_accuracy']['zh']:.1%} |"
        )
    if peer:
        lines.append(
            f"| llama.cpp {peer['version']} (GGUF Q4_K_M/Q5_0/Q8_0) | | | {peer['decode_tok_s']:.1f} | | "
            f"{peer['prefill_tok_s']['64']:.0f} | {peer['prefill_tok_s']['512']:.0f} | | | |"
        )
    for name, why in r.get("formats_skipped", {}).items():
        lines.append(f"| {name} | skipped: {why} | | | | | | | | |")
    head, dense = r["lm_head_last_position_only"], r["dense_prefill_copy"]
    lines += [
        "",
        f"- LM head on the last position only: running it on all 512 prompt positions would add "
        f"{head['all_positions_ms']:.0f} ms to a {head['prefill_512_ms']:.0f} ms prefill.",
    ]
    kernel, fp32 = r.get("int4_kernel_effect"), r["serving_format"].endswith("-fp32")
    if kernel:
        other = "the fp16 format through fbgemm" if fp32 else "torch's `_weight_int4pack_mm_for_cpu`"
        same_as = "the fp16 format" if fp32 else "torch's kernel"
        lines.append(
            f"- int4 decode kernel ({r['int4_kernel']}): {kernel['decode_tok_s']:.1f} tok/s vs "
            f"{kernel['torch_decode_tok_s']:.1f} with {other} "
            f"({kernel['decode_tok_s'] / kernel['torch_decode_tok_s']:.2f}x, alternating in one process); greedy replies "
            f"identical to {same_as}: "
            f"{kernel['greedy_vs_torch_kernel']['identical']:.0%}."
        )
    elif r.get("int4_kernel"):
        lines.append(f"- int4 decode kernel: {r['int4_kernel']}.")
    fused = r.get("decode_ops_effect")
    if fused:
        short, long = fused["32"], fused["1400"]
        lines.append(
            f"- Decode step's small operations fused in C ({r['decode_ops']}) vs torch's, alternating in one process: "
            f"{short['fused_tok_s']:.1f} vs {short['torch_tok_s']:.1f} tok/s after 32 tokens "
            f"({short['fused_tok_s'] / short['torch_tok_s']:.2f}x), {long['fused_tok_s']:.1f} vs {long['torch_tok_s']:.1f} "
            f"after 1,400 ({long['fused_tok_s'] / long['torch_tok_s']:.2f}x); greedy replies identical: "
            f"{fused['greedy_vs_torch_ops']['identical']:.0%}."
            + (
                f" The fused operations called per layer instead of the one-call step: {short['per_op_tok_s']:.1f} / "
                f"{long['per_op_tok_s']:.1f} tok/s."
                if "per_op_tok_s" in short else ""
            )
        )
    acts = r.get("activations_effect")
    if acts:
        lines.append(_ab(
            f"int8 activations ({r['int4_kernel']}, every row count) vs fp32 activations (the kernel for 1-31 rows, "
            f"an fp16 copy through fbgemm for more)", acts["int8"], acts["fp32"],
            acts["greedy_vs_fp32_activations"], (serving.get("weights_mb", 0), acts["fp32_weights_mb"]),
        ))
    vnni = r.get("vnni_effect")
    if vnni:
        lines.append(_ab(
            f"AVX512-VNNI for int8 rows ({r['int4_kernel']}) vs the AVX2 paths", vnni["vnni"], vnni["avx2"],
            vnni["greedy_vs_avx2"], note=" (the same bits by construction)",
        ))
    both = r.get("bf16_vs_int8_effect")
    if both:
        served = both.get("served", "bf16")  # runs before 2026-12-07 served bf16
        a, b = ("bf16", "int8") if served == "bf16" else ("int8", "bf16")
        sides = {"bf16": "bf16 activations (a dense bf16 copy for prefill)", "int8": f"int8 activations ({both['int8_kernel']}, no dense copy)"}
        mb = {"bf16": serving.get("weights_mb", 0) if served == "bf16" else both.get("bf16_weights_mb", 0),
              "int8": both["int8_weights_mb"]}
        line = _ab(f"{sides[a]} (served) vs {sides[b]}, int4 weights both", both[a], both[b], both["greedy_vs_int8"],
                   (mb[a], mb[b]))
        if "decode_8_rows_tok_s" in both[a]:
            x, y = both[a]["decode_8_rows_tok_s"], both[b]["decode_8_rows_tok_s"]
            line = line[:-1] + f"; eight streams decoded together {x:.0f} vs {y:.0f} tok/s ({x / y:.2f}x)."
        lines.append(line)
    if dense:  # measured only for formats that keep a dense prefill copy
        lines.append(
            f"- Dense {'fp16' if fp32 else 'bf16'} copy for prefill: {dense['prefill_512_with_dense_copy']:.0f} tok/s at 512 tokens vs "
            f"{dense['prefill_512_quantized_kernel_only']:.0f} tok/s through the weight-only kernel."
        )
    lines += [
        "",
        "## Sentiment (held-out test split, one request at a time)",
        "",
        "| lang | ours p50 | ours acc | baseline p50 | baseline acc | baseline unparsed | n |",
        "|---|---|---|---|---|---|---|",
    ]
    for lang in sent:
        lines.append(
            f"| {lang} | {sent[lang]['p50_ms']:.0f} ms | {sent[lang]['accuracy']:.1%} | {base[lang]['p50_ms']:.0f} ms | "
            f"{base[lang]['accuracy']:.1%} | {base[lang]['unparsed']} | {sent[lang]['n']} / {base[lang]['n']} |"
        )
        if "accuracy_label_supported" in sent[lang] and "accuracy_label_supported" in base[lang]:
            lines.append(
                f"| {lang}, label-supported texts | | {sent[lang]['accuracy_label_supported']:.1%} | | "
                f"{base[lang]['accuracy_label_supported']:.1%} | | {sent[lang]['n_label_supported']} / {base[lang]['n_label_supported']} |"
            )
    if any("accuracy_label_supported" in v for v in sent.values()):
        lines += [
            "",
            "Label-supported texts: the Chinese corpus labels sentences with the rating of the review they were cut "
            "from; `bench/inference/zh_label_audit.tsv` lists the test texts whose label the text itself does not "
            "support (read before any model's answers were seen). Both accuracies are reported.",
        ]
    if "startup" in r:
        s = r["startup"]
        lines += [
            "",
            f"Startup: converting the fp32 copy to the serving format {s['convert_from_fp32_copy_s']:.1f} s; a start from the "
            f"converted copy {s['start_from_converted_s']:.1f} s (load {s['start_from_converted_load_s']:.1f} s + warm-up).",
        ]
    return "\n".join(lines) + "\n"


def _ab(
    title: str, a: dict[str, float], b: dict[str, float], greedy: dict[str, float],
    weights_mb: tuple[float, float] | None = None, note: str = "",
) -> str:
    """One A/B line: ``a`` against ``b``, measured alternating in one process."""
    decode = f"decode {a['decode']:.1f} vs {b['decode']:.1f} tok/s ({a['decode'] / b['decode']:.2f}x); " if "decode" in a else ""
    memory = f"{weights_mb[0]:.0f} vs {weights_mb[1]:.0f} MB of weights in memory; " if weights_mb else ""
    return (
        f"- {title}, alternating in one process: {_prompt_speeds(a, b)}; {decode}{memory}"
        f"greedy replies identical: {greedy['identical']:.0%}{note}."
    )


def _prompt_speeds(a: dict[str, float], b: dict[str, float]) -> str:
    """Prefill at 64 / 512 tokens and one classify request, ``a`` against ``b`` (an A/B's two sides)."""
    return (
        f"prefill {a['prefill_64']:.0f} / {a['prefill_512']:.0f} vs {b['prefill_64']:.0f} / {b['prefill_512']:.0f} tok/s "
        f"at 64 / 512 tokens ({a['prefill_64'] / b['prefill_64']:.2f}x / {a['prefill_512'] / b['prefill_512']:.2f}x); "
        f"one classify request p50 {a['classify_p50_ms']:.0f} vs {b['classify_p50_ms']:.0f} ms "
        f"({a['classify_p50_ms'] / b['classify_p50_ms']:.2f}x)"
    )


def _chat_concurrency(c: dict[str, Any] | None) -> list[str]:
    """The aggregate-decode line (concurrent greedy chats through gRPC; details in its own result file)."""
    if not c:
        return []
    rates = ", ".join(f"{n}: {t:.1f}" for n, t in c["tok_s"].items())
    return [
        f"Concurrent greedy chats over gRPC (64 new tokens each), aggregate tok/s by chats at once: {rates}; "
        f"8 at once **{c['speedup'].get('8', float('nan')):.2f}x** one chat (goal >= 4x; `{Path(c['file']).name}`)."
    ]
