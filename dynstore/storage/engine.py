"""One partition's durable state: a write-ahead log in front of a B+tree.

Files, under the partition's directory::

    wal/        the WAL segments (dynstore/storage/wal.py)
    tree.db     the B+tree (dynstore/storage/btree.py), checkpointed at some LSN

A write is a *batch* of ``(key, value)`` pairs, ``value is None`` meaning delete.
It becomes one WAL record (type ``RECORD_BATCH``) whose payload is::

    repeated:  u8 kind (1 put, 2 delete) | u32 key_len | key | [u32 value_len | value]

little-endian, no padding; the WAL's own crc32c covers the payload. A batch is
acknowledged once the record is durable, and only then applied to the tree, in LSN
order, so readers of the tree only ever see durable state.

Read-modify-write (conditional writes, UpdateItem) needs to see writes that are
accepted but not yet durable, or two updates of one key in the same group commit
would both read the old value. ``get_latest`` reads through the pending batches;
``submit`` appends without awaiting. Between the two there is no ``await``, so on
one event loop a read-modify-write is atomic without a lock, and the WAL order is
the order in which decisions were taken.

Recovery opens the tree at its checkpoint LSN and replays the WAL after it. A
checkpoint (copy-on-write in the tree) lets the WAL drop the segments below it.

Faults survived: a crash at any point (the WAL holds every acknowledged batch, the
tree its last checkpoint); a torn WAL tail (truncated by the WAL); a full disk (the
failing batch and every batch after it are refused with DiskFullError, nothing
acknowledged is lost, and the next write reopens the log once space is back);
corruption in the WAL or a page (CorruptionError, never served).

Snapshots (to build a replica or a backup) stream the last checkpoint as chunks::

    magic "DSNP" | u16 version | u16 flags (1 = last chunk) | u64 seq | u64 checkpoint_lsn |
    u32 raw_len | u32 body_len | u32 crc32c(body) | body = zstd(repeated u32 klen | key | u32 vlen | value)

Every chunk is verified (crc32c, then zstd's own frame checksum) before any of it is
used; a chunk out of order, truncated or altered, or a stream that ends before its
last chunk, raises CorruptionError.
"""
from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import crc32c
import zstandard

from dynstore.metrics import StorageMetrics
from dynstore.storage.btree import BTree
from dynstore.storage.errors import ClosedError, CorruptionError, DiskFullError, StorageError
from dynstore.storage.wal import WAL

log = logging.getLogger(__name__)

RECORD_BATCH = 1  # WAL record type of a write batch

_PUT = 1
_DELETE = 2
_U8_U32 = struct.Struct("<BI")
_U32 = struct.Struct("<I")

SNAPSHOT_MAGIC = b"DSNP"
SNAPSHOT_VERSION = 1
_CHUNK_HEADER = struct.Struct("<4sHHQQIII")
_CHUNK_LAST = 1
# A chunk holds about this much uncompressed data: large enough that zstd compresses
# well and the per-chunk overhead vanishes, small enough to verify and ship in one go.
SNAPSHOT_CHUNK_BYTES = 1 << 20
# Replaying this much WAL after the last checkpoint is what recovery may cost; past it
# a checkpoint is taken so restart time stays bounded.
CHECKPOINT_WAL_BYTES = 64 << 20


def encode_batch(ops: Iterable[tuple[bytes, bytes | None]]) -> bytes:
    parts = []
    for key, value in ops:
        if value is None:
            parts.append(_U8_U32.pack(_DELETE, len(key)))
            parts.append(key)
        else:
            parts.append(_U8_U32.pack(_PUT, len(key)))
            parts.append(key)
            parts.append(_U32.pack(len(value)))
            parts.append(value)
    return b"".join(parts)


def decode_batch(payload: bytes) -> list[tuple[bytes, bytes | None]]:
    ops = []
    view = memoryview(payload)
    pos = 0
    end = len(payload)
    try:
        while pos < end:
            kind, klen = _U8_U32.unpack_from(view, pos)
            pos += 5
            key = bytes(view[pos : pos + klen])
            pos += klen
            if kind == _PUT:
                (vlen,) = _U32.unpack_from(view, pos)
                pos += 4
                ops.append((key, bytes(view[pos : pos + vlen])))
                pos += vlen
            elif kind == _DELETE:
                ops.append((key, None))
            else:
                raise CorruptionError(f"unknown batch entry kind {kind}")
    except struct.error as exc:
        raise CorruptionError(f"truncated batch payload: {exc}") from None
    if pos != end:
        raise CorruptionError("batch payload overruns its record")
    return ops


