"""The exceptions dynstore.client raises, one class per DynamoDB ``__type``.

A DynamoDB error response is ``{"__type": "<namespace>#<Name>", "message": "..."}`` (some
services spell it ``Message``) with a 4xx or 5xx status. The client raises the class of
dynstore/api/errors.py named ``<Name>``: the server raises the same classes, so
``except ConditionalCheckFailedException`` reads the same on both sides. Each raised error
carries ``message``, ``status`` (the HTTP status received), ``request_id`` and ``extra``: the
other members of the body as sent (``CancellationReasons``, ``Item`` in DynamoDB JSON, ...).

Failures that are not DynamoDB error types have their own classes here: a body whose
checksum does not match (``ChecksumMismatchError``), an error type this client does not know
(``UnknownServiceError``), and batch requests the server kept leaving unprocessed
(``UnprocessedError``). Network failures are the built-in ``OSError`` family
(``ConnectionError``, ``TimeoutError``), raised once retries are spent.
"""
from __future__ import annotations

import orjson

from dynstore.api import errors as _api
from dynstore.api.errors import *  # noqa: F401,F403 -- every DynamoDB type, importable from here
from dynstore.api.errors import DynamoDBError, InternalServerError, ServiceUnavailable


class UnknownServiceError(DynamoDBError):
    """An error response whose ``__type`` names no DynamoDB error this client knows
    (a newer service, or a proxy in between); ``wire_type`` holds what was sent."""

    def __init__(self, message: str | None = None, *, wire_type: str = "", **extra):
        super().__init__(message, **extra)
        self.wire_type = wire_type


class ChecksumMismatchError(Exception):
    """The response body does not match its ``x-amz-crc32`` header: it was damaged on the
    way, so it is retried like a server error and never parsed."""


class UnprocessedError(Exception):
    """A batch request still had unprocessed work after every retry; ``unprocessed`` holds
    it in DynamoDB's form (``{table: [requests or keys]}``) so that the caller can resubmit
    it later. Lower the request rate or raise the table's capacity."""

    def __init__(self, message: str, unprocessed: dict):
        super().__init__(message)
        self.unprocessed = unprocessed


ERRORS_BY_NAME: dict[str, type[DynamoDBError]] = {
    cls.__name__: cls
    for cls in vars(_api).values()
    if isinstance(cls, type) and issubclass(cls, DynamoDBError) and cls is not DynamoDBError
}

# Errors that are worth the same request again after a pause: the server shed load, not the
# request itself. Any 5xx is retried too (see ``is_transient``).
THROTTLING = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"})


def from_response(status: int, body: bytes, request_id: str | None) -> DynamoDBError:
    """The exception for an error response."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        # Not DynamoDB's JSON (an HTML page from a proxy, the 404 text of an unknown
        # operation): the status is all there is to go on.
        cls = ServiceUnavailable if status == 503 else InternalServerError if status >= 500 else UnknownServiceError
        error = cls(body[:200].decode("utf-8", "replace"))
    else:
        wire_type = str(doc.pop("__type", ""))
        message = doc.pop("message", None)
        if message is None:
            message = doc.pop("Message", "")
        cls = ERRORS_BY_NAME.get(wire_type.rpartition("#")[2])
        if cls is None:
            error = UnknownServiceError(message, wire_type=wire_type, **doc)
        else:
            error = cls(message, **doc)
    error.status = status
    error.request_id = request_id
    return error


# What a request may fail with that ``is_transient`` then sorts into retry or give up.
TRANSIENT = (DynamoDBError, ChecksumMismatchError, OSError)


def is_transient(error: BaseException) -> bool:
    """Whether sending the same request again may succeed."""
    if isinstance(error, DynamoDBError):
        return error.status >= 500 or error.name in THROTTLING
    return isinstance(error, (ChecksumMismatchError, OSError))
