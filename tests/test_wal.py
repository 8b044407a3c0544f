"""The write-ahead log's behaviour, run against the native code and the reference alike."""
import asyncio
import os
import shutil
import subprocess
import threading

import pytest

from dynstore.storage.errors import ClosedError
from dynstore.storage.wal import WAL
from dynstore.storage.wal_ref import RECORD_HEADER, SEGMENT_HEADER_BYTES

SEGMENT = 64 * 1024  # small segments, so a few hundred records span several files


def payload(lsn: int, size: int = 300) -> bytes:
    return (lsn.to_bytes(8, "little") * (size // 8 + 1))[:size]


def fill(wal: WAL, count: int, size: int = 300) -> int:
    first = wal.last_lsn + 1
    for lsn in range(first, first + count):
        assert wal.append(7, lsn % 5, payload(lsn, size)) == lsn
    wal.wait_durable(first + count - 1, timeout=10)
    return first + count - 1


def check(wal: WAL, first: int, last: int, size: int = 300):
    records = list(wal.read(first, last))
    assert [r.lsn for r in records] == list(range(first, last + 1))
    for r in records:
        assert (r.term, r.type, r.payload) == (7, r.lsn % 5, payload(r.lsn, size))


def test_append_read_reopen(storage_backend, tmp_path):
    with WAL(tmp_path, segment_bytes=SEGMENT) as wal:
        assert (wal.first_lsn, wal.last_lsn, wal.durable_lsn) == (0, 0, 0)
        last = fill(wal, 500)
        assert (wal.first_lsn, wal.last_lsn, wal.durable_lsn) == (1, 500, 500)
        check(wal, 1, last)
        assert [r.lsn for r in wal.read(100, 104)] == [100, 101, 102, 103, 104]
        assert len(os.listdir(tmp_path)) > 2  # rolled over several segments
    with WAL(tmp_path, segment_bytes=SEGMENT) as wal:
        assert (wal.first_lsn, wal.last_lsn, wal.durable_lsn) == (1, 500, 500)
        check(wal, 1, 500)
        fill(wal, 10)
        check(wal, 1, 510)


def test_append_many_and_large_record(storage_backend, tmp_path):
    with WAL(tmp_path, segment_bytes=SEGMENT) as wal:
        last = wal.append_many([(7, lsn % 5, payload(lsn)) for lsn in range(1, 51)])
        assert last == 50
        big = os.urandom(3 * SEGMENT)  # larger than a segment: gets a segment of its own
        assert wal.append(1, 9, big) == 51
        wal.wait_durable(51)
        check(wal, 1, 50)
        assert list(wal.read(51))[0].payload == big
    with WAL(tmp_path, segment_bytes=SEGMENT) as wal:
        assert wal.last_lsn == 51
        assert list(wal.read(51))[0].payload == big


def test_truncate_after_then_overwrite(storage_backend, tmp_path):
    with WAL(tmp_path, segment_bytes=SEGMENT) as wal:
        fill(wal, 400)
        wal.truncate_after(150)
        assert (wal.last_lsn, wal.durable_lsn) == (150, 150)
        check(wal, 1, 150)
        # A new leader's records replace the old ones, shorter, so stale bytes would show.
        for lsn in range(151, 161):
            wal.append(8, 0, b"n" * 10)
        wal.wait_durable(160)
    with WAL(tmp_path, segment_bytes=SEGMENT) as wal:
        assert wal.last_lsn == 160
        check(wal, 1, 150)
        assert [(r.term, r.payload) for r in wal.read(151)] == [(8, b"n" * 10)] * 10
        wal.truncate_after(0)
        assert (wal.first_lsn, wal.last_lsn) == (0, 0)
        assert wal.append(1, 1, b"x") == 1


def test_drop_before_keeps_the_segment_holding_lsn(storage_backend, tmp_path):
    with WAL(tmp_path, segment_bytes=SEGMENT) as wal:
        fill(wal, 600)
        segments = len(os.listdir(tmp_path))
        wal.drop_before(300)
        assert len(os.listdir(tmp_path)) < segments
        first = wal.first_lsn
        assert 1 < first <= 300
        check(wal, first, 600)
        with pytest.raises(ValueError):
            list(wal.read(1))
        wal.drop_before(10**9)  # never drops the segment taking appends
        assert wal.first_lsn > 300 and wal.last_lsn == 600
    with WAL(tmp_path, segment_bytes=SEGMENT) as wal:
        assert wal.last_lsn == 600
        check(wal, wal.first_lsn, 600)


def test_reset(storage_backend, tmp_path):
    with WAL(tmp_path, segment_bytes=SEGMENT) as wal:
        fill(wal, 300)
        wal.reset(1000)
        assert (wal.first_lsn, wal.last_lsn, wal.durable_lsn) == (0, 999, 999)
        assert list(wal.read(1000)) == []
        assert wal.append(7, 1000 % 5, payload(1000)) == 1000
        wal.wait_durable(1000)
    with WAL(tmp_path, segment_bytes=SEGMENT) as wal:
        assert (wal.first_lsn, wal.last_lsn) == (1000, 1000)
        check(wal, 1000, 1000)
        wal.reset(5)
    with WAL(tmp_path, segment_bytes=SEGMENT) as wal:
        assert (wal.first_lsn, wal.last_lsn) == (0, 4)
        assert wal.append(1, 1, b"") == 5


def test_many_threads_group_commit(storage_backend, tmp_path):
    threads, per_thread = 16, 100
    seen: dict[int, bytes] = {}
    lock = threading.Lock()

    def appender(t: int):
        for i in range(per_thread):
            body = f"{t}:{i}".encode()
            lsn = wal.append(t, i, body)
            wal.wait_durable(lsn, timeout=10)
            assert wal.durable_lsn >= lsn
            with lock:
                seen[lsn] = body

    with WAL(tmp_path, segment_bytes=SEGMENT) as wal:
        workers = [threading.Thread(target=appender, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert sorted(seen) == list(range(1, threads * per_thread + 1))
        assert {r.lsn: r.payload for r in wal.read(1)} == seen


def test_asyncio_durable(storage_backend, tmp_path):
    async def writer(wal: WAL, t: int) -> list[int]:
        lsns = []
        for i in range(50):
            lsn = wal.append(t, 0, payload(t * 1000 + i))
            await wal.durable(lsn)
            assert wal.durable_lsn >= lsn
            lsns.append(lsn)
        return lsns

    async def main(wal: WAL):
        results = await asyncio.gather(*(writer(wal, t) for t in range(20)))
        return sorted(lsn for lsns in results for lsn in lsns)

    with WAL(tmp_path, segment_bytes=SEGMENT) as wal:
        assert asyncio.run(main(wal)) == list(range(1, 1001))
        assert wal.durable_lsn == 1000


def test_closed_and_bad_arguments(storage_backend, tmp_path):
    wal = WAL(tmp_path, segment_bytes=SEGMENT)
    with pytest.raises(ValueError):
        wal.wait_durable(1)  # never appended
    with pytest.raises(ValueError):
        wal.append(1, 1, bytes(65 * 1024 * 1024))
    wal.append(1, 1, b"last")
    wal.close()  # flushes what is queued
    with pytest.raises(ClosedError):
        wal.append(1, 1, b"x")
    with WAL(tmp_path, segment_bytes=SEGMENT) as wal:
        assert [r.payload for r in wal.read(1)] == [b"last"]
    with pytest.raises(ValueError):
        WAL(tmp_path, sync="sometimes")


def test_record_layout_matches_the_documented_format(storage_backend, tmp_path):
    with WAL(tmp_path, segment_bytes=SEGMENT) as wal:
        wal.append(3, 4, b"hello")
        wal.wait_durable(1)
    data = (tmp_path / f"{1:020d}.wal").read_bytes()
    assert data[:8] == b"DSWALSEG" and len(data) == SEGMENT
    length, _crc, lsn, term, type_ = RECORD_HEADER.unpack_from(data, SEGMENT_HEADER_BYTES)
    assert (length, lsn, term, type_) == (5, 1, 3, 4)
    assert data[SEGMENT_HEADER_BYTES + RECORD_HEADER.size :].rstrip(b"\0") == b"hello"


def _write_same_log(directory, backend):
    with WAL(directory, segment_bytes=SEGMENT, backend=backend) as wal:
        for lsn in range(1, 400):
            wal.append(lsn // 100, lsn % 3, payload(lsn, lsn % 700))
        wal.wait_durable(399)
        wal.truncate_after(350)
        wal.append(9, 9, b"after")
        wal.wait_durable(351)
        wal.drop_before(100)


def test_backends_write_identical_files(tmp_path):
    _write_same_log(tmp_path / "native", "native")
    _write_same_log(tmp_path / "reference", "reference")
    names = sorted(os.listdir(tmp_path / "native"))
    assert names == sorted(os.listdir(tmp_path / "reference"))
    for name in names:
        assert (tmp_path / "native" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
    for writer, reader in (("native", "reference"), ("reference", "native")):
        with WAL(tmp_path / writer, segment_bytes=SEGMENT, backend=reader) as wal:
            assert wal.last_lsn == 351
            assert list(wal.read(351))[0].payload == b"after"


def _io_uring_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[io_uring]"
        except OSError:
            pass  # the fd listing itself, closed meanwhile
    return count


@pytest.mark.parametrize("sync, path", [("uring", "uring"), ("fdatasync", "fdatasync"), ("auto", "fdatasync")])
def test_native_io_paths(tmp_path, sync, path):
    before = _io_uring_fds()
    with WAL(tmp_path, sync=sync, segment_bytes=SEGMENT, backend="native") as wal:
        assert wal.io_path == path
        # The kernel object behind the ring is visible: proof that io_uring, not a flag, is in use.
        assert _io_uring_fds() - before == (1 if path == "uring" else 0)
        fill(wal, 300)
        check(wal, 1, 300)
    with WAL(tmp_path, sync=sync, segment_bytes=SEGMENT, backend="native") as wal:
        check(wal, 1, 300)
    assert _io_uring_fds() == before


def _first_unwritten_byte(path) -> int | None:
    """Where the file's first preallocated-but-unwritten extent starts (filefrag, ext4)."""
    out = subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True, check=True).stdout
    if "ef53" not in out:
        pytest.skip("filefrag reports unwritten extents on ext4 only")
    starts = [int(line.split(":")[1].split("..")[0]) for line in out.splitlines() if "unwritten" in line]
    return min(starts) * 4096 if starts else None


def test_native_log_writes_zeros_ahead_of_its_records(tmp_path):
    # A sync after a write into a preallocated, unwritten extent must convert the extent: a
    # journal commit, which waits behind other files' data. Zeros a megabyte ahead of the
    # records leave one batch in a megabyte to pay for that.
    if shutil.which("filefrag") is None:
        pytest.skip("filefrag (e2fsprogs) is not installed")
    ahead = 1 << 20
    with WAL(tmp_path, segment_bytes=4 * ahead, backend="native") as wal:
        fill(wal, 1, size=100)
        [segment] = [tmp_path / name for name in os.listdir(tmp_path) if name.endswith(".wal")]
        assert _first_unwritten_byte(segment) >= SEGMENT_HEADER_BYTES + ahead
        fill(wal, 600, size=2000)  # well past the first megabyte
        end = SEGMENT_HEADER_BYTES + 601 * RECORD_HEADER.size + 100 + 600 * 2000
        assert _first_unwritten_byte(segment) >= end


def test_reference_has_no_uring(tmp_path):
    from dynstore.storage.errors import StorageError

    with pytest.raises(StorageError):
        WAL(tmp_path, sync="uring", backend="reference")
    with WAL(tmp_path, sync="auto", backend="reference") as wal:
        assert wal.io_path == "fdatasync"
