"""Crash the log with kill -9 while many threads append; every acknowledged record must survive.

A child process appends from several threads and prints each record it saw become
durable. The parent kills it at a random moment, reopens the log and checks that (a)
every acknowledged record is present and intact and (b) the log is a prefix of what was
appended: every record is one the child appended, each thread's records appear in order
with no gaps. Rounds accumulate in one log, so recovery also runs over its own output.
Payloads are derived from (round, thread, seq), which each record carries, so content
is checked without trusting anything the crashed process wrote elsewhere.
"""
import hashlib
import os
import random
import struct
import subprocess
import sys
import time

import pytest

from conftest import long_mode
from dynstore.storage.wal import WAL

SEGMENT = 128 * 1024  # small, so crashes also land around segment rolls
THREADS = 8
KEY = struct.Struct("<III")  # round, thread, seq

CHILD = r"""
import hashlib, os, random, struct, sys, threading
from dynstore.storage.wal import WAL

directory, round_, threads, segment = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[5])))
from test_wal_crash import make_payload, digest

wal = WAL(directory, segment_bytes=segment)
out_lock = threading.Lock()
print("ready", wal.last_lsn, flush=True)

def appender(thread):
    rng = random.Random(round_ * 1000 + thread)
    seq = 0
    while True:
        body = make_payload(round_, thread, seq, rng.randrange(0, 3000))
        lsn = wal.append(round_, thread, body)
        wal.wait_durable(lsn)
        with out_lock:
            sys.stdout.write(f"{lsn} {round_} {thread} {seq} {digest(body)} .\n")
            sys.stdout.flush()
        seq += 1

for t in range(threads):
    threading.Thread(target=appender, args=(t,), daemon=True).start()
threading.Event().wait()
"""


def make_payload(round_: int, thread: int, seq: int, size: int) -> bytes:
    key = KEY.pack(round_, thread, seq)
    body = hashlib.blake2b(key + size.to_bytes(4, "little")).digest() * (size // 64 + 1)
    return key + size.to_bytes(4, "little") + body[:size]


def digest(payload: bytes) -> str:
    return hashlib.blake2b(payload, digest_size=8).hexdigest()


def check_payload(payload: bytes) -> tuple[int, int, int]:
    round_, thread, seq = KEY.unpack_from(payload)
    size = int.from_bytes(payload[KEY.size : KEY.size + 4], "little")
    assert payload == make_payload(round_, thread, seq, size), "record content is not what was appended"
    return round_, thread, seq


def run_round(directory, round_: int, rng: random.Random, acked: dict) -> int:
    script = directory.parent / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(directory), str(round_), str(THREADS), str(SEGMENT), __file__],
        stdout=subprocess.PIPE, env=env)
    ready = proc.stdout.readline().split()
    assert ready[0] == b"ready", ready
    time.sleep(rng.uniform(0.0, 0.4))
    proc.kill()  # SIGKILL: no flush, no close
    out, _ = proc.communicate()
    for line in out.decode().splitlines():
        fields = line.split()
        if len(fields) != 6 or fields[5] != ".":
            continue  # the line the kill cut short
        lsn, r, t, s = (int(x) for x in fields[:4])
        acked[lsn] = ((r, t, s), fields[4])
    return int(ready[1])


def check_log(directory, acked: dict, checked: int, seed: int) -> int:
    """Reopen the log and check it; records up to `checked` passed in an earlier round."""
    with WAL(directory, segment_bytes=SEGMENT) as wal:
        last = wal.last_lsn
        assert last >= max(acked, default=0), f"seed {seed}: acknowledged records lost"
        records = {r.lsn: r for r in wal.read(checked + 1)}
    assert list(records) == list(range(checked + 1, last + 1))
    next_seq: dict[tuple[int, int], int] = {}  # (round, thread) -> next seq; rounds never mix
    for rec in records.values():
        key = check_payload(rec.payload)
        assert (rec.term, rec.type) == key[:2]
        expected = next_seq.get(key[:2], 0)
        assert key[2] == expected, f"seed {seed}: thread {key[:2]} skipped from seq {expected} to {key[2]}"
        next_seq[key[:2]] = expected + 1
    for lsn, (key, dig) in acked.items():
        if lsn > checked:
            assert check_payload(records[lsn].payload) == key and digest(records[lsn].payload) == dig
    return last


@pytest.mark.parametrize("rounds", [20, pytest.param(200, marks=pytest.mark.long)])
def test_kill_during_appends_loses_nothing_acknowledged(storage_backend, tmp_path, rounds):
    if rounds == 20 and long_mode():
        pytest.skip("the --long run covers this with 200 rounds")
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")  # shown on failure
    rng = random.Random(seed)
    directory = tmp_path / "wal"
    acked: dict[int, tuple[tuple[int, int, int], str]] = {}
    checked = 0
    for round_ in range(1, rounds + 1):
        start = run_round(directory, round_, rng, acked)
        assert start == checked, f"seed {seed}: the child found {start} records, the last check {checked}"
        checked = check_log(directory, acked, checked, seed)
    assert len(acked) > rounds  # the child did get work done between kills
