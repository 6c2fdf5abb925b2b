"""Entries as JSON in Redis: readable with redis-cli, never pickle."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from cache_svc.core.types import Entry
from reprise.domain import Answer, Finish, Label, SentimentResult, Usage


def _answer_to_dict(a: Answer) -> dict[str, Any]:
    out: dict[str, Any] = {"usage": [a.usage.prompt_tokens, a.usage.cached_tokens, a.usage.completion_tokens]}
    if a.sentiment is not None:
        out["sentiment"] = {"label": a.sentiment.label.value, "probability": a.sentiment.probability}
    if a.reply is not None:
        out["reply"] = a.reply
    if a.finish is not None:
        out["finish"] = a.finish.value
    return out


def _answer_from_dict(d: dict[str, Any]) -> Answer:
    s = d.get("sentiment")
    return Answer(
        sentiment=SentimentResult(Label(s["label"]), float(s["probability"])) if s else None,
        reply=d.get("reply"),
        finish=Finish(d["finish"]) if "finish" in d else None,
        usage=Usage(*d.get("usage", (0, 0, 0))),
    )


def encode_entry(e: Entry) -> bytes:
    doc = {
        "key": e.key,
        "namespace": e.namespace,
        "task": e.task,
        "text": e.text,
        "answer": _answer_to_dict(e.answer),
        "model_id": e.model_id,
        "model_revision": e.model_revision,
        "created_at": e.created_at,
        "expires_at": e.expires_at,
        "partition": e.partition,
        # A string: JSON readers in other languages lose precision on 64-bit ints.
        "simhash": f"{e.simhash:016x}",
        "semantic": e.semantic,
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode_entry(raw: bytes | str) -> Entry:
    d = json.loads(raw)
    return Entry(
        key=d["key"],
        namespace=d["namespace"],
        task=d["task"],
        text=d["text"],
        answer=_answer_from_dict(d["answer"]),
        model_id=d.get("model_id", ""),
        model_revision=d.get("model_revision", ""),
        created_at=float(d["created_at"]),
        expires_at=float(d["expires_at"]),
        partition=d.get("partition", ""),
        simhash=int(d.get("simhash", "0"), 16),
        semantic=bool(d.get("semantic", False)),
    )


def encode_vector(v: np.ndarray) -> bytes:
    """An embedding as little-endian float32 bytes (what Redis stores next to the entry)."""
    return np.ascontiguousarray(v, dtype="<f4").tobytes()


def decode_vector(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4")