class Engine:
    """The durable state of one partition. Not thread-safe: one event loop owns it."""

    def __init__(self, directory: str, *, backend: str | None = None, sync: str = "auto",
                 cache_bytes: int = 64 << 20, checkpoint_wal_bytes: int = CHECKPOINT_WAL_BYTES,
                 segment_bytes: int | None = None, metrics: StorageMetrics | None = None):
        self.directory = directory
        self._metrics = metrics if metrics is not None else StorageMetrics()
        self._segment_bytes = segment_bytes
        self._cache_bytes = cache_bytes
        self._backend = backend
        self._sync = sync
        self._checkpoint_wal_bytes = checkpoint_wal_bytes
        os.makedirs(directory, exist_ok=True)
        self._pending: dict[int, list[tuple[bytes, bytes | None]]] = {}
        # Newest pending value per key, for get_latest: key -> (lsn, value).
        self._latest: dict[bytes, tuple[int, bytes | None]] = {}
        self._wal: WAL | None = None
        self._open()

    # -- recovery ---------------------------------------------------------------------

    def _open(self) -> None:
        """Open the tree at its checkpoint and replay the WAL after it."""
        self._failure: BaseException | None = None
        self._wal_bytes_since_checkpoint = 0
        self._tree = BTree(os.path.join(self.directory, "tree.db"), cache_bytes=self._cache_bytes,
                           backend=self._backend)
        options = {} if self._segment_bytes is None else {"segment_bytes": self._segment_bytes}
        wal = WAL(os.path.join(self.directory, "wal"), sync=self._sync, backend=self._backend, **options)
        base = self._tree.checkpoint_lsn
        if wal.last_lsn < base:
            # Every record the checkpoint covers may have been dropped with its segment.
            wal.reset(base + 1)
        elif wal.first_lsn > base + 1:
            wal.close()
            raise CorruptionError(
                f"WAL starts at LSN {wal.first_lsn} but the tree is checkpointed at {base}: "
                "records in between are missing", path=os.path.join(self.directory, "wal"))
        for record in wal.read(base + 1):
            if record.type != RECORD_BATCH:
                raise CorruptionError(f"unknown WAL record type {record.type} at LSN {record.lsn}")
            self._tree.write_batch(decode_batch(record.payload))
            self._wal_bytes_since_checkpoint += len(record.payload)
        self.applied_lsn = max(base, wal.last_lsn)
        self._wal = wal

    def _recover_after_failure(self) -> None:
        """Reopen the log after a failed flush; what was never durable is gone."""
        self._wal.close()
        self._tree.close()
        self._pending.clear()
        self._latest.clear()
        self._open()

    # -- writes -----------------------------------------------------------------------

    def submit(self, ops: list[tuple[bytes, bytes | None]]) -> int:
        """Append a batch to the log and return its LSN; it is durable after ``wait``."""
        if self._wal is None:
            raise ClosedError("engine is closed")
        if self._failure is not None:
            self._recover_after_failure()
        payload = encode_batch(ops)
        lsn = self._wal.append(0, RECORD_BATCH, payload)
        self._pending[lsn] = ops
        for key, value in ops:
            self._latest[key] = (lsn, value)
        self._wal_bytes_since_checkpoint += len(payload)
        self._metrics.appended_bytes.inc(len(payload))
        return lsn

    async def wait(self, lsn: int) -> None:
        """Return once batch ``lsn`` is durable and applied to the tree."""
        if lsn <= self.applied_lsn:
            return
        # Callers wait right after their append (``write``, and store.py through it), so
        # this is the batch's time from append to durable.
        started = time.perf_counter()
        try:
            await self._wal.durable(lsn)
        except StorageError as exc:
            self._fail(exc)
            raise
        self._metrics.durable_seconds.observe(time.perf_counter() - started)
        try:
            self._apply_durable()
        except StorageError as exc:
            # The batch is durable in the WAL; the tree in memory is not to be trusted
            # any more, so the next write rebuilds it from its checkpoint and the log.
            self._fail(exc)
            raise
        if self._wal_bytes_since_checkpoint >= self._checkpoint_wal_bytes and not self._pending:
            try:
                self.checkpoint()
            except DiskFullError as exc:
                # Nothing is lost (the WAL still holds every batch); try again later.
                log.warning("checkpoint of %s postponed: %s", self.directory, exc)

    async def write(self, ops: list[tuple[bytes, bytes | None]]) -> int:
        lsn = self.submit(ops)
        await self.wait(lsn)
        return lsn

    def _apply_durable(self) -> None:
        durable = self._wal.durable_lsn
        first = lsn = self.applied_lsn + 1
        started = time.perf_counter()
        while lsn <= durable and lsn in self._pending:
            ops = self._pending.pop(lsn)
            self._tree.write_batch(ops)
            for key, _ in ops:
                newest = self._latest.get(key)
                if newest is not None and newest[0] == lsn:
                    del self._latest[key]
            self.applied_lsn = lsn
            lsn += 1
        if lsn > first:
            # The first waiter woken after a flush applies every batch it made durable:
            # the engine's view of the group commit.
            self._metrics.apply_seconds.observe(time.perf_counter() - started)
            self._metrics.group_commit_batches.observe(lsn - first)

    def _fail(self, exc: BaseException) -> None:
        # Batches after the failed one were decided on state that may never be
        # durable: their waiters fail too (the WAL reports the same failure to them),
        # and the next submit reopens the log and the tree.
        self._failure = exc

    # -- reads ------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """The durable value of ``key``."""
        return self._tree.get(key)

    def get_latest(self, key: bytes) -> bytes | None:
        """The value ``key`` will have once every submitted batch is durable."""
        newest = self._latest.get(key)
        if newest is not None:
            return newest[1]
        return self._tree.get(key)

    def pending_lsn(self, key: bytes) -> int:
        """The LSN of the newest submitted, not yet applied batch that writes ``key``, or 0.

        A decision taken on ``get_latest`` that writes nothing (a failed condition) must
        wait for this LSN before it is answered, or a crash could undo what it saw.
        """
        newest = self._latest.get(key)
        return 0 if newest is None else newest[0]

    def scan(self, start: bytes | None = None, end: bytes | None = None, *, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        return self._tree.scan(start, end, reverse=reverse, limit=limit)

    # -- checkpoints and snapshots ----------------------------------------------------

    def checkpoint(self) -> int:
        """Make the tree durable at ``applied_lsn`` and drop the WAL segments below it."""
        started = time.perf_counter()
        lsn = self.applied_lsn
        self._tree.checkpoint(lsn)
        self._wal.drop_before(lsn + 1)
        self._wal_bytes_since_checkpoint = 0
        self._metrics.checkpoint_seconds.observe(time.perf_counter() - started)
        return lsn

    @contextmanager
    def snapshot(self, chunk_bytes: int = SNAPSHOT_CHUNK_BYTES) -> Iterator[Iterator[bytes]]:
        """Checkpoint, then stream that checkpoint as verified, compressed chunks.

        Writes and further checkpoints may go on while the stream is read.
        """
        lsn = self.checkpoint()
        with self._tree.snapshot() as items:
            yield snapshot_chunks(items, lsn, chunk_bytes)

    @classmethod
    def install_snapshot(cls, directory: str, chunks: Iterable[bytes], *, backend: str | None = None,
                         sync: str = "auto", **options) -> Engine:
        """Build a new partition directory from a snapshot stream and open it."""
        items = verified_items(chunks)
        lsn = next(items)
        return cls.build(directory, items, lsn, backend=backend, sync=sync, **options)

    @classmethod
    def build(cls, directory: str, items: Iterable[tuple[bytes, bytes]], lsn: int, *,
              backend: str | None = None, sync: str = "auto", **options) -> Engine:
        """Build a new partition directory holding ``items`` (sorted by key) at ``lsn``, and open it.

        The tree is bulk loaded and checkpointed at ``lsn`` and the log starts after it, so
        the directory is complete and durable before this returns. A failure (``items``
        may raise, a snapshot stream found corrupt) leaves no tree behind.
        """
        if os.path.exists(os.path.join(directory, "tree.db")):
            raise StorageError(f"{directory} already holds a partition; remove it before building one there")
        os.makedirs(directory, exist_ok=True)
        tree = BTree(os.path.join(directory, "tree.db"), backend=backend)
        try:
            tree.bulk_load(items)
            tree.checkpoint(lsn)
        except BaseException:
            tree.close()
            os.unlink(os.path.join(directory, "tree.db"))
            raise
        tree.close()
        wal = WAL(os.path.join(directory, "wal"), sync=sync, backend=backend)
        wal.reset(lsn + 1)
        wal.close()
        return cls(directory, backend=backend, sync=sync, **options)

    # -- lifecycle --------------------------------------------------------------------

    def stats(self) -> dict:
        return {"applied_lsn": self.applied_lsn, "pending": len(self._pending), "tree": self._tree.stats()}

    def close(self) -> None:
        if self._wal is None:
            return
        self._wal.close()
        self._wal = None
        self._tree.close()


def snapshot_chunks(items: Iterator[tuple[bytes, bytes]], lsn: int, chunk_bytes: int) -> Iterator[bytes]:
    compressor = zstandard.ZstdCompressor(level=3, write_checksum=True)
    seq = 0
    parts: list[bytes] = []
    size = 0

    def chunk(flags: int) -> bytes:
        raw = b"".join(parts)
        body = compressor.compress(raw)
        header = _CHUNK_HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, flags, seq, lsn, len(raw), len(body),
                                    crc32c.crc32c(body))
        return header + body

    for key, value in items:
        parts.append(_U32.pack(len(key)))
        parts.append(key)
        parts.append(_U32.pack(len(value)))
        parts.append(value)
        size += 8 + len(key) + len(value)
        if size >= chunk_bytes:
            yield chunk(0)
            seq += 1
            parts.clear()
            size = 0
    # The last chunk is always sent, empty or not: it marks the end of the stream, and
    # an empty partition still says its LSN.
    yield chunk(_CHUNK_LAST)


