"""Vision-language models (Qwen2-VL, Qwen2.5-VL) on the generic path: images in the user's message.

A VL checkpoint is served by transformers' own model class and image processor,
behind the generic path's interface (:class:`.generic.GenericModel`): a text-only
chat runs its language model exactly as any other generic model, and classify
works as before. A chat with images differs in three places only:

- the prompt (the service's :func:`inference_svc.core.vision_prompt.chat_prompt`): the
  chat template places one vision block per image before the new user text, and its
  single ``<|image_pad|>`` becomes as many image tokens as the image processor makes
  of that picture;
- the KV (:func:`attach`): it carries the prompt's 3-D rotary positions (M-RoPE:
  image tokens are placed on a time/height/width grid, so text after an image
  continues at another position than its index) and, once computed, the vision
  encoder's rows that replace the image tokens' embeddings. Prefill still runs in
  the engine's chunks; decoding continues at the position offset the grid left;
- reuse: the prefix index is keyed by token ids, and every picture's image tokens
  have the same id, so a turn with images is never stored there (it may still
  start from a stored text-only prefix, e.g. the pinned system prompt: text before
  the first image has plain positions).

Images arrive decoded (:mod:`reprise.images` applied the caps); :meth:`VisionModel.prepare`
turns them into pixel patches off the worker thread, which also says how many
tokens each picture costs (admission prices them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from inference_svc.runtime import generic
from inference_svc.runtime.architecture import UnsupportedModel
from inference_svc.runtime.generic import GenericKV, GenericModel
from reprise.errors import InvalidArgument

log = logging.getLogger(__name__)

#: Files whose presence (with a ``vision_config`` in config.json) marks a vision-language model directory.
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
#: Most image tokens one picture takes: a larger picture is scaled down (aspect kept) to fit. Qwen2-VL's
#: own processor config allows 16,384 (12.8 M pixels): a phone photo would fill four times the default
#: context, and its prefill on a CPU would take many minutes. 1,024 tokens is a 896x896 picture.
MAX_IMAGE_TOKENS = 1024


def is_vision_dir(directory: Path, config: dict[str, Any]) -> bool:
    """A VL checkpoint: its config has a vision tower and the directory an image processor config."""
    return "vision_config" in config and any((directory / name).exists() for name in PROCESSOR_FILES)


@dataclass(frozen=True)
class Pictures:
    """A request's images as the model reads them: pixel patches, each image's grid and its token count."""

    pixel_values: torch.Tensor
    #: ``[images, 3]``: temporal, height and width patches of each image.
    grid_thw: torch.Tensor
    #: Image tokens each picture takes in the prompt (its patches over the merge size squared).
    tokens: tuple[int, ...]

    @property
    def prompt_tokens(self) -> int:
        """Tokens the pictures add to a prompt: their image tokens and each one's vision start and end."""
        return sum(self.tokens) + 2 * len(self.tokens)


class VisionKV(GenericKV):
    """A generic KV that, during a prompt with images, knows the prompt's positions and image rows."""

    def __init__(self, model: GenericModel) -> None:
        super().__init__(model)
        self.media: _Media | None = None


@dataclass
class _Media:
    """What prefilling a prompt with images needs beyond its ids (see :func:`attach`)."""

    length: int
    #: ``[3, length]`` M-RoPE positions of the prompt.
    positions: torch.Tensor
    #: Position offset of every token after the prompt (the grid's positions are fewer than its tokens).
    delta: int
    is_image: torch.Tensor
    #: For each prompt position, the row of the vision encoder's output it takes (image positions only).
    row: torch.Tensor
    pictures: Pictures
    rows: torch.Tensor | None = None


