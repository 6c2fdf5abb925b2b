"""The model's own generation settings: decoding defaults and the tokens that end a reply.

Both come from the model's files, never from a chat format written into the code:
``generation_config.json`` (copied into every converted copy with the tokenizer
files), ``config.json``, the tokenizer and its chat template. A model saved with
other settings is another model to the cache: the defaults are digested into
the prompts revision (:func:`.prompts.revision`) next to the weights' revision.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inference_svc.core import prompts
from inference_svc.core.decoding import DEFAULTED
from reprise.domain import Decoding

log = logging.getLogger(__name__)

GENERATION_CONFIG = "generation_config.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    return doc if isinstance(doc, dict) else {}


def _number(doc: Mapping[str, Any], name: str, ok: Any) -> Any:
    """``doc[name]`` when it is a finite number that ``ok`` accepts; ``None`` (with a warning) otherwise."""
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not ok(value):
        log.warning("ignoring %s=%r in the model's generation config: out of range", name, value)
        return None
    return value


def defaults_from(doc: Mapping[str, Any]) -> Decoding:
    """The decoding defaults a generation config sets (:data:`.decoding.DEFAULTED` fields; others unset).

    Values this service would refuse in a request are ignored with a warning, and values that
    switch a filter off (``top_k`` 0, ``top_p`` 1, ``min_p`` 0, ``repetition_penalty`` 1) are left
    unset, so a config that only restates the library defaults changes nothing.
    """
    top_k = _number(doc, "top_k", lambda v: v >= 0 and float(v).is_integer())
    top_p = _number(doc, "top_p", lambda v: 0.0 < v <= 1.0)
    min_p = _number(doc, "min_p", lambda v: 0.0 <= v <= 1.0)
    penalty = _number(doc, "repetition_penalty", lambda v: 0.0 < v <= 2.0)
    return Decoding(
        top_k=int(top_k) if top_k else None,
        top_p=float(top_p) if top_p is not None and top_p < 1.0 else None,
        min_p=float(min_p) if min_p else None,
        repetition_penalty=float(penalty) if penalty is not None and penalty != 1.0 else None,
    )


def read_defaults(directory: Path, fallback: Mapping[str, Any] | None = None) -> Decoding:
    """The decoding defaults of the model in ``directory``; ``fallback`` fills what its file lacks.

    (The packaged default model's GGUF carries no generation config: its publisher's settings are
    the fallback, :data:`.model_source.DEFAULT_GENERATION_CONFIG`.)
    """
    doc = {**(fallback or {}), **_read(directory / GENERATION_CONFIG)}
    return defaults_from(doc)


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def end_of_turn_ids(
    tokenizer: Any, directory: Path, vocab: int, fallback: Mapping[str, Any] | None = None
) -> frozenset[int]:
    """Every token that ends a reply: the ``eos_token_id`` of the generation config (and of ``fallback``)
    and of the model config, the tokenizer's end-of-sequence token, and the token the chat template
    closes an assistant turn with.

    The template's token matters where the configs name only the end of a document (Llama 3 base's
    ``<|end_of_text|>``) while the chat turn ends with another.
    """
    found = set(_ids(_read(directory / GENERATION_CONFIG).get("eos_token_id")))
    found |= set(_ids((fallback or {}).get("eos_token_id")))
    found |= set(_ids(_read(directory / "config.json").get("eos_token_id")))
    found |= set(_ids(getattr(tokenizer, "eos_token_id", None)))
    turn_end = prompts.turn_end_id(tokenizer)
    if turn_end is not None:
        found.add(turn_end)
    ids = frozenset(i for i in found if 0 <= i < vocab)
    if not ids:
        log.warning("the model names no end-of-turn token: replies end only at max_new_tokens or a stop string")
    return ids


def describe(defaults: Decoding) -> dict[str, float | int]:
    """The defaults that are set, by field name (for the prompts revision and the log)."""
    return {name: getattr(defaults, name) for name in DEFAULTED if getattr(defaults, name) is not None}
