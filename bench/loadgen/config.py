"""ghz JSON config files, parsed into a :class:`LoadConfig`.

Field names and defaults follow ghz's ``runner.Config`` (JSON tags): ``call``,
``host``, ``insecure``, ``total`` (200), ``concurrency`` (50), ``connections``
(1), ``rps``, ``duration``, ``max-duration``, ``duration-stop`` (close),
``timeout`` (20s), ``data`` / ``data-file``, ``metadata`` / ``metadata-file``,
``skipFirst``, ``count-errors``, ``name``, ``tags``, ``cacert``/``cert``/``key``/
``cname``, ``output``. Unknown keys are rejected, so a typo never silently
changes what is measured; ghz-only keys that do not change the load
(``proto``, ``protoset``, ``import-paths``, ``format``, ``cpus``, ...) are accepted
and ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.loadgen.templates import Template

#: ghz keys that do not change the load this generator produces.
IGNORED_KEYS = frozenset({
    "proto", "protoset", "import-paths", "format", "cpus", "debug", "async", "enable-compression",
    "connect-timeout", "keepalive", "reflect-metadata", "authority", "skipTLS", "load-schedule",
    "concurrency-schedule", "lb-strategy", "stream-interval", "binary-file", "$comment",
})
KNOWN_KEYS = IGNORED_KEYS | {
    "call", "host", "insecure", "total", "concurrency", "connections", "rps", "qps", "duration",
    "max-duration", "duration-stop", "timeout", "data", "data-file", "metadata", "metadata-file",
    "skipFirst", "skip-first", "count-errors", "name", "tags", "cacert", "cert", "key", "cname", "output",
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(ValueError):
    """The config file cannot be used as it is; the message says which key and why."""


def parse_duration(value: str | int | float, key: str) -> float:
    """Go duration syntax (``"20s"``, ``"1m30s"``, ``"250ms"``, ``"0"``) -> seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    if text in ("", "0"):
        return 0.0
    pos, seconds = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ConfigError(f"{key}: {value!r} is not a duration like '20s', '1m30s' or '250ms'")
    return seconds


