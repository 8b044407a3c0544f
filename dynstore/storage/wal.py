"""The write-ahead log: the replicated Paxos log of one partition.

``WAL`` is the public face; the log itself is native/wal.c (through the cffi module
``dynstore.storage._wal``) or the pure-Python reference in ``wal_ref.py``, chosen by
``DYNSTORE_STORAGE`` or the ``backend=`` argument. Both write the same files; the format
and the faults survived are described in wal_ref.py and native/wal.c.

Appends never wait for the disk: a flusher thread gathers everything appended since its
last flush into one write and one fdatasync (group commit). Callers learn of durability
by waiting: ``wait_durable()`` from plain code (the wait releases the GIL), or
``await durable()`` / ``when_durable()`` from asyncio, which watch the log's eventfd with
``loop.add_reader`` so no thread blocks. One event loop per log: the loop that first waits
owns the eventfd until it stops.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import threading
from typing import Iterable, Iterator

from dynstore import limits
from dynstore.storage.backend import BACKENDS, default_backend
from dynstore.storage.errors import ClosedError, CorruptionError, DiskFullError, StorageError
from dynstore.storage.wal_ref import RECORD_HEADER, Record, ReferenceWAL

__all__ = ["WAL", "Record", "SYNC_MODES"]

SYNC_MODES = ("auto", "uring", "fdatasync")


class WAL:
    """A write-ahead log in `directory`; see the module docstring for how to wait on it.

    sync: "uring" submits each batch as a linked io_uring write and fdatasync, "fdatasync"
    uses pwrite and fdatasync, "auto" takes pwrite and fdatasync (the faster of the two here:
    native/wal.c says why). The path in use is ``io_path``. LSNs count from 1; ``last_lsn``
    is the last appended (0 in a new log, n-1 after reset(n)), ``first_lsn`` the first one
    still held (0 when it holds none).
    The directory is created if missing.
    """

    def __init__(self, directory, *, sync: str = "auto", segment_bytes: int = limits.WAL_SEGMENT_BYTES_DEFAULT,
                 backend: str | None = None):
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {SYNC_MODES}, not {sync!r}")
        if segment_bytes < limits.WAL_SEGMENT_BYTES_MIN:
            raise ValueError(f"segment_bytes must be at least WAL_SEGMENT_BYTES_MIN={limits.WAL_SEGMENT_BYTES_MIN}")
        backend = backend or default_backend()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        self.backend = backend
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        if backend == "native":
            self._log = NativeWAL(self.directory, sync, segment_bytes)
        else:
            self._log = ReferenceWAL(self.directory, sync, segment_bytes)
        self._waiters: list[tuple[int, int, object]] = []  # heap of (lsn, seq, callback)
        self._waiter_seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop watching the eventfd
        self._closed = False

    # --- state ----------------------------------------------------------------------------

    @property
    def io_path(self) -> str:
        """"uring" or "fdatasync": how batches are made durable."""
        return self._log.io_path

    @property
    def first_lsn(self) -> int:
        return self._log.first_lsn()

    @property
    def last_lsn(self) -> int:
        return self._log.last_lsn()

    @property
    def durable_lsn(self) -> int:
        return self._log.durable_lsn()

    # --- appending ------------------------------------------------------------------------

    def append(self, term: int, type: int, payload: bytes) -> int:
        """Queue one record for the next group commit; returns its LSN."""
        return self._log.append(term, type, payload)

    def append_many(self, entries: Iterable[tuple[int, int, bytes]]) -> int:
        """Queue records (term, type, payload) with consecutive LSNs; returns the last LSN."""
        entries = list(entries)
        if not entries:
            raise ValueError("append_many needs at least one record")
        return self._log.append_many(entries)

    def wait_durable(self, lsn: int, timeout: float | None = None):
        """Block (GIL released) until lsn is durable; TimeoutError, DiskFullError, StorageError."""
        self._log.wait_durable(lsn, timeout)

    def event_fd(self) -> int:
        """An eventfd that becomes readable whenever durable_lsn advances or the log fails."""
        return self._log.event_fd()

    def ack_event(self):
        """Drain the eventfd after reacting to it."""
        self._log.ack_event()

    async def durable(self, lsn: int):
        """Wait in asyncio until lsn is durable; raises as wait_durable does."""
        if lsn <= self._log.durable_lsn():
            return
        future = asyncio.get_running_loop().create_future()

        def settle(failure):
            if not future.done():
                future.set_result(None) if failure is None else future.set_exception(failure)
        self.when_durable(lsn, settle)
        await future

    def when_durable(self, lsn: int, callback) -> None:
        """Call ``callback(None)`` on this event loop once lsn is durable, or ``callback(error)``
        (DiskFullError, StorageError, ClosedError) if the log fails or closes first; never
        from within this call."""
        if lsn > self._log.last_lsn():
            raise ValueError(f"LSN {lsn} was never appended (last is {self._log.last_lsn()})")
        loop = asyncio.get_running_loop()
        if self._closed:
            loop.call_soon(callback, ClosedError("the WAL is closed"))
            return
        if self._loop is not loop:
            self._watch(loop)
        heapq.heappush(self._waiters, (lsn, next(self._waiter_seq), callback))
        if lsn <= self._log.durable_lsn():
            loop.call_soon(self._wake)

    def _watch(self, loop) -> None:
        # The reader stays in place while the loop runs, so waits cost no epoll change. A loop
        # that ended hands the log over to the next one.
        if self._loop is not None:
            if not self._loop.is_closed() and self._loop.is_running():
                raise RuntimeError("a WAL is watched by one event loop only")
            if not self._loop.is_closed():
                self._loop.remove_reader(self._log.event_fd())
        loop.add_reader(self._log.event_fd(), self._on_event)
        self._loop = loop
        # Durability may have advanced, and the eventfd been drained, before the reader was in
        # place. Once it is, every advance after this look bumps the eventfd.
        loop.call_soon(self._wake)

    def _on_event(self):
        self._log.ack_event()
        self._wake()

    def _wake(self):
        durable = self._log.durable_lsn()
        while self._waiters and self._waiters[0][0] <= durable:
            heapq.heappop(self._waiters)[2](None)
        failure = ClosedError("the WAL was closed") if self._closed else self._log.failure()
        if failure is not None:
            while self._waiters:
                heapq.heappop(self._waiters)[2](type(failure)(*failure.args))

    # --- reading and administration -------------------------------------------------------

    def read(self, from_lsn: int, to_lsn: int | None = None) -> Iterator[Record]:
        """Durable records from from_lsn through to_lsn (inclusive), checksums verified."""
        to_lsn = (1 << 64) - 1 if to_lsn is None else to_lsn
        while from_lsn <= to_lsn:
            chunk = self._log.read_chunk(from_lsn, to_lsn)
            if not chunk:
                return
            yield from chunk
            from_lsn = chunk[-1].lsn + 1

    def truncate_after(self, lsn: int):
        """Durably remove every record after lsn (waits for queued records to be durable first)."""
        self._log.truncate_after(lsn)

    def drop_before(self, lsn: int):
        """Delete whole segments that hold only records below lsn (after a checkpoint)."""
        self._log.drop_before(lsn)

    def reset(self, next_lsn: int):
        """Empty the log; the next append gets next_lsn (after installing a snapshot)."""
        self._log.reset(next_lsn)

    def close(self):
        """Flush what is queued, then close. Waiters still pending get ClosedError."""
        if self._closed:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._log.event_fd())
        self._log.close()
        self._closed = True
        self._loop = None
        waiters, self._waiters = self._waiters, []
        for _lsn, _seq, callback in waiters:
            callback(ClosedError("the WAL was closed"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class NativeWAL:
    """native/wal.c behind the same small interface as ReferenceWAL; C error codes become typed errors."""

    def __init__(self, directory: str, sync: str, segment_bytes: int):
        try:
            from dynstore.storage._wal import ffi, lib
        except ImportError as err:
            raise StorageError("the native WAL is not built: run `pip install -e .` in the source tree, "
                               "or set DYNSTORE_STORAGE=reference") from err
        self._ffi, self._lib = ffi, lib
        self._tls = threading.local()
        self._errors = {
            lib.DS_WAL_EIO: StorageError,
            lib.DS_WAL_ENOSPC: DiskFullError,
            lib.DS_WAL_ECLOSED: ClosedError,
            lib.DS_WAL_EINVAL: ValueError,
            lib.DS_WAL_ETIMEDOUT: TimeoutError,
        }
        cfg = ffi.new("ds_wal_config *", {
            "segment_bytes": segment_bytes,
            "record_payload_bytes_max": limits.WAL_RECORD_PAYLOAD_BYTES_MAX,
            "queue_bytes_max": limits.WAL_QUEUE_BYTES_MAX,
            "sync_mode": {"auto": lib.DS_WAL_SYNC_AUTO, "uring": lib.DS_WAL_SYNC_URING,
                          "fdatasync": lib.DS_WAL_SYNC_FDATASYNC}[sync],
        })
        out = ffi.new("ds_wal **")
        err = self._err()
        self._check(lib.ds_wal_open(directory.encode(), cfg, out, err), err)
        self._w = ffi.gc(out[0], lib.ds_wal_free)
        self.io_path = ffi.string(lib.ds_wal_io_path(self._w)).decode()
        self._efd = lib.ds_wal_event_fd(self._w)

    def _scratch(self):
        """This thread's error struct and LSN slot, reused: allocating 4 KB per call shows in the hot path."""
        try:
            return self._tls.scratch
        except AttributeError:
            self._tls.scratch = (self._ffi.new("ds_wal_error *"), self._ffi.new("uint64_t *"))
            return self._tls.scratch

    def _err(self):
        return self._scratch()[0]

    def _check(self, code: int, err):
        if code == 0:
            return
        raise self._exception(code, err)

    def _exception(self, code: int, err):
        message = self._ffi.string(err.message).decode(errors="replace")
        if code == self._lib.DS_WAL_ECORRUPT:
            return CorruptionError(message, self._ffi.string(err.path).decode(errors="replace"), err.offset)
        return self._errors.get(code, StorageError)(message)

    def first_lsn(self) -> int:
        return self._lib.ds_wal_first_lsn(self._w)

    def last_lsn(self) -> int:
        return self._lib.ds_wal_last_lsn(self._w)

    def durable_lsn(self) -> int:
        return self._lib.ds_wal_durable_lsn(self._w)

    def failure(self):
        err = self._err()
        code = self._lib.ds_wal_failure(self._w, err)
        return None if code == 0 else self._exception(code, err)

    def append(self, term: int, type_: int, payload) -> int:
        ffi = self._ffi
        err, out = self._scratch()
        self._check(self._lib.ds_wal_append(self._w, term, type_, ffi.from_buffer(payload), len(payload), out, err),
                    err)
        return out[0]

    def append_many(self, entries) -> int:
        ffi = self._ffi
        err, out = self._scratch()
        payloads = [bytes(p) for _t, _y, p in entries]
        code = self._lib.ds_wal_append_many(
            self._w, len(entries), [t for t, _y, _p in entries], [y for _t, y, _p in entries],
            [len(p) for p in payloads], b"".join(payloads), out, err)
        self._check(code, err)
        return out[0]

    def wait_durable(self, lsn: int, timeout: float | None):
        err = self._err()
        timeout_ms = -1 if timeout is None else max(0, int(timeout * 1000))
        self._check(self._lib.ds_wal_wait(self._w, lsn, timeout_ms, err), err)

    def event_fd(self) -> int:
        return self._efd

    def ack_event(self):
        self._lib.ds_wal_ack_event(self._w)

    def read_chunk(self, from_lsn: int, to_lsn: int) -> list[Record]:
        ffi, lib = self._ffi, self._lib
        cap = limits.WAL_READ_CHUNK_BYTES
        while True:
            buf = ffi.new("uint8_t[]", cap)
            used = ffi.new("size_t *")
            err = self._err()
            code = lib.ds_wal_read(self._w, from_lsn, to_lsn, buf, cap, used, err)
            if code != lib.DS_WAL_ETOOSMALL:
                break
            cap = used[0]  # one record larger than the buffer: C said how much it needs
        self._check(code, err)
        data = ffi.buffer(buf, used[0])[:]
        out, at, header = [], 0, RECORD_HEADER.size
        while at < len(data):
            length, _crc, lsn, term, type_ = RECORD_HEADER.unpack_from(data, at)
            out.append(Record(lsn, term, type_, data[at + header : at + header + length]))
            at += header + length
        return out

    def truncate_after(self, lsn: int):
        err = self._err()
        self._check(self._lib.ds_wal_truncate_after(self._w, lsn, err), err)

    def drop_before(self, lsn: int):
        err = self._err()
        self._check(self._lib.ds_wal_drop_before(self._w, lsn, err), err)

    def reset(self, next_lsn: int):
        err = self._err()
        self._check(self._lib.ds_wal_reset(self._w, next_lsn, err), err)

    def close(self):
        err = self._err()
        self._check(self._lib.ds_wal_close(self._w, err), err)