class VisionModel(GenericModel):
    """transformers' VL model behind the generic interface; images through :func:`attach`'d KVs."""

    def __init__(self, hf: Any, max_context: int, image_processor: Any, max_image_tokens: int = MAX_IMAGE_TOKENS) -> None:
        super().__init__(hf, max_context)
        self.image_processor = image_processor
        inner = hf.model
        if not (hasattr(inner, "get_rope_index") and hasattr(inner, "get_image_features")):
            raise UnsupportedModel(
                f"{self.shape.architecture}: images are served for Qwen2-VL-style models (M-RoPE, image tokens); "
                "this one's model class has no get_rope_index/get_image_features"
            )
        self.image_token_id = int(hf.config.image_token_id)
        self.merge = int(getattr(image_processor, "merge_size", 2))
        self.embed = hf.get_input_embeddings()
        # Pixels per image token: a patch side times the merge, squared (28x28 for Qwen2-VL).
        unit = (int(getattr(image_processor, "patch_size", 14)) * self.merge) ** 2
        size = image_processor.size
        self.min_pixels = int(size["shortest_edge"])
        self.max_pixels = min(int(size["longest_edge"]), max_image_tokens * unit)
        #: Part of the serving format (hence of the revision the cache keys on): the cap moves answers.
        self.format_note = f"img{self.max_pixels}"

    def new_kv(self, capacity: int) -> VisionKV:
        return VisionKV(self)

    def prepare(self, images: Sequence[Any]) -> Pictures:
        """Pixel patches of decoded RGB pictures (thread-safe: reads no model state)."""
        try:
            size = {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}
            out = self.image_processor(images=list(images), size=size, return_tensors="pt")
        except ValueError as exc:  # e.g. an aspect ratio over 200:1
            raise InvalidArgument("images", f"the model's image processor refuses them: {exc}") from None
        grid = out["image_grid_thw"]
        tokens = tuple(int(n) for n in (grid.prod(-1) // self.merge**2).tolist())
        return Pictures(out["pixel_values"].float(), grid, tokens)

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, kv: GenericKV) -> torch.Tensor:
        media = getattr(kv, "media", None)
        start = kv.length
        if media is None or start >= media.length:
            offset = media.delta if media is not None else 0
            return self._decode(ids, kv, input_ids=ids[None], position_ids=torch.arange(start, start + ids.numel())[None] + offset)
        end = start + ids.numel()
        if end > media.length:
            raise ValueError(f"a prefill chunk [{start}, {end}) runs past the prompt's {media.length} tokens")
        embeds = self.embed(ids[None])
        image = media.is_image[start:end]
        if bool(image.any()):
            embeds = embeds.clone()
            embeds[0, image] = self._rows(media)[media.row[start:end][image]].to(embeds.dtype)
        return self._decode(ids, kv, inputs_embeds=embeds, position_ids=media.positions[:, None, start:end])

    def _rows(self, media: _Media) -> torch.Tensor:
        """The vision encoder's output for the prompt's pictures, computed once per prompt."""
        if media.rows is None:
            p = media.pictures
            out = self.hf.model.get_image_features(p.pixel_values, p.grid_thw, return_dict=True)
            media.rows = torch.cat(list(out.pooler_output), dim=0)
        return media.rows


def takes_images(model: object) -> bool:
    return isinstance(model, VisionModel)


def attach(kv: GenericKV, prompt_ids: Sequence[int], pictures: Pictures, model: VisionModel) -> None:
    """Give ``kv`` what prefilling a prompt (``prompt_ids``, with the image tokens of ``pictures``) needs:
    positions and image rows."""
    ids = torch.tensor(list(prompt_ids))[None]
    is_image = ids[0] == model.image_token_id
    positions, delta = model.hf.model.get_rope_index(
        input_ids=ids, mm_token_type_ids=is_image.int()[None], image_grid_thw=pictures.grid_thw
    )
    row = torch.cumsum(is_image.long(), 0) - 1
    kv.media = _Media(len(prompt_ids), positions[:, 0, :], int(delta.reshape(-1)[0]), is_image, row, pictures)  # type: ignore[attr-defined]


# -- loading -------------------------------------------------------------------------------------


def load(directory: Path, max_context: int) -> tuple[Any, GenericModel, int]:
    """A VL directory's tokenizer, :class:`VisionModel` (fp32) and weight bytes, checked as :func:`.generic.load` checks."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText

    start = time.perf_counter()
    try:
        hf, info = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)
        image_processor = AutoImageProcessor.from_pretrained(directory)
    except (ValueError, KeyError, OSError, ImportError) as exc:
        raise UnsupportedModel(f"transformers cannot load {directory} as a vision-language model: {exc}") from exc
    return generic.serve(
        directory, hf, info, max_context, lambda hf, context: VisionModel(hf, context, image_processor), start
    )
