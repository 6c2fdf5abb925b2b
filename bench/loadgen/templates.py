"""ghz call-data templates: ``{{.RequestNumber}}``, ``{{newUUID}}``, ``{{randomString 8}}`` ...

ghz renders ``data`` and ``metadata`` as Go templates for every request. This
supports the variables and functions ghz documents (not sprig): enough to make
"new" texts unique per request, which is how the stationary mixes in
``deploy/ghz/`` keep their share of never-seen-before requests over a whole run.
"""

from __future__ import annotations

import random
import re
import string
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

_ACTION = re.compile(r"{{\s*(.*?)\s*}}")
VARIABLES = frozenset({
    "WorkerID", "RequestNumber", "FullyQualifiedName", "MethodName", "ServiceName", "InputName",
    "OutputName", "IsClientStreaming", "IsServerStreaming", "Timestamp", "TimestampUnix",
    "TimestampUnixMilli", "TimestampUnixNano", "UUID",
})


@dataclass(frozen=True)
class CallData:
    """What ghz's ``runner.CallData`` offers a template, for one request."""

    worker_id: str
    request_number: int
    fully_qualified_name: str
    method_name: str
    service_name: str
    input_name: str
    output_name: str
    is_server_streaming: bool

    def variable(self, name: str) -> str:
        now = time.time_ns()
        values: dict[str, object] = {
            "WorkerID": self.worker_id,
            "RequestNumber": self.request_number,
            "FullyQualifiedName": self.fully_qualified_name,
            "MethodName": self.method_name,
            "ServiceName": self.service_name,
            "InputName": self.input_name,
            "OutputName": self.output_name,
            "IsClientStreaming": "false",
            "IsServerStreaming": str(self.is_server_streaming).lower(),
            "Timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "TimestampUnix": now // 1_000_000_000,
            "TimestampUnixMilli": now // 1_000_000,
            "TimestampUnixNano": now,
            "UUID": str(uuid.uuid4()),
        }
        return str(values[name])


def _random_string(length: int) -> str:
    if length <= 0:
        length = random.randint(2, 16)
    return "".join(random.choices(string.ascii_letters + string.digits, k=length))


class Template:
    """Renders the template actions inside the strings of a JSON-like value."""

    @staticmethod
    def _evaluate(action: str, call: CallData | None, where: str) -> str:
        words = action.split()
        head = words[0] if words else ""
        if head.startswith(".") and len(words) == 1 and head[1:] in VARIABLES:
            return call.variable(head[1:]) if call else ""
        if head == "newUUID" and len(words) == 1:
            return str(uuid.uuid4())
        if head == "randomString" and len(words) == 2 and re.fullmatch(r"-?\d+", words[1]):
            return _random_string(int(words[1])) if call else ""
        if head == "randomInt" and len(words) == 3 and all(re.fullmatch(r"-?\d+", w) for w in words[1:]):
            lo, hi = int(words[1]), int(words[2])
            if hi <= lo:
                raise ValueError(f"{where}: randomInt needs min < max in '{{{{{action}}}}}'")
            return str(random.randrange(lo, hi)) if call else ""
        raise ValueError(f"{where}: unsupported template action '{{{{{action}}}}}'")

    @classmethod
    def render_text(cls, text: str, call: CallData | None, where: str = "data") -> str:
        return _ACTION.sub(lambda m: cls._evaluate(m.group(1), call, where), text)

    @classmethod
    def render(cls, value: Any, call: CallData | None, where: str = "data") -> Any:
        """A copy of ``value`` with every string rendered (dicts and lists recursively)."""
        if isinstance(value, str):
            return cls.render_text(value, call, where) if "{{" in value else value
        if isinstance(value, Mapping):
            return {k: cls.render(v, call, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [cls.render(v, call, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    @staticmethod
    def has_actions(value: Any) -> bool:
        if isinstance(value, str):
            return "{{" in value
        if isinstance(value, Mapping):
            return any(Template.has_actions(v) for v in value.values())
        if isinstance(value, list):
            return any(Template.has_actions(v) for v in value)
        return False

    @classmethod
    def check(cls, value: Any, where: str) -> None:
        """Raise :class:`~bench.loadgen.config.ConfigError` for an action this renderer cannot do."""
        from bench.loadgen.config import ConfigError

        try:
            cls.render(value, None, where)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
