"""Faults the write-ahead log must survive: torn tails, bit rot, a full disk."""
import asyncio
import os
import subprocess

import pytest

from dynstore.storage.errors import CorruptionError, DiskFullError
from dynstore.storage.wal import WAL
from dynstore.storage.wal_ref import RECORD_HEADER, SEGMENT_HEADER_BYTES

SEGMENT = 64 * 1024
SIZE = 1000  # payload bytes: a record spans sectors, so tears can fall inside one


def payload(lsn: int) -> bytes:
    return (lsn.to_bytes(8, "little") * (SIZE // 8 + 1))[:SIZE]


def write_log(directory, count: int):
    with WAL(directory, segment_bytes=SEGMENT) as wal:
        for lsn in range(1, count + 1):
            wal.append(1, 0, payload(lsn))
        wal.wait_durable(count)


def record_offsets(path) -> list[int]:
    """Offsets of the records in one segment file, walking the headers."""
    data = path.read_bytes()
    offsets, at = [], SEGMENT_HEADER_BYTES
    while at + RECORD_HEADER.size <= len(data) and RECORD_HEADER.unpack_from(data, at)[2] != 0:
        offsets.append(at)
        at += RECORD_HEADER.size + RECORD_HEADER.unpack_from(data, at)[0]
    return offsets


def last_segment(directory):
    return directory / sorted(os.listdir(directory))[-1]


def patch(path, offset: int, data: bytes):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def open_fails_at(directory, seg, offset: int) -> CorruptionError:
    """Opening the log refuses, naming this file and offset."""
    with pytest.raises(CorruptionError) as info:
        WAL(directory, segment_bytes=SEGMENT)
    assert (info.value.path, info.value.offset) == (str(seg), offset)
    return info.value


def check_prefix(directory, last: int):
    with WAL(directory, segment_bytes=SEGMENT) as wal:
        assert wal.last_lsn == last
        records = list(wal.read(1))
        assert [r.lsn for r in records] == list(range(1, last + 1))
        assert all(r.payload == payload(r.lsn) for r in records)


@pytest.mark.parametrize("keep", [0, 5, 28, 600])
def test_torn_final_record_is_cut_off(storage_backend, tmp_path, keep):
    write_log(tmp_path, 100)
    seg = last_segment(tmp_path)
    last = record_offsets(seg)[-1]
    # An interrupted write: the record's bytes from `keep` on never reached the disk.
    patch(seg, last + keep, bytes(RECORD_HEADER.size + SIZE - keep))
    check_prefix(tmp_path, 99)
    with WAL(tmp_path, segment_bytes=SEGMENT) as wal:  # and the log goes on from there
        assert wal.append(1, 0, payload(100)) == 100
        wal.wait_durable(100)
    check_prefix(tmp_path, 100)


def test_bit_flip_in_a_middle_record_is_corruption(storage_backend, tmp_path):
    write_log(tmp_path, 100)
    seg = last_segment(tmp_path)
    offsets = record_offsets(seg)
    victim = offsets[len(offsets) // 2]
    data = seg.read_bytes()
    patch(seg, victim + 200, bytes([data[victim + 200] ^ 0x10]))
    err = open_fails_at(tmp_path, seg, victim)
    assert str(seg) in str(err) and f"offset {victim}" in str(err)
    assert seg.read_bytes()[:-1] != data[:-1]  # nothing was cut off or rewritten


def test_bit_flip_in_an_earlier_segment_is_corruption(storage_backend, tmp_path):
    write_log(tmp_path, 200)
    seg = tmp_path / sorted(os.listdir(tmp_path))[0]
    victim = record_offsets(seg)[3]
    patch(seg, victim + 8, (999).to_bytes(8, "little"))  # a wrong LSN breaks the chain
    open_fails_at(tmp_path, seg, victim)


def test_bit_flip_in_the_completely_written_last_record_is_corruption(storage_backend, tmp_path):
    write_log(tmp_path, 100)
    seg = last_segment(tmp_path)
    victim = record_offsets(seg)[-1]
    patch(seg, victim + 500, b"\xff")
    open_fails_at(tmp_path, seg, victim)


def test_damaged_segment_header_is_corruption(storage_backend, tmp_path):
    write_log(tmp_path, 10)
    seg = last_segment(tmp_path)
    patch(seg, 20, b"\x01")
    open_fails_at(tmp_path, seg, 0)


def test_read_verifies_checksums(storage_backend, tmp_path):
    write_log(tmp_path, 50)
    with WAL(tmp_path, segment_bytes=SEGMENT) as wal:
        seg = last_segment(tmp_path)
        victim = record_offsets(seg)[10]
        patch(seg, victim + 100, b"\xee")  # rot after recovery passed
        with pytest.raises(CorruptionError) as info:
            list(wal.read(1))
        assert (info.value.path, info.value.offset) == (str(seg), victim)


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs, so the disk really fills; unmounted afterwards."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_full_fails_cleanly_and_recovers(storage_backend, small_fs):
    segment = 256 * 1024
    directory = small_fs / "wal"
    filler = small_fs / "filler"
    # Leave room for about two and a half segments.
    filler.write_bytes(bytes(2 * 1024 * 1024 - 640 * 1024))
    wal = WAL(directory, segment_bytes=segment)
    acked = 0
    with pytest.raises(DiskFullError) as info:
        for lsn in range(1, 100_000):
            wal.append(1, 0, payload(lsn))
            wal.wait_durable(lsn, timeout=10)
            acked = lsn
    assert "free space" in str(info.value)
    assert acked > 200 and wal.durable_lsn == acked
    with pytest.raises(DiskFullError):
        asyncio.run(wal.durable(lsn))  # the failed record is never reported durable
    with pytest.raises(DiskFullError):
        wal.append(1, 0, b"refused while failed")
    assert [r.lsn for r in wal.read(1)] == list(range(1, acked + 1))
    wal.close()

    check_prefix(directory, acked)  # reopening on a still-full disk keeps every acked record
    filler.unlink()
    with WAL(directory, segment_bytes=segment) as wal:
        for lsn in range(acked + 1, acked + 300):
            wal.append(1, 0, payload(lsn))
        wal.wait_durable(acked + 299, timeout=10)
    check_prefix(directory, acked + 299)


def test_interrupted_segment_creation_and_reset(storage_backend, tmp_path):
    from dynstore.storage.wal_ref import encode_segment_header, segment_name

    write_log(tmp_path, 10)
    # A crash while creating the next segment leaves a .tmp beside the log: it is dropped.
    stray = tmp_path / (segment_name(11) + ".tmp")
    stray.write_bytes(encode_segment_header(11, SEGMENT).ljust(SEGMENT, b"\0"))
    check_prefix(tmp_path, 10)
    assert not stray.exists()
    # A crash in reset after the old segments were deleted leaves only the new one, as .tmp:
    # recovery completes the reset.
    for name in os.listdir(tmp_path):
        os.unlink(tmp_path / name)
    (tmp_path / (segment_name(500) + ".tmp")).write_bytes(encode_segment_header(500, SEGMENT).ljust(SEGMENT, b"\0"))
    with WAL(tmp_path, segment_bytes=SEGMENT) as wal:
        assert (wal.first_lsn, wal.last_lsn) == (0, 499)
        assert wal.append(1, 0, b"x") == 500
    assert os.listdir(tmp_path) == [segment_name(500)]
