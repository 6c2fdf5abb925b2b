"""A tiny random-weight Qwen2-VL built from a config: no hub, a few MB, loads in a second.

The directory is what a real Qwen2-VL checkpoint holds: config.json (with its
``vision_config``), safetensors, a tokenizer with the vision control tokens and
Qwen2-VL's chat template, and ``preprocessor_config.json`` for the image
processor (sized so that a test picture becomes a handful of image tokens).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from tests.support.tiny_model import _CORPUS

# Qwen2-VL-Instruct's chat template (images and videos; the "Picture N:" labels are off unless asked).
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]

#: Image processor bounds: at most 8x8 patches of 14 pixels (16 image tokens after the 2x2 merge), at least 2x2.
MAX_PIXELS = 112 * 112
MIN_PIXELS = 28 * 28


def build_tiny_vl_model(target: Path, *, seed: int = 0, model_type: str = "qwen2_vl") -> Path:
    """Write a tiny Qwen2-VL (or, with ``model_type="qwen2_5_vl"``, Qwen2.5-VL) + tokenizer + image processor to ``target``.

    Qwen2.5-VL's vision tower differs (windowed attention with full-attention blocks, SwiGLU MLPs, its own
    output width); its prompt, image processor and M-RoPE are Qwen2-VL's.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    fast = _tokenizer(target)
    ids = {t: fast.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = 16
    config = AutoConfig.for_model(
        model_type,
        text_config=dict(
            vocab_size=len(fast),
            hidden_size=4 * head_dim,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            initializer_range=0.3,
            tie_word_embeddings=False,
            eos_token_id=fast.eos_token_id,
            pad_token_id=fast.pad_token_id,
            bos_token_id=None,
        ),
        vision_config=_vision_config(model_type, text_hidden=4 * head_dim),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).eval()
    model.save_pretrained(target)
    (target / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "Qwen2VLImageProcessor",
                "do_resize": True,
                "do_rescale": True,
                "do_normalize": True,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "patch_size": 14,
                "merge_size": 2,
                "temporal_patch_size": 2,
                "min_pixels": MIN_PIXELS,
                "max_pixels": MAX_PIXELS,
            }
        )
    )
    return target


def _vision_config(model_type: str, text_hidden: int) -> dict[str, Any]:
    common = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, initializer_range=0.3)
    if model_type == "qwen2_vl":
        return dict(depth=1, embed_dim=32, hidden_size=text_hidden, num_heads=2, mlp_ratio=2, **common)
    if model_type == "qwen2_5_vl":  # one windowed block (56-pixel windows: 2x2 merged patches) and one full one
        return dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=text_hidden,
            window_size=56, fullatt_block_indexes=[1], **common,
        )
    raise ValueError(f"no tiny vision config for {model_type!r}")


def _tokenizer(target: Path) -> Any:
    """The tiny byte-level BPE tokenizer with Qwen2-VL's control tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    target.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([*_CORPUS, "What is in this picture? Describe the image."] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.chat_template = QWEN2_VL_TEMPLATE
    fast.save_pretrained(target)
    return fast


def png(color: tuple[int, int, int], size: tuple[int, int] = (60, 60), mark: int = 0) -> bytes:
    """A small PNG of one color (``mark`` > 0 draws a white square that many pixels wide in a corner)."""
    from PIL import Image

    img = Image.new("RGB", size, color)
    for x in range(mark):
        for y in range(mark):
            img.putpixel((x, y), (255, 255, 255))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()
