"""The storage engine (WAL + B+tree) as one partition: writes, recovery, snapshots, faults.

Every test runs against the native code and the pure-Python reference.
"""
import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest

from dynstore.storage.engine import Engine, decode_batch, encode_batch
from dynstore.storage.errors import CorruptionError, DiskFullError

from conftest import long_mode


def run(coro):
    return asyncio.run(coro)


def key(i: int) -> bytes:
    return b"k%08d" % i


def test_batch_codec_round_trips():
    ops = [(b"a", b"1"), (b"", b""), (b"b" * 3000, None), (b"c", b"x" * 70000)]
    assert decode_batch(encode_batch(ops)) == ops


def test_batch_codec_rejects_truncation():
    payload = encode_batch([(b"abc", b"defg")])
    with pytest.raises(CorruptionError):
        decode_batch(payload[:-1])


def test_write_read_scan_and_reopen(tmp_path, storage_backend):
    path = str(tmp_path / "p")

    async def load():
        engine = Engine(path)
        for i in range(200):
            await engine.write([(key(i), b"v%d" % i)])
        await engine.write([(key(i), None) for i in range(0, 200, 2)])
        engine.close()

    run(load())
    engine = Engine(path)
    assert engine.applied_lsn == 201
    assert engine.get(key(1)) == b"v1"
    assert engine.get(key(2)) is None
    assert [k for k, _ in engine.scan(key(10), key(20))] == [key(i) for i in range(11, 20, 2)]
    assert [k for k, _ in engine.scan(key(10), key(20), reverse=True)] == [key(i) for i in range(19, 10, -2)]
    engine.close()


def test_recovery_replays_wal_after_checkpoint(tmp_path, storage_backend):
    path = str(tmp_path / "p")

    async def load():
        engine = Engine(path)
        await engine.write([(key(i), b"before") for i in range(50)])
        assert engine.checkpoint() == 1
        for i in range(50, 80):
            await engine.write([(key(i), b"after")])
        engine.close()

    run(load())
    engine = Engine(path)
    assert engine.applied_lsn == 31
    assert sum(1 for _ in engine.scan()) == 80
    assert engine.get(key(79)) == b"after"
    engine.close()


def test_concurrent_read_modify_write_is_atomic(tmp_path, storage_backend):
    """Increments that read through pending batches lose no update within a group commit."""
    path = str(tmp_path / "p")

    async def increment(engine, times):
        for _ in range(times):
            current = int(engine.get_latest(b"counter") or b"0")
            await engine.write([(b"counter", b"%d" % (current + 1))])

    async def main():
        engine = Engine(path)
        await asyncio.gather(*(increment(engine, 25) for _ in range(16)))
        assert engine.get(b"counter") == b"400"
        engine.close()

    run(main())
    engine = Engine(path)
    assert engine.get(b"counter") == b"400"
    engine.close()


def test_snapshot_installs_an_identical_partition(tmp_path, storage_backend):
    source = str(tmp_path / "source")
    rng = random.Random(7)
    expected = {}

    async def load(engine):
        for i in range(300):
            value = rng.randbytes(rng.randrange(0, 5000))
            expected[key(i)] = value
            await engine.write([(key(i), value)])

    engine = Engine(source)
    run(load(engine))
    with engine.snapshot(chunk_bytes=64 << 10) as chunks:
        # Writes after the snapshot started are not part of it.
        run(engine.write([(b"later", b"x")]))
        stream = list(chunks)
    assert len(stream) > 3
    copy = Engine.install_snapshot(str(tmp_path / "copy"), stream)
    assert dict(copy.scan()) == expected
    assert copy.applied_lsn == 300
    run(copy.write([(b"next", b"y")]))
    assert copy.applied_lsn == 301
    copy.close()
    engine.close()


def snapshot_stream(tmp_path):
    engine = Engine(str(tmp_path / "source"))
    run(engine.write([(key(i), b"v" * 2000) for i in range(200)]))
    with engine.snapshot(chunk_bytes=32 << 10) as chunks:
        stream = list(chunks)
    engine.close()
    return stream


@pytest.mark.parametrize("damage", ["flip", "drop_middle", "drop_last", "reorder"])
def test_damaged_snapshot_is_refused(tmp_path, storage_backend, damage):
    stream = snapshot_stream(tmp_path)
    assert len(stream) >= 3
    if damage == "flip":
        chunk = bytearray(stream[1])
        chunk[len(chunk) // 2] ^= 0x10
        stream[1] = bytes(chunk)
    elif damage == "drop_middle":
        del stream[1]
    elif damage == "drop_last":
        del stream[-1]
    else:
        stream[0], stream[1] = stream[1], stream[0]
    target = tmp_path / "copy"
    with pytest.raises(CorruptionError):
        Engine.install_snapshot(str(target), stream)
    assert not (target / "tree.db").exists()


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from dynstore.storage.engine import Engine

    async def writer(engine, wid):
        i = 0
        while True:
            k = b"r%s-w%02d-%06d" % (sys.argv[2].encode(), wid, i)
            await engine.write([(k, k * 3)])
            print(k.decode(), flush=True)
            if i % 50 == 49:
                engine.checkpoint()
            i += 1

    async def main():
        engine = Engine(sys.argv[1])
        await asyncio.gather(*(writer(engine, w) for w in range(8)))

    asyncio.run(main())
    """
)


def test_kill_9_loses_no_acknowledged_write(tmp_path, storage_backend):
    path = str(tmp_path / "p")
    rng = random.Random(11)
    acked: set[bytes] = set()
    rounds = 40 if long_mode() else 6
    for round_no in range(rounds):
        child = subprocess.Popen([sys.executable, "-c", CHILD, path, str(round_no)], stdout=subprocess.PIPE,
                                 env=dict(os.environ))
        # Read acknowledgements until a random point, then kill without warning.
        stop_after = rng.randrange(20, 400)
        for _ in range(stop_after):
            line = child.stdout.readline()
            if not line:
                break
            acked.add(line.strip())
        os.kill(child.pid, signal.SIGKILL)
        for line in child.stdout:
            acked.add(line.strip())
        child.wait()
        engine = Engine(path)
        present = dict(engine.scan())
        missing = [k for k in acked if k not in present]
        assert not missing, f"acknowledged writes lost: {sorted(missing)[:5]}"
        for k, v in present.items():
            assert v == k * 3
        engine.close()
    assert len(acked) > rounds * 20


@pytest.fixture
def small_fs(tmp_path):
    """A 16 MiB tmpfs, so that a full disk is real and quick to reach."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_full_is_reported_and_recovered(small_fs, storage_backend):
    path = str(small_fs / "p")
    filler = small_fs / "filler"

    async def fill(engine):
        acked = []
        i = 0
        with pytest.raises(DiskFullError):
            while True:
                await engine.write([(key(i), os.urandom(8192))])
                acked.append(key(i))
                i += 1
                assert i < 100_000, "the disk never filled"
        return acked

    async def main():
        # Small WAL segments, so that new segments are needed while the disk is filling.
        engine = Engine(path, segment_bytes=1 << 20)
        with open(filler, "wb") as f:
            f.write(b"\0" * (10 << 20))
        acked = await fill(engine)
        assert acked
        os.unlink(filler)
        await engine.write([(b"after", b"space is back")])
        assert engine.get(b"after") == b"space is back"
        engine.close()
        return acked

    acked = run(main())
    engine = Engine(path)
    for k in acked:
        assert engine.get(k) is not None
    assert engine.get(b"after") == b"space is back"
    engine.close()
