"""The prompt of a chat turn with images, for a vision-language model (:mod:`inference_svc.runtime.vision`).

The chat template places one vision block per image before the new user text, and its
single ``<|image_pad|>`` becomes as many image tokens as the image processor makes of
that picture (:class:`~inference_svc.runtime.vision.Pictures`). Every caller string is
encoded as plain text, as on the text path (:func:`.prompts.encode_plain`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from inference_svc.core import prompts
from inference_svc.core.request import ChatRequest
from inference_svc.runtime.vision import Pictures
from reprise.domain import Role
from reprise.errors import InvalidArgument

#: Stands in for a message's text while the template renders (NUL is in no template or role name).
_SLOT = "\x00reprise-vision-slot-{}\x00"
_SLOT_RE = re.compile("\x00reprise-vision-slot-(\\d+)\x00")


@dataclass(frozen=True)
class VisionPrompt(prompts.ChatPrompt):
    """A chat prompt whose new user message holds images (``text_tokens`` counts their tokens too)."""

    pictures: Pictures | None = None

    def too_long(self, limit: int) -> InvalidArgument:
        """Blame the pictures when the conversation would fit without them."""
        images = self.pictures.prompt_tokens if self.pictures is not None else 0
        if images and len(self.ids) - images < limit:
            return InvalidArgument(
                "images",
                f"the pictures take {images} tokens and the conversation {len(self.ids)}; the limit is {limit - 1}: "
                "send fewer or smaller pictures",
            )
        return super().too_long(limit)


def chat_prompt(tokenizer: Any, request: ChatRequest, default_system: str, image_token_id: int) -> VisionPrompt:
    """The prompt of a chat turn whose new message shows ``request.pictures`` before its text.

    Rendered by the model's own chat template (where it puts the vision blocks), with every
    caller string encoded as plain text (:func:`.prompts.encode_plain`), as on the text path.
    """
    pictures = request.pictures
    assert pictures is not None, "a request's images are prepared (ChatRequest.with_pictures) before its prompt"
    messages: list[dict[str, Any]] = [{"role": "system", "content": _SLOT.format(0)}]
    contents = [request.system_prompt or default_system]
    for turn in request.history:
        messages.append({"role": "user" if turn.role is Role.USER else "assistant", "content": _SLOT.format(len(contents))})
        contents.append(turn.content)
    last = len(contents)
    parts = [{"type": "image"} for _ in pictures.tokens] + [{"type": "text", "text": _SLOT.format(last)}]
    messages.append({"role": "user", "content": parts})
    contents.append(request.text)
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    pieces = _SLOT_RE.split(rendered)  # markup, index, markup, index, ..., markup
    ids: list[int] = []
    sizes = [0] * len(contents)
    images = iter(pictures.tokens)
    for at, piece in enumerate(pieces):
        if at % 2:
            i = int(piece)
            content = prompts.encode_plain(tokenizer, contents[i])
            ids += content
            sizes[i] += len(content)
            continue
        for token in tokenizer.encode(piece, add_special_tokens=False):
            if token != image_token_id:
                ids.append(token)
                continue
            n = next(images, None)
            if n is None:
                raise InvalidArgument("images", "the model's chat template placed more images than were sent")
            ids += [image_token_id] * n
            sizes[last] += n
    if next(images, None) is not None:
        raise InvalidArgument("images", "the model's chat template has no place for images")
    return VisionPrompt(ids, sizes[0], sizes[last], bool(request.system_prompt), pictures)
