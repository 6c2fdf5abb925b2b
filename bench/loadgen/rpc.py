"""The method under load: found by server reflection (as ghz does), or in the local protos.

Also knows how to read a Reprise response's cache status: any field of the
output message whose type has an enum field ``status`` of type ``*CacheStatus``
(``cache`` in Classify/Chat/ChatStream, ``sentiment_cache`` and ``reply_cache``
in Analyze). Other services' methods work too; they just report no cache status.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from bench.loadgen.config import ConfigError, LoadConfig

#: Modules whose descriptors serve as the fallback when the server has no reflection.
LOCAL_PROTO_MODULES = (
    "reprise.gateway.v1.gateway_pb2",
    "reprise.cache.v1.cache_pb2",
    "reprise.inference.v1.inference_pb2",
)

#: Python status names -> the names Go's codes.Code.String() prints (what ghz reports).
GO_CODE = {
    "OK": "OK", "CANCELLED": "Canceled", "UNKNOWN": "Unknown", "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded", "NOT_FOUND": "NotFound", "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied", "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition", "ABORTED": "Aborted", "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented", "INTERNAL": "Internal", "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss", "UNAUTHENTICATED": "Unauthenticated",
}


@dataclass(frozen=True)
class Method:
    service: str
    name: str
    input_class: type[Message]
    output_class: type[Message]
    server_streaming: bool
    #: Output fields holding a CacheInfo-like message, in declaration order.
    cache_fields: tuple[str, ...]
    #: CacheStatus enum value -> short name ("MISS", "EXACT", ...).
    status_names: Mapping[int, str]
    input_name: str
    output_name: str

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def full_name(self) -> str:
        return f"{self.service}.{self.name}"

    def encode(self, data: Mapping[str, Any], where: str = "data") -> bytes:
        """JSON-like call data -> serialized request (proto field names or lowerCamel, like protojson)."""
        try:
            return json_format.ParseDict(dict(data), self.input_class()).SerializeToString()
        except json_format.ParseError as exc:
            raise ConfigError(f"{where}: not a valid {self.input_name}: {exc}") from None

    def cache_status(self, response: Message) -> dict[str, str]:
        """{field: status} for the cache fields set in ``response`` (empty when none)."""
        out = {}
        for name in self.cache_fields:
            if response.HasField(name):
                status = getattr(response, name).status
                out[name] = self.status_names.get(status, str(status))
        return out


def _cache_fields(output: Descriptor) -> tuple[tuple[str, ...], dict[int, str]]:
    fields, names = [], {}
    for f in output.fields:
        if f.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        status = f.message_type.fields_by_name.get("status")
        if status is not None and status.enum_type is not None and status.enum_type.name.endswith("CacheStatus"):
            fields.append(f.name)
            prefix = "CACHE_STATUS_"
            names = {v.number: v.name.removeprefix(prefix) for v in status.enum_type.values}
    return tuple(fields), names


def _from_descriptor(method: MethodDescriptor) -> Method:
    if method.client_streaming:
        raise ConfigError(f"call: {method.full_name} is client-streaming; only unary and server-streaming are supported")
    fields, names = _cache_fields(method.output_type)
    return Method(
        service=method.containing_service.full_name,
        name=method.name,
        input_class=message_factory.GetMessageClass(method.input_type),
        output_class=message_factory.GetMessageClass(method.output_type),
        server_streaming=method.server_streaming,
        cache_fields=fields,
        status_names=names,
        input_name=method.input_type.full_name,
        output_name=method.output_type.full_name,
    )


def _find(pool: descriptor_pool.DescriptorPool, service: str, name: str) -> Method:
    svc = pool.FindServiceByName(service)
    method = svc.methods_by_name.get(name)
    if method is None:
        raise ConfigError(f"call: {service} has no method {name!r} (it has {', '.join(svc.methods_by_name)})")
    return _from_descriptor(method)


def channel_credentials(cfg: LoadConfig) -> grpc.ChannelCredentials | None:
    """None for plaintext (``insecure``), else TLS from ``cacert``/``cert``/``key``."""
    if cfg.insecure:
        return None

    def read(path: str) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return grpc.ssl_channel_credentials(read(cfg.cacert), read(cfg.key), read(cfg.cert))


def channel_options(cfg: LoadConfig) -> list[tuple[str, Any]]:
    # A local subchannel pool per channel: otherwise grpc shares one TCP connection between
    # channels to the same target, and `connections` would not mean what ghz means by it.
    options: list[tuple[str, Any]] = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]
    if cfg.cname:
        options.append(("grpc.ssl_target_name_override", cfg.cname))
    return options


def resolve_method(cfg: LoadConfig, *, reflection: bool = True, timeout_s: float = 10.0) -> Method:
    """Look ``cfg.call`` up by server reflection; without reflection, in the local protos."""
    service, name = cfg.service, cfg.method
    if reflection:
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )

        creds = channel_credentials(cfg)
        channel = (grpc.insecure_channel(cfg.host, options=channel_options(cfg)) if creds is None
                   else grpc.secure_channel(cfg.host, creds, options=channel_options(cfg)))
        with channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=timeout_s)
                pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
                return _find(pool, service, name)
            except grpc.FutureTimeoutError:
                raise ConfigError(f"host: cannot connect to {cfg.host} within {timeout_s:.0f}s") from None
            except (grpc.RpcError, KeyError):
                pass  # no reflection service, or it does not know the service: try the local protos
    for module in LOCAL_PROTO_MODULES:
        importlib.import_module(module)
    try:
        return _find(descriptor_pool.Default(), service, name)
    except KeyError:
        raise ConfigError(f"call: service {service!r} is unknown to the server's reflection and to the local protos") from None
