"""Tiny random-weight causal LMs with a locally trained tokenizer: no hub, no 491 MB download.

They go through the same loading path as a real model (a Hugging Face
directory with config, safetensors and tokenizer files). Their replies are
gibberish, which is fine: tests check plumbing, caching, KV reuse, and that the
runtime computes what transformers computes, not wit. :func:`build_tiny_model`
is the Qwen2 most tests use; :func:`build_tiny_causal_lm` builds any architecture
transformers has from a config given in code (Llama with biases, Qwen3, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The real Qwen2 chat template (ChatML), reduced to what the services use.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Positive Negative Positive Negative sentiment classifier answer with exactly one word",
    "You are a helpful assistant. Answer briefly. The user says hello and asks a question.",
    "I love this phone, the battery lasts all day. I hate waiting, the service was terrible.",
    "这个手机很好用，电池很耐用。服务太差了，我不喜欢。今天天气不错。",
    "What is the capital of France? Paris is the capital. Tell me a joke about cats.",
    "0123456789 !?.,;:'\"()-_/ abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_model(target: Path, *, seed: int = 0, head_dim: int = 16) -> Path:
    """Write a tiny Qwen2ForCausalLM + tokenizer directory to ``target`` and return it.

    ``head_dim=64`` (the real model's) takes the C step's vectorized attention, which needs a multiple of 64.
    """
    return build_tiny_causal_lm(target, "qwen2", seed=seed, head_dim=head_dim, tie_word_embeddings=True)


def build_tiny_causal_lm(target: Path, model_type: str, *, seed: int = 0, head_dim: int = 16, **config: Any) -> Path:
    """Write a tiny random causal LM of ``model_type`` (any transformers has) + tokenizer to ``target``.

    The shape is :func:`build_tiny_model`'s (2 layers, 4 query heads over 2 KV heads, ``4 * head_dim``
    wide); ``config`` overrides or adds any config field (``tie_word_embeddings``, ``mlp_bias``,
    ``rope_scaling``, ...). The weights depend only on ``seed`` and the config.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fast = _tokenizer(target)
    fields: dict[str, Any] = dict(
        vocab_size=len(fast),
        hidden_size=4 * head_dim,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        # Wide init so replies vary with the input (tests compare replies across requests).
        initializer_range=0.3,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
    )
    if model_type in ("qwen3", "llama", "mistral"):
        fields["head_dim"] = head_dim  # their configs default to 128
    fields.update(config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **fields)).eval()
    if any(n.endswith("bias") for n, _ in model.named_parameters()):
        with torch.no_grad():  # transformers initialises biases to zero: make them count
            for name, param in model.named_parameters():
                if name.endswith("bias"):
                    param.normal_(0.0, 0.3)
    model.save_pretrained(target)
    return target


def _tokenizer(target: Path) -> Any:
    """Train the tiny byte-level BPE tokenizer (with the ChatML template) and save it to ``target``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    target.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(target)
    return fast
