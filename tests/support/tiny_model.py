"""A tiny random-weight Qwen2 model with a locally trained tokenizer: no hub, no 491 MB download.

It goes through the same loading path as a real model (a Hugging Face
directory with config, safetensors and tokenizer files). Its replies are
gibberish, which is fine: tests check plumbing, caching and KV reuse, not wit.
"""

from __future__ import annotations

from pathlib import Path

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
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

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

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(fast),
        hidden_size=4 * head_dim,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        # Wide init so replies vary with the input (tests compare replies across requests).
        initializer_range=0.3,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config).eval()
    model.save_pretrained(target)
    return target
