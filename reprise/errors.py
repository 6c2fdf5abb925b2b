"""The exception root every service raises from its core, and the gRPC status each maps to.

Core code raises these and never imports ``grpc``: ``code`` is the name of a
``grpc.StatusCode``, and one interceptor (:mod:`reprise.rpc.interceptors`)
turns the exception into that status. Messages are shown to callers, so they
say what is wrong and never carry internals.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Root of every error a Reprise service reports to its caller."""

    code: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """The request is malformed: say which field and why."""

    code = "INVALID_ARGUMENT"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


class NotFound(ServiceError):
    code = "NOT_FOUND"


class Unauthenticated(ServiceError):
    code = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    code = "PERMISSION_DENIED"


class Unavailable(ServiceError):
    """Not ready yet, draining, or a dependency is down; the caller may retry."""

    code = "UNAVAILABLE"


class ResourceExhausted(ServiceError):
    """Over capacity (queue full, too many requests in flight); retry later."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(ServiceError):
    code = "DEADLINE_EXCEEDED"


class Cancelled(ServiceError):
    code = "CANCELLED"


_BY_CODE: dict[str, type[ServiceError]] = {
    cls.code: cls
    for cls in (NotFound, Unauthenticated, PermissionDenied, Unavailable, ResourceExhausted, DeadlineExceeded, Cancelled)
}


def from_status(code_name: str, message: str) -> ServiceError:
    """The error to re-raise for a status a downstream service returned (keeps the code)."""
    if code_name == "INVALID_ARGUMENT":
        err: ServiceError = ServiceError(message)
        err.code = "INVALID_ARGUMENT"
        return err
    cls = _BY_CODE.get(code_name)
    if cls is None:
        err = ServiceError(message)
        err.code = code_name if code_name else "INTERNAL"
        return err
    return cls(message)
