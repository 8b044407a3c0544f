"""Typed errors of the storage layer.

Each says what went wrong and where, so an operator can act on it: a corrupt
record names its file and offset, a full disk names the directory.
"""


class StorageError(Exception):
    """Base class of every expected storage failure."""


class CorruptionError(StorageError):
    """A checksum did not match: the data on disk is not what was written.

    The replica holding it must be repaired from its peers; it is never served.
    """

    def __init__(self, message: str, path: str | None = None, offset: int | None = None):
        self.path = path
        self.offset = offset
        where = f" ({path} at offset {offset})" if path is not None else ""
        super().__init__(message + where)


class DiskFullError(StorageError):
    """The file system has no space left; nothing was acknowledged, nothing corrupted.

    Free space (or grow the volume) and retry: the engine works again as it is.
    """


class ClosedError(StorageError):
    """The WAL or tree was used after close()."""
