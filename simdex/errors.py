"""Domain errors shared by the server and the clients. One class per gRPC status; one place maps them.

Import-light on purpose (no grpc import): the in-process client raises the same classes the remote one does.
"""
from __future__ import annotations


class SimdexError(Exception):
    """Base of every error simdex raises on purpose. `code` is the gRPC status name it travels as."""

    code = "UNKNOWN"

    def __init__(self, message: str, item: int | None = None):
        super().__init__(message)
        self.message = message
        self.item = item  # index of the input item at fault (a bad image in a batch), None for the whole request


class InvalidArgument(SimdexError):
    code = "INVALID_ARGUMENT"


class NotFound(SimdexError):
    code = "NOT_FOUND"


class AlreadyExists(SimdexError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(SimdexError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(SimdexError):
    code = "RESOURCE_EXHAUSTED"


class Unauthenticated(SimdexError):
    code = "UNAUTHENTICATED"


class PermissionDenied(SimdexError):
    code = "PERMISSION_DENIED"


class Unavailable(SimdexError):
    code = "UNAVAILABLE"


class DeadlineExceeded(SimdexError):
    code = "DEADLINE_EXCEEDED"


class Internal(SimdexError):
    code = "INTERNAL"


BY_CODE: dict[str, type[SimdexError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, ResourceExhausted,
        Unauthenticated, PermissionDenied, Unavailable, DeadlineExceeded, Internal,
    )
}


def from_code(code: str, message: str, item: int | None = None) -> SimdexError:
    """The error class for a gRPC status name (unknown names give the base class)."""
    cls = BY_CODE.get(code, SimdexError)
    err = cls(message, item)
    if cls is SimdexError:
        err.code = code
    return err


def not_a_json_object(what: str, got, why: str = "", item: int | None = None) -> InvalidArgument:
    """The error for a field that holds a JSON object as text (filter, metadata, labels, params) when it does not:
    it says what the field must be and shows what came (the start of the text, or the JSON type it parsed to), so a
    caller that sent an object's string form ("[object Object]") sees why."""
    shown = repr(got[:80]) if isinstance(got, str) else type(got).__name__
    return InvalidArgument(f"{what} must be a JSON object encoded as text, got {shown}{f' ({why})' if why else ''}",
                           item=item)
