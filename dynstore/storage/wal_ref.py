"""Pure-Python write-ahead log: the reference for native/wal.c, writing the same files.

On-disk format (all integers little-endian)
-------------------------------------------
A log is a directory of segment files named ``<first_lsn as 20 decimal digits>.wal``.
Each segment is preallocated to its full size when it is created (so a full disk shows
when a segment is made, never in the middle of a record) and starts with a 64-byte header:

    offset  size  field
    0       8     magic          b"DSWALSEG"
    8       4     version        1
    12      4     flags          0
    16      8     first_lsn      LSN of the first record this segment holds (or will hold)
    24      8     segment_bytes  size of this file; a record larger than the configured
                                 segment size gets a segment of its own, rounded up to 4 KiB
    32      4     header_crc     crc32c of bytes 0..32
    36      28    zero

Records follow back to back from offset 64, each a 28-byte header and its payload:

    offset  size  field
    0       4     length         payload bytes
    4       4     crc            crc32c of bytes 0..4, then 8..28, then the payload
    8       8     lsn            one more than the previous record's
    16      8     term           the Paxos term that wrote it
    24      4     type           record type, chosen by the caller
    28      length payload

A segment ends where the next record would not fit; the next record starts the next
segment, whose first_lsn is that record's LSN. Bytes past the last record of a segment are
zero: preallocation makes them so, and truncation and recovery zero what they cut off.
New segments are written under a ``.tmp`` name and renamed once their header is durable.

Faults survived
---------------
* Crash at any moment: records acknowledged as durable are intact after reopening; the
  unacknowledged tail may be torn. Recovery stops at the first record that is not valid
  (bad checksum, wrong LSN, bad length). That record is a torn tail, and is cut off,
  when no valid record follows it and part of it was never written (one of its 512-byte
  sectors is still zero, which is how an interrupted write looks on a preallocated file).
* A record that fails its checksum although completely written, or that is followed by a
  valid record, is corruption: opening raises CorruptionError naming the file and offset,
  because silently shortening the log could drop acknowledged writes. (A power loss that
  persisted a later page of the last, unacknowledged batch but not an earlier one is
  reported the same way; the replica is then rebuilt from its peers.)
* A full disk or an I/O error while flushing: every record not yet durable fails with
  DiskFullError or StorageError and the log refuses further appends ("fail-stop"), since
  after a failed fdatasync the kernel may have dropped the dirty pages and a retry could
  report durable what is not. close() and reopening recover the durable prefix; once space
  is freed the reopened log works again.
"""
from __future__ import annotations

import bisect
import errno
import mmap
import os
import struct
import threading
from typing import NamedTuple

import crc32c

from dynstore import limits
from dynstore.storage.errors import ClosedError, CorruptionError, DiskFullError, StorageError

SEGMENT_MAGIC = b"DSWALSEG"
SEGMENT_VERSION = 1
SEGMENT_HEADER = struct.Struct("<8sIIQQ")  # magic, version, flags, first_lsn, segment_bytes
SEGMENT_CRC = struct.Struct("<I")
SEGMENT_HEADER_BYTES = 64  # records start here
SEGMENT_SUFFIX = ".wal"
SEGMENT_ALIGN_BYTES = 4096  # an oversized segment is rounded up to whole pages
RECORD_HEADER = struct.Struct("<IIQQI")  # length, crc, lsn, term, type
SECTOR_BYTES = 512  # the unit a disk writes atomically; a torn write leaves whole sectors zero
LSN_DIGITS = 20  # enough for any uint64


class Record(NamedTuple):
    lsn: int
    term: int
    type: int
    payload: bytes


def segment_name(first_lsn: int) -> str:
    return f"{first_lsn:0{LSN_DIGITS}d}{SEGMENT_SUFFIX}"


