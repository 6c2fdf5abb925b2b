"""One chat request as the service's core sees it, built once by the servicer and passed down whole.

The servicer makes it from ``Chat``/``ChatStream`` (:func:`reprise.convert.chat_from_pb`);
the service validates and prices it, adds the prepared pictures, and hands the same value
to the engine, which renders its prompt (:func:`.prompts.chat_prompt`) and decodes with
its :class:`~reprise.domain.Decoding`. Scheduling facts (tenant, deadline) are not part of
it: they decide when the request runs, not what it answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from reprise.domain import Decoding, Turn

if TYPE_CHECKING:
    from inference_svc.runtime.vision import Pictures


@dataclass(frozen=True)
class ChatRequest:
    """A new user message and what it continues: earlier turns, the system prompt, decoding, images."""

    text: str
    history: tuple[Turn, ...] = ()
    #: ``None``: the service's default system prompt (whose KV is pinned at start).
    system_prompt: str | None = None
    #: Unset fields take the model's defaults in the engine (:func:`.decoding.with_defaults`).
    decoding: Decoding = Decoding()
    #: Encoded image files sent with the new message, as the caller sent them (vision-language models only).
    images: tuple[bytes, ...] = field(default=(), repr=False)
    #: ``images`` decoded and patched for the model; the service fills it in off the model thread
    #: (:meth:`with_pictures`) and the engine reads only this. ``None``: a text-only prompt.
    pictures: Pictures | None = field(default=None, compare=False, repr=False)

    def with_pictures(self, pictures: Pictures) -> ChatRequest:
        """This request with its images prepared for the model."""
        return replace(self, pictures=pictures)