def split_call(call: str) -> tuple[str, str]:
    """``pkg.Service.Method`` or ``pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    if "/" in call:
        service, _, method = call.rpartition("/")
    else:
        service, _, method = call.rpartition(".")
    if not service or not method:
        raise ConfigError(f"call: {call!r} is not 'package.Service.Method' or 'package.Service/Method'")
    return service, method


@dataclass(frozen=True)
class LoadConfig:
    call: str
    host: str = ""
    insecure: bool = False
    total: int = 200
    concurrency: int = 50
    connections: int = 1
    rps: float = 0.0
    duration_s: float = 0.0
    max_duration_s: float = 0.0
    duration_stop: str = "close"
    timeout_s: float = 20.0
    data: tuple[Mapping[str, Any], ...] = ({},)
    metadata: Mapping[str, str] = field(default_factory=dict)
    skip_first: int = 0
    count_errors: bool = False
    name: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    cacert: str = ""
    cert: str = ""
    key: str = ""
    cname: str = ""
    output: str = ""
    #: The file it came from (for reports), if any.
    source: str = ""

    @property
    def service(self) -> str:
        return split_call(self.call)[0]

    @property
    def method(self) -> str:
        return split_call(self.call)[1]

    def with_overrides(self, **changes: Any) -> LoadConfig:
        """A copy with the given fields replaced (None values are ignored), re-validated."""
        clean = {k: v for k, v in changes.items() if v is not None}
        return _validated(replace(self, **clean))

    def as_ghz_options(self) -> dict[str, Any]:
        """The ``options`` object of a ghz report (durations in nanoseconds, as Go marshals them)."""
        options: dict[str, Any] = {
            "host": self.host, "call": self.call, "insecure": self.insecure, "total": self.total,
            "concurrency": self.concurrency, "connections": self.connections, "skipFirst": self.skip_first,
            "timeout": int(self.timeout_s * 1e9), "data": list(self.data) if len(self.data) > 1 else self.data[0],
            "metadata": dict(self.metadata) or None, "CPUs": 0, "binary": False,
        }
        if self.rps:
            options["rps"] = self.rps
        if self.duration_s:
            options["duration"] = int(self.duration_s * 1e9)
        if self.name:
            options["name"] = self.name
        return {k: v for k, v in options.items() if v is not None}


def _validated(cfg: LoadConfig) -> LoadConfig:
    split_call(cfg.call)
    if cfg.concurrency < 1:
        raise ConfigError("concurrency: must be at least 1")
    if not 1 <= cfg.connections <= cfg.concurrency:
        raise ConfigError(f"connections: must be in [1, concurrency={cfg.concurrency}] (ghz's rule)")
    if cfg.duration_s <= 0 and cfg.total < cfg.concurrency:
        raise ConfigError(f"total: {cfg.total} is below concurrency {cfg.concurrency} (ghz's rule)")
    if cfg.rps < 0 or cfg.timeout_s < 0 or cfg.skip_first < 0:
        raise ConfigError("rps, timeout and skipFirst must not be negative")
    if cfg.duration_stop not in ("close", "wait", "ignore"):
        raise ConfigError(f"duration-stop: {cfg.duration_stop!r} is not close, wait or ignore")
    if not cfg.data or not all(isinstance(d, Mapping) for d in cfg.data):
        raise ConfigError("data: must be an object or a non-empty array of objects")
    for i, item in enumerate(cfg.data):
        Template.check(item, f"data[{i}]")
    Template.check(dict(cfg.metadata), "metadata")
    return cfg


def _load_json(path: Path, key: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc}") from exc


def config_from_dict(raw: Mapping[str, Any], base_dir: Path = Path("."), source: str = "") -> LoadConfig:
    """Build a :class:`LoadConfig` from a ghz config object (paths relative to ``base_dir``)."""
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not a ghz config key this generator knows")
    if "call" not in raw:
        raise ConfigError("call: missing")
    data = raw.get("data")
    if data is None and raw.get("data-file"):
        data = _load_json(base_dir / raw["data-file"], "data-file")
    metadata = raw.get("metadata")
    if metadata is None and raw.get("metadata-file"):
        metadata = _load_json(base_dir / raw["metadata-file"], "metadata-file")
    if data is None:
        data = {}
    data_items = tuple(data) if isinstance(data, list) else (data,)
    cfg = LoadConfig(
        call=str(raw["call"]),
        host=str(raw.get("host", "")),
        insecure=bool(raw.get("insecure", False)),
        total=int(raw.get("total", 200)),
        concurrency=int(raw.get("concurrency", 50)),
        connections=int(raw.get("connections", 1)),
        rps=float(raw.get("rps", raw.get("qps", 0)) or 0),
        duration_s=parse_duration(raw.get("duration", 0), "duration"),
        max_duration_s=parse_duration(raw.get("max-duration", 0), "max-duration"),
        duration_stop=str(raw.get("duration-stop", "close")).lower(),
        timeout_s=parse_duration(raw.get("timeout", "20s"), "timeout"),
        data=data_items,
        metadata={str(k): str(v) for k, v in (metadata or {}).items()},
        skip_first=int(raw.get("skipFirst", raw.get("skip-first", 0))),
        count_errors=bool(raw.get("count-errors", False)),
        name=str(raw.get("name", "")),
        tags={str(k): str(v) for k, v in (raw.get("tags") or {}).items()},
        cacert=str(raw.get("cacert", "")),
        cert=str(raw.get("cert", "")),
        key=str(raw.get("key", "")),
        cname=str(raw.get("cname", "")),
        output=str(raw.get("output", "")),
        source=source,
    )
    return _validated(cfg)


def load_config(path: str | Path) -> LoadConfig:
    """Read a ghz JSON config file."""
    path = Path(path)
    raw = _load_json(path, "config")
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {path} does not hold a JSON object")
    return config_from_dict(raw, path.parent, str(path))