def segment_size_for(segment_bytes: int, payload_len: int) -> int:
    """Size of a segment that must hold a record of payload_len as its first record."""
    need = SEGMENT_HEADER_BYTES + RECORD_HEADER.size + payload_len
    need = -(-need // SEGMENT_ALIGN_BYTES) * SEGMENT_ALIGN_BYTES
    return max(segment_bytes, need)


def encode_segment_header(first_lsn: int, size: int) -> bytes:
    head = SEGMENT_HEADER.pack(SEGMENT_MAGIC, SEGMENT_VERSION, 0, first_lsn, size)
    return (head + SEGMENT_CRC.pack(crc32c.crc32c(head))).ljust(SEGMENT_HEADER_BYTES, b"\0")


def parse_segment_header(buf, path: str) -> tuple[int, int]:
    """(first_lsn, segment_bytes) of a segment, or CorruptionError."""
    if len(buf) < SEGMENT_HEADER_BYTES:
        raise CorruptionError("WAL segment shorter than its header", path, 0)
    magic, version, _flags, first_lsn, size = SEGMENT_HEADER.unpack_from(buf, 0)
    (crc,) = SEGMENT_CRC.unpack_from(buf, SEGMENT_HEADER.size)
    if magic != SEGMENT_MAGIC or crc != crc32c.crc32c(bytes(buf[: SEGMENT_HEADER.size])):
        raise CorruptionError("WAL segment header is damaged", path, 0)
    if version != SEGMENT_VERSION:
        raise CorruptionError(f"WAL segment version {version} is not supported (expected {SEGMENT_VERSION})", path, 0)
    if size != len(buf):
        raise CorruptionError(f"WAL segment is {len(buf)} bytes, its header says {size}", path, 0)
    return first_lsn, size


def record_crc(header: bytes, payload) -> int:
    """crc32c over the length, then lsn|term|type, then the payload (everything but the crc)."""
    crc = crc32c.crc32c(header[0:4])
    crc = crc32c.crc32c(header[8:RECORD_HEADER.size], crc)
    return crc32c.crc32c(payload, crc)


def encode_record(lsn: int, term: int, type_: int, payload: bytes) -> bytes:
    header = RECORD_HEADER.pack(len(payload), 0, lsn, term, type_)
    crc = record_crc(header, payload)
    out = RECORD_HEADER.pack(len(payload), crc, lsn, term, type_) + payload
    # The buffer must say what we were given: decode it back before it goes anywhere.
    assert parse_record(out, 0, len(out), lsn) == (term, type_, len(payload), len(out))
    return out


def parse_record(buf, offset: int, end: int, lsn: int):
    """(term, type, length, next_offset) of a valid record with this lsn at offset, else None."""
    if offset + RECORD_HEADER.size > end:
        return None
    length, crc, got_lsn, term, type_ = RECORD_HEADER.unpack_from(buf, offset)
    stop = offset + RECORD_HEADER.size + length
    if got_lsn != lsn or length > limits.WAL_RECORD_PAYLOAD_BYTES_MAX or stop > end:
        return None
    header = bytes(buf[offset : offset + RECORD_HEADER.size])
    if record_crc(header, buf[offset + RECORD_HEADER.size : stop]) != crc:
        return None
    return term, type_, length, stop


def scan_records(buf, offset: int, end: int, lsn: int) -> tuple[int, int]:
    """Walk valid records from offset; (offset, lsn) just past the last one."""
    while (rec := parse_record(buf, offset, end, lsn)) is not None:
        offset = rec[3]
        lsn += 1
    return offset, lsn


def later_valid_record(buf, offset: int, end: int, lsn: int) -> int | None:
    """Offset of a valid record with an LSN above lsn somewhere after offset, else None.

    A candidate's LSN can be at most one per record header beyond lsn, which rejects
    almost every offset before the checksum is computed.
    """
    lsn_max = lsn + (end - offset) // RECORD_HEADER.size
    for at in range(offset + 1, end - RECORD_HEADER.size + 1):
        (cand,) = struct.unpack_from("<Q", buf, at + 8)
        if lsn < cand <= lsn_max and parse_record(buf, at, end, cand) is not None:
            return at
    return None


def is_torn(buf, offset: int, end: int) -> bool:
    """Whether the invalid record at offset was never completely written.

    True when some 512-byte sector of its extent (clipped to the extent) is still zero.
    """
    length = RECORD_HEADER.unpack_from(buf, offset)[0] if offset + 4 <= end else 0
    stop = offset + RECORD_HEADER.size + length
    if length > limits.WAL_RECORD_PAYLOAD_BYTES_MAX or stop > end:
        stop = end
    at = offset
    while at < stop:
        nxt = min(stop, (at // SECTOR_BYTES + 1) * SECTOR_BYTES)
        if not any(buf[at:nxt]):
            return True
        at = nxt
    return offset >= end


def last_nonzero(buf, offset: int, end: int) -> int:
    """One past the last nonzero byte in buf[offset:end], or offset."""
    return offset + len(bytes(buf[offset:end]).rstrip(b"\0"))


def disk_error(err: OSError, what: str, path: str) -> StorageError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"no space left to {what} {path}: free space or grow the volume, then reopen the log")
    return StorageError(f"cannot {what} {path}: {os.strerror(err.errno or 0)}")


class _Segment:
    """One segment file: its place in the log and where its records end."""

    __slots__ = ("path", "first_lsn", "size", "fd", "mm", "end")

    def __init__(self, path: str, first_lsn: int, size: int, fd: int, end: int):
        self.path = path
        self.first_lsn = first_lsn
        self.size = size
        self.fd = fd
        self.mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        self.end = end  # offset just past the last record written to it

    def close(self):
        self.mm.close()
        os.close(self.fd)


def _fsync_dir(directory: str):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ReferenceWAL:
    """The log itself; dynstore.storage.wal.WAL is its public face."""

    io_path = "fdatasync"

    def __init__(self, directory: str, sync: str, segment_bytes: int):
        if sync == "uring":
            raise StorageError("sync='uring' needs the native WAL backend; the reference only has fdatasync")
        self._dir = directory
        self._segment_bytes = segment_bytes
        self._cv = threading.Condition(threading.Lock())
        self._segs_lock = threading.Lock()  # the segment list; readers and rolls/admin take it
        self._segs: list[_Segment] = []
        self._pending: list[bytes] = []  # encoded records not yet handed to the flusher
        self._pending_bytes = 0
        self._busy = False  # the flusher is writing a batch
        self._closing = False
        self._closed = False
        self._failure: tuple[type, str] | None = None
        try:
            self._recover()
        except BaseException:
            for seg in self._segs:
                seg.close()
            raise
        self._next_lsn = self._recovered_next
        self._durable = self._next_lsn - 1
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._flusher = threading.Thread(target=self._flush_loop, name="wal-flusher", daemon=True)
        self._flusher.start()

    # --- recovery -------------------------------------------------------------------------

    def _recover(self):
        names = sorted(os.listdir(self._dir))
        segments = [n for n in names if n.endswith(SEGMENT_SUFFIX)]
        for name in names:
            if name.endswith(SEGMENT_SUFFIX + ".tmp"):
                self._recover_tmp(name, publish=not segments)
        names = sorted(n for n in os.listdir(self._dir) if n.endswith(SEGMENT_SUFFIX))
        if not names:
            self._recovered_next = 1
            self._create_segment(1, self._segment_bytes)
            return
        lsn = None
        for i, name in enumerate(names):
            path = os.path.join(self._dir, name)
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            size = os.fstat(fd).st_size
            if size < SEGMENT_HEADER_BYTES:
                os.close(fd)
                raise CorruptionError("WAL segment shorter than its header", path, 0)
            seg = _Segment(path, 0, size, fd, SEGMENT_HEADER_BYTES)
            self._segs.append(seg)
            seg.first_lsn, _ = parse_segment_header(seg.mm, path)
            if name != segment_name(seg.first_lsn):
                raise CorruptionError(f"WAL segment header says first LSN {seg.first_lsn}", path, 0)
            if lsn is not None and seg.first_lsn != lsn:
                prev = self._segs[i - 1]
                raise CorruptionError(f"WAL record {lsn} is damaged (next segment starts at {seg.first_lsn})",
                                      prev.path, prev.end)
            seg.end, lsn = scan_records(seg.mm, SEGMENT_HEADER_BYTES, size, seg.first_lsn)
        self._check_tail(self._segs[-1], lsn)
        self._recovered_next = lsn

    def _check_tail(self, seg: _Segment, lsn: int):
        """Cut off a torn tail of the last segment; refuse corruption."""
        end = last_nonzero(seg.mm, seg.end, seg.size)
        if end == seg.end:
            return
        if later_valid_record(seg.mm, seg.end, end, lsn) is not None:
            raise CorruptionError(f"WAL record {lsn} is damaged and valid records follow it", seg.path, seg.end)
        if not is_torn(seg.mm, seg.end, seg.size):
            raise CorruptionError(f"WAL record {lsn} fails its checksum although completely written",
                                  seg.path, seg.end)
        self._zero(seg, seg.end, end)

    def _recover_tmp(self, name: str, publish: bool):
        """Publish a lone valid .tmp segment (an interrupted reset); delete any other .tmp."""
        path = os.path.join(self._dir, name)
        if publish:
            with open(path, "rb") as f:
                data = f.read()
            try:
                first_lsn, _ = parse_segment_header(data, path)
            except CorruptionError:
                publish = False
            else:
                publish = name == segment_name(first_lsn) + ".tmp"
        if publish:
            os.rename(path, path[: -len(".tmp")])
            _fsync_dir(self._dir)
        else:
            os.unlink(path)

    # --- segments -------------------------------------------------------------------------

    def _create_segment(self, first_lsn: int, size: int, publish: bool = True) -> _Segment:
        """A new segment, durable under its .tmp name; published (renamed) unless told not to."""
        path = os.path.join(self._dir, segment_name(first_lsn))
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)
            os.pwrite(fd, encode_segment_header(first_lsn, size), 0)
            os.fdatasync(fd)
            if publish:
                os.rename(tmp, path)
                _fsync_dir(self._dir)
        except OSError as err:
            os.close(fd)
            os.unlink(tmp)
            raise disk_error(err, "create WAL segment", path) from err
        seg = _Segment(path if publish else tmp, first_lsn, size, fd, SEGMENT_HEADER_BYTES)
        if publish:
            with self._segs_lock:
                self._segs.append(seg)
        return seg

    def _zero(self, seg: _Segment, start: int, end: int):
        try:
            os.pwrite(seg.fd, bytes(end - start), start)
            os.fdatasync(seg.fd)
        except OSError as err:
            raise disk_error(err, "write", seg.path) from err

    def _remove(self, segs: list[_Segment]):
        for seg in segs:
            seg.close()
            os.unlink(seg.path)
        _fsync_dir(self._dir)

    # --- appending ------------------------------------------------------------------------

    def _raise_failure(self):
        cls, message = self._failure
        raise cls(message)

    def _check_open(self):
        if self._closing:
            raise ClosedError("the WAL is closed")
        if self._failure is not None:
            self._raise_failure()

    def append(self, term: int, type_: int, payload) -> int:
        return self.append_many(((term, type_, payload),))

    def append_many(self, entries) -> int:
        for _term, _type, payload in entries:
            if len(payload) > limits.WAL_RECORD_PAYLOAD_BYTES_MAX:
                raise ValueError(f"WAL record payload of {len(payload)} bytes exceeds "
                                 f"WAL_RECORD_PAYLOAD_BYTES_MAX={limits.WAL_RECORD_PAYLOAD_BYTES_MAX}")
        with self._cv:
            for term, type_, payload in entries:
                self._check_open()
                while self._pending and self._pending_bytes + len(payload) > limits.WAL_QUEUE_BYTES_MAX:
                    self._cv.wait()
                    self._check_open()
                rec = encode_record(self._next_lsn, term, type_, bytes(payload))
                self._next_lsn += 1
                self._pending.append(rec)
                self._pending_bytes += len(rec)
            self._cv.notify_all()
            return self._next_lsn - 1

    def _flush_loop(self):
        while True:
            with self._cv:
                while not self._pending and not self._closing:
                    self._cv.wait()
                if not self._pending:
                    return
                batch, self._pending, self._pending_bytes = self._pending, [], 0
                last = self._next_lsn - 1
                self._busy = True
                self._cv.notify_all()
            failure = None
            try:
                self._write_batch(batch)
            except StorageError as err:
                failure = (type(err), str(err))
            with self._cv:
                self._busy = False
                if failure is None:
                    self._durable = last
                else:
                    self._failure = failure
                    self._pending, self._pending_bytes = [], 0
                self._cv.notify_all()
            os.eventfd_write(self._efd, 1)

    def _write_batch(self, batch: list[bytes]):
        """Write records to the active segment, rolling to new segments; each part durable."""
        seg = self._segs[-1]
        start = 0
        while start < len(batch):
            stop, at = start, seg.end
            while stop < len(batch) and at + len(batch[stop]) <= seg.size:
                at += len(batch[stop])
                stop += 1
            if stop > start:
                data = b"".join(batch[start:stop])
                self._verify(data)
                try:
                    os.pwrite(seg.fd, data, seg.end)
                    os.fdatasync(seg.fd)
                except OSError as err:
                    raise disk_error(err, "write", seg.path) from err
                seg.end = at
            if stop < len(batch):
                length, _crc, lsn, _t, _y = RECORD_HEADER.unpack_from(batch[stop], 0)
                seg = self._create_segment(lsn, segment_size_for(self._segment_bytes, length))
            start = stop

    @staticmethod
    def _verify(data: bytes):
        """The bytes about to be written are records that check out (paired with read checks)."""
        at = 0
        lsn = RECORD_HEADER.unpack_from(data, 0)[2]
        while at < len(data):
            rec = parse_record(data, at, len(data), lsn)
            assert rec is not None, f"record {lsn} changed in memory before it was written"
            at, lsn = rec[3], lsn + 1

    # --- durability -----------------------------------------------------------------------

    def durable_lsn(self) -> int:
        return self._durable

    def failure(self) -> StorageError | None:
        return None if self._failure is None else self._failure[0](self._failure[1])

    def wait_durable(self, lsn: int, timeout: float | None):
        with self._cv:
            if lsn >= self._next_lsn:
                raise ValueError(f"LSN {lsn} was never appended (last is {self._next_lsn - 1})")
            ok = self._cv.wait_for(lambda: self._durable >= lsn or self._failure is not None or self._closed,
                                   timeout)
            if self._durable >= lsn:
                return
            if not ok:
                raise TimeoutError(f"LSN {lsn} not durable within {timeout} s")
            if self._failure is not None:
                self._raise_failure()
            raise ClosedError(f"the WAL was closed before LSN {lsn} became durable")

    def event_fd(self) -> int:
        return self._efd

    def ack_event(self):
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            pass  # nothing signalled since the last drain

    # --- reading --------------------------------------------------------------------------

    def first_lsn(self) -> int:
        with self._segs_lock:
            first = self._segs[0].first_lsn if self._segs else 0
        return first if first < self._next_lsn else 0

    def last_lsn(self) -> int:
        return self._next_lsn - 1

    def read_chunk(self, from_lsn: int, to_lsn: int) -> list[Record]:
        """Durable records from from_lsn up to to_lsn, about WAL_READ_CHUNK_BYTES of them."""
        out: list[Record] = []
        to_lsn = min(to_lsn, self._durable)
        size = 0
        with self._segs_lock:
            if self._closed:
                raise ClosedError("the WAL is closed")
            if from_lsn > to_lsn:
                return out
            firsts = [s.first_lsn for s in self._segs]
            if from_lsn < firsts[0]:
                raise ValueError(f"LSN {from_lsn} was dropped; the log starts at {firsts[0]}")
            i = bisect.bisect_right(firsts, from_lsn) - 1
            seg, at, lsn = self._segs[i], SEGMENT_HEADER_BYTES, firsts[i]
            while lsn <= to_lsn and size < limits.WAL_READ_CHUNK_BYTES:
                rec = parse_record(seg.mm, at, seg.size, lsn)
                if rec is None:
                    if i + 1 < len(self._segs) and firsts[i + 1] == lsn:
                        i += 1
                        seg, at = self._segs[i], SEGMENT_HEADER_BYTES
                        continue
                    raise CorruptionError(f"WAL record {lsn} fails its checksum on read", seg.path, at)
                term, type_, length, nxt = rec
                if lsn >= from_lsn:
                    out.append(Record(lsn, term, type_, bytes(seg.mm[nxt - length : nxt])))
                    size += length + RECORD_HEADER.size
                at, lsn = nxt, lsn + 1
        return out

    # --- administration -------------------------------------------------------------------

    def _quiesce(self):
        """Wait, holding the append lock, until everything appended is durable."""
        self._check_open()
        self._cv.wait_for(lambda: (not self._pending and not self._busy) or self._failure is not None)
        self._check_open()

    def _locate(self, lsn: int) -> tuple[int, int]:
        """(segment index, offset) where record lsn starts, or would start if appended next."""
        i = bisect.bisect_right([s.first_lsn for s in self._segs], lsn) - 1
        seg, at = self._segs[i], SEGMENT_HEADER_BYTES
        for cur in range(seg.first_lsn, lsn):
            at = parse_record(seg.mm, at, seg.end, cur)[3]
        return i, at

    def truncate_after(self, lsn: int):
        with self._cv:
            self._quiesce()
            if lsn >= self._next_lsn - 1:
                return
            first = self._segs[0].first_lsn
            if lsn < first - 1:
                raise ValueError(f"cannot truncate after LSN {lsn}: the log starts at {first}")
            with self._segs_lock:
                i, at = self._locate(lsn + 1)
                doomed = self._segs[i + 1 :]
                del self._segs[i + 1 :]
            # Later segments go first: a crash in between leaves a longer, still contiguous log.
            self._remove(reversed(doomed))
            seg = self._segs[i]
            self._zero(seg, at, seg.end)
            seg.end = at
            self._next_lsn = lsn + 1
            self._durable = lsn

    def drop_before(self, lsn: int):
        with self._cv:
            self._quiesce()  # as native/wal.c, which must not move segments under the flusher
            with self._segs_lock:
                n = 0
                while n + 1 < len(self._segs) and self._segs[n + 1].first_lsn <= lsn:
                    n += 1
                doomed = self._segs[:n]
                del self._segs[:n]
            self._remove(doomed)

    def reset(self, next_lsn: int):
        if next_lsn < 1:
            raise ValueError("next_lsn must be at least 1")
        with self._cv:
            self._quiesce()
            # The new segment is durable (as .tmp) before anything is deleted, so a full disk
            # fails here with the old log intact; recovery publishes a lone .tmp.
            seg = self._create_segment(next_lsn, self._segment_bytes, publish=False)
            with self._segs_lock:
                doomed, self._segs = self._segs, [seg]
                self._remove(doomed)
                final = seg.path[: -len(".tmp")]
                os.rename(seg.path, final)
                _fsync_dir(self._dir)
                seg.path = final
            self._next_lsn = next_lsn
            self._durable = next_lsn - 1

    def close(self):
        with self._cv:
            if self._closing:
                return
            self._closing = True
            self._cv.notify_all()
        self._flusher.join()
        with self._cv, self._segs_lock:
            self._closed = True
            for seg in self._segs:
                seg.close()
            self._segs = []
            os.close(self._efd)
            self._cv.notify_all()
