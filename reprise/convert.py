"""Protobuf <-> domain conversions for the shared types (``reprise.common.v1``).

Only servicers call these. ``*_from_pb`` functions validate what the domain
type cannot represent and raise :class:`~reprise.errors.InvalidArgument`
naming the field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from reprise.common.v1 import common_pb2 as pb
from reprise.domain import Answer, Decoding, Finish, Label, Role, SentimentResult, Turn, Usage
from reprise.errors import InvalidArgument

_ROLE_FROM_PB = {pb.ROLE_USER: Role.USER, pb.ROLE_ASSISTANT: Role.ASSISTANT}
_ROLE_TO_PB = {v: k for k, v in _ROLE_FROM_PB.items()}
_LABEL_FROM_PB = {pb.SENTIMENT_POSITIVE: Label.POSITIVE, pb.SENTIMENT_NEGATIVE: Label.NEGATIVE}
_LABEL_TO_PB = {v: k for k, v in _LABEL_FROM_PB.items()}
_FINISH_FROM_PB = {pb.FINISH_REASON_STOP: Finish.STOP, pb.FINISH_REASON_LENGTH: Finish.LENGTH}
_FINISH_TO_PB = {v: k for k, v in _FINISH_FROM_PB.items()}


def turns_from_pb(turns: Iterable[pb.Turn], field: str = "history") -> tuple[Turn, ...]:
    out = []
    for i, turn in enumerate(turns):
        role = _ROLE_FROM_PB.get(turn.role)
        if role is None:
            raise InvalidArgument(f"{field}[{i}].role", "must be ROLE_USER or ROLE_ASSISTANT")
        out.append(Turn(role, turn.content))
    return tuple(out)


def turns_to_pb(turns: Iterable[Turn]) -> list[pb.Turn]:
    return [pb.Turn(role=_ROLE_TO_PB[t.role], content=t.content) for t in turns]


def decoding_from_pb(msg: pb.DecodingParams) -> Decoding:
    return Decoding(
        temperature=msg.temperature if msg.HasField("temperature") else None,
        top_p=msg.top_p if msg.HasField("top_p") else None,
        max_new_tokens=msg.max_new_tokens if msg.HasField("max_new_tokens") else None,
        stop=tuple(msg.stop),
        seed=msg.seed if msg.HasField("seed") else None,
        top_k=msg.top_k if msg.HasField("top_k") else None,
        min_p=msg.min_p if msg.HasField("min_p") else None,
        repetition_penalty=msg.repetition_penalty if msg.HasField("repetition_penalty") else None,
    )


def decoding_to_pb(d: Decoding) -> pb.DecodingParams:
    msg = pb.DecodingParams(stop=list(d.stop))
    if d.temperature is not None:
        msg.temperature = d.temperature
    if d.top_p is not None:
        msg.top_p = d.top_p
    if d.max_new_tokens is not None:
        msg.max_new_tokens = d.max_new_tokens
    if d.seed is not None:
        msg.seed = d.seed
    if d.top_k is not None:
        msg.top_k = d.top_k
    if d.min_p is not None:
        msg.min_p = d.min_p
    if d.repetition_penalty is not None:
        msg.repetition_penalty = d.repetition_penalty
    return msg


T = TypeVar("T")


def chat_from_pb(msg: Any, make: Callable[..., T]) -> T:
    """``make`` called with the prompt of a Chat or ChatStream request, read here once for every service.

    The gateway's and inference's chat messages carry the same prompt fields; each service builds
    its own prompt type of them (``make``): ``text``, ``history``, ``system_prompt`` (``None`` when
    unset), ``decoding`` and ``images`` (the encoded files as sent).
    """
    return make(
        text=msg.text,
        history=turns_from_pb(msg.history),
        system_prompt=msg.system_prompt if msg.HasField("system_prompt") else None,
        decoding=decoding_from_pb(msg.decoding),
        images=tuple(msg.images),
    )


def usage_from_pb(msg: pb.Usage) -> Usage:
    return Usage(msg.prompt_tokens, msg.cached_tokens, msg.completion_tokens)


def usage_to_pb(u: Usage) -> pb.Usage:
    return pb.Usage(prompt_tokens=u.prompt_tokens, cached_tokens=u.cached_tokens, completion_tokens=u.completion_tokens)


def sentiment_from_pb(msg: pb.SentimentResult, field: str = "sentiment") -> SentimentResult:
    label = _LABEL_FROM_PB.get(msg.label)
    if label is None:
        raise InvalidArgument(f"{field}.label", "must be SENTIMENT_POSITIVE or SENTIMENT_NEGATIVE")
    return SentimentResult(label, msg.probability)


def sentiment_to_pb(s: SentimentResult) -> pb.SentimentResult:
    return pb.SentimentResult(label=_LABEL_TO_PB[s.label], probability=s.probability)


def finish_from_pb(value: int) -> Finish | None:
    return _FINISH_FROM_PB.get(value)


def finish_to_pb(f: Finish | None) -> int:
    return _FINISH_TO_PB.get(f, pb.FINISH_REASON_UNSPECIFIED) if f is not None else pb.FINISH_REASON_UNSPECIFIED


def answer_from_pb(msg: pb.Answer, field: str = "answer") -> Answer:
    return Answer(
        sentiment=sentiment_from_pb(msg.sentiment, f"{field}.sentiment") if msg.HasField("sentiment") else None,
        reply=msg.reply if msg.HasField("reply") else None,
        finish=finish_from_pb(msg.finish_reason),
        usage=usage_from_pb(msg.usage),
    )


def answer_to_pb(a: Answer) -> pb.Answer:
    msg = pb.Answer(finish_reason=finish_to_pb(a.finish), usage=usage_to_pb(a.usage))
    if a.sentiment is not None:
        msg.sentiment.CopyFrom(sentiment_to_pb(a.sentiment))
    if a.reply is not None:
        msg.reply = a.reply
    return msg
