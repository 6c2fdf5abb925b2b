"""The seed-style sentiment baseline: transformers fp32, ``generate(max_new_tokens=10)``, parse the text.

This is what the issue calls the approach users copy today: no prefix cache,
no label scoring, one request at a time. It loads the same fp32 copy of the
default model that the serving formats are converted from.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

#: The seed's zero-shot prompt, as the seed shipped it.
SEED_SYSTEM_PROMPT = (
    "You are a sentiment classifier. Read the user's text (English or Chinese) and answer with "
    "exactly one word: Positive or Negative."
)


class GenerateBaseline:
    def __init__(self, hf_dir: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        self.system = SEED_SYSTEM_PROMPT

    @torch.inference_mode()
    def classify(self, text: str) -> tuple[bool | None, float]:
        """(positive?, seconds); None when the reply names neither label."""
        start = time.perf_counter()
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": text}]
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = self.model.generate(**ids, max_new_tokens=10, do_sample=False)
        reply = self.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).lower()
        seconds = time.perf_counter() - start
        if "positive" in reply and "negative" not in reply:
            return True, seconds
        if "negative" in reply:
            return False, seconds
        return None, seconds