def verified_items(chunks: Iterable[bytes]) -> Iterator:
    """Yield the snapshot's LSN, then its (key, value) pairs, verifying every chunk first."""
    decompressor = zstandard.ZstdDecompressor()
    expected_seq = 0
    lsn = None
    last = False
    for chunk in chunks:
        if last:
            raise CorruptionError("snapshot stream goes on after its last chunk")
        if len(chunk) < _CHUNK_HEADER.size:
            raise CorruptionError(f"snapshot chunk {expected_seq} is truncated")
        magic, version, flags, seq, chunk_lsn, raw_len, body_len, crc = _CHUNK_HEADER.unpack_from(chunk)
        body = chunk[_CHUNK_HEADER.size :]
        if magic != SNAPSHOT_MAGIC or version != SNAPSHOT_VERSION:
            raise CorruptionError(f"snapshot chunk {expected_seq} has a bad header")
        if seq != expected_seq or (lsn is not None and chunk_lsn != lsn):
            raise CorruptionError(f"snapshot chunk {seq} arrived where chunk {expected_seq} was expected")
        if len(body) != body_len or crc32c.crc32c(body) != crc:
            raise CorruptionError(f"snapshot chunk {seq} fails its checksum")
        try:
            raw = decompressor.decompress(body, max_output_size=raw_len)
        except zstandard.ZstdError as exc:
            raise CorruptionError(f"snapshot chunk {seq} does not decompress: {exc}") from None
        if len(raw) != raw_len:
            raise CorruptionError(f"snapshot chunk {seq} decompresses to the wrong size")
        if lsn is None:
            lsn = chunk_lsn
            yield lsn
        pos = 0
        while pos < raw_len:
            (klen,) = _U32.unpack_from(raw, pos)
            key = raw[pos + 4 : pos + 4 + klen]
            pos += 4 + klen
            (vlen,) = _U32.unpack_from(raw, pos)
            value = raw[pos + 4 : pos + 4 + vlen]
            pos += 4 + vlen
            yield key, value
        expected_seq += 1
        last = bool(flags & _CHUNK_LAST)
    if not last:
        raise CorruptionError(f"snapshot stream ends after chunk {expected_seq - 1}, before its last chunk")
