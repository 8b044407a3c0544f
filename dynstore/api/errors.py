"""DynamoDB's error types, one class each, as they appear on the wire.

A response body is ``{"__type": "<namespace>#<Name>", "message": "..."}`` with the
HTTP status DynamoDB uses for that type. botocore reads the part after ``#`` as the
error code, so the namespaces below are the ones DynamoDB itself sends.
"""
from __future__ import annotations

_DYNAMODB = "com.amazonaws.dynamodb.v20120810"
_CORAL_VALIDATE = "com.amazon.coral.validate"
_CORAL_SERVICE = "com.amazon.coral.service"


class DynamoDBError(Exception):
    """An expected failure that is reported to the client, never a server crash."""

    namespace = _DYNAMODB
    status = 400
    default_message = ""

    def __init__(self, message: str | None = None, **extra):
        self.message = self.default_message if message is None else message
        # Extra top-level members of the error body (CancellationReasons, Item, ...).
        self.extra = extra
        super().__init__(self.message)

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def type(self) -> str:
        return f"{self.namespace}#{self.name}"

    def body(self) -> dict:
        out = {"__type": self.type, "message": self.message}
        out.update(self.extra)
        return out


class ValidationException(DynamoDBError):
    namespace = _CORAL_VALIDATE


class SerializationException(DynamoDBError):
    namespace = _CORAL_SERVICE


class UnknownOperationException(DynamoDBError):
    namespace = _CORAL_SERVICE


class MissingAuthenticationTokenException(DynamoDBError):
    namespace = _CORAL_SERVICE
    default_message = "Request is missing Authentication Token"


class UnrecognizedClientException(DynamoDBError):
    namespace = _CORAL_SERVICE
    default_message = "The security token included in the request is invalid."


class InvalidSignatureException(DynamoDBError):
    namespace = _CORAL_SERVICE
    default_message = (
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method. "
        "Consult the service documentation for details."
    )


class IncompleteSignatureException(DynamoDBError):
    namespace = _CORAL_SERVICE


class AccessDeniedException(DynamoDBError):
    namespace = _CORAL_SERVICE


class RequestEntityTooLargeException(DynamoDBError):
    namespace = _CORAL_SERVICE
    status = 413
    default_message = "Request must be smaller than 16777216 bytes for the operation"


class ResourceNotFoundException(DynamoDBError):
    default_message = "Requested resource not found"


class ResourceInUseException(DynamoDBError):
    pass


class LimitExceededException(DynamoDBError):
    pass


class ConditionalCheckFailedException(DynamoDBError):
    default_message = "The conditional request failed"


class ProvisionedThroughputExceededException(DynamoDBError):
    default_message = (
        "The level of configured provisioned throughput for the table was exceeded. "
        "Consider increasing your provisioning level with the UpdateTable API."
    )


class ThrottlingException(DynamoDBError):
    namespace = "com.amazon.coral.availability"
    default_message = "Throughput exceeds the current capacity for one or more global secondary indexes."


class RequestLimitExceeded(DynamoDBError):
    pass


class ItemCollectionSizeLimitExceededException(DynamoDBError):
    default_message = "Item collection size limit exceeded"


class TransactionCanceledException(DynamoDBError):
    pass


class TransactionConflictException(DynamoDBError):
    pass


class TransactionInProgressException(DynamoDBError):
    pass


class IdempotentParameterMismatchException(DynamoDBError):
    pass


class InternalServerError(DynamoDBError):
    status = 500
    default_message = "Internal server error"


class ServiceUnavailable(DynamoDBError):
    namespace = "com.amazon.coral.availability"
    status = 503
    default_message = "Service Unavailable"


class BadRequestException(DynamoDBError):
    """Not one of DynamoDB's types: its load balancers refuse a request that is not valid
    HTTP/1.1 (a garbled request line, a header section past its size limit) before DynamoDB
    sees it. dynstore answers such a request in DynamoDB's error format and closes the
    connection, since the rest of the byte stream cannot be trusted."""

    namespace = _CORAL_SERVICE
    default_message = "Malformed HTTP request"


# The rest of DynamoDB's error types from its service model (backups, point-in-time recovery,
# global tables, exports, imports, resource policies): every ``__type`` a client may receive
# has its class here, so the server and dynstore.client name each failure the same way.


class TableAlreadyExistsException(DynamoDBError):
    pass


class TableNotFoundException(DynamoDBError):
    pass


class TableInUseException(DynamoDBError):
    pass


class IndexNotFoundException(DynamoDBError):
    pass


class BackupInUseException(DynamoDBError):
    pass


class BackupNotFoundException(DynamoDBError):
    pass


class ContinuousBackupsUnavailableException(DynamoDBError):
    pass


class PointInTimeRecoveryUnavailableException(DynamoDBError):
    pass


class InvalidRestoreTimeException(DynamoDBError):
    pass


class GlobalTableAlreadyExistsException(DynamoDBError):
    pass


class GlobalTableNotFoundException(DynamoDBError):
    pass


class ReplicaAlreadyExistsException(DynamoDBError):
    pass


class ReplicaNotFoundException(DynamoDBError):
    pass


class ReplicatedWriteConflictException(DynamoDBError):
    pass


class ExportConflictException(DynamoDBError):
    pass


class ExportNotFoundException(DynamoDBError):
    pass


class InvalidExportTimeException(DynamoDBError):
    pass


class ImportConflictException(DynamoDBError):
    pass


class ImportNotFoundException(DynamoDBError):
    pass


class DuplicateItemException(DynamoDBError):
    pass


class PolicyNotFoundException(DynamoDBError):
    pass
