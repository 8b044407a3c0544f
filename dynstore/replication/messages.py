"""Messages between the replicas of a Multi-Paxos group, and the records they persist.

Every value here is immutable and hashable, so the same objects serve the core, the
simulator and the exhaustive explorer (which hashes whole network states).

Wire format (little-endian, no padding). A *frame* is::

    u32 body_len | u32 crc32c(body) | body
    body = u8 version | u8 type | u64 group | u32 src | u32 dst | ballot | fields of the type
    ballot = u64 round | u32 replica
    entry  = u64 slot | ballot | u8 kind | u32 len | data
             (data of a MEMBERS entry: members it changes | new members)
    members = u16 count | count * (u32 replica | u8 role)
    meta   = u64 index | ballot | members            (a snapshot's position and membership)

A frame whose checksum does not match, whose version this code cannot read, or whose
body does not parse exactly is refused with FrameError; the receiver drops it and
counts it, and the protocol recovers as from a lost message. Versions: a node reads
every version in READ_VERSIONS and writes PROTOCOL_VERSION; a rolling upgrade first
ships code that reads N+1, then code that writes it.

Records (what a replica persists, in order, before sending what depends on them) use
the same body layout with their own types and no addresses:

    HardState(promised, commit)   the highest ballot promised; the commit index known
    Entries(entries)              accepted entries; the first one's slot truncates the log
    SnapshotMeta(index, ...)      the log up to index is in a snapshot; entries <= index go
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

import crc32c

from dynstore.limits import FRAME_BYTES_MAX
from dynstore.replication.errors import FrameError

PROTOCOL_VERSION = 1
READ_VERSIONS = frozenset({1})

# Roles of a member. Storage replicas hold the tree and may lead; log replicas hold only
# the recent log, count in quorums and never lead.
STORAGE = 1
LOG = 2

# Kinds of log entry.
NOOP = 0  # fills a slot a new leader found empty, or opens its ballot
COMMAND = 1  # opaque bytes for the state machine
MEMBERS = 2  # a membership change (encode_change), effective once in the log


class Ballot(NamedTuple):
    round: int
    replica: int


ZERO_BALLOT = Ballot(0, 0)

Members = tuple  # sorted tuple of (replica, role) pairs


class Entry(NamedTuple):
    slot: int
    ballot: Ballot
    kind: int
    data: bytes


class SnapshotMeta(NamedTuple):
    index: int  # last slot covered by the snapshot
    ballot: Ballot  # ballot of the entry at index, for the log-matching check after it
    members: Members  # membership in effect at index


class HardState(NamedTuple):
    promised: Ballot
    commit: int


class Entries(NamedTuple):
    entries: tuple


@dataclass(frozen=True, slots=True)
class PreVote:
    """Would you support a campaign at this ballot? Changes no state at the receiver."""
    group: int
    src: int
    dst: int
    ballot: Ballot
    commit: int  # the asker's commit index: a peer refuses one too far behind to lead


@dataclass(frozen=True, slots=True)
class PreVoteReply:
    group: int
    src: int
    dst: int
    ballot: Ballot  # the ballot asked about
    granted: bool


@dataclass(frozen=True, slots=True)
class Prepare:
    """Phase 1a over every slot from from_slot on."""
    group: int
    src: int
    dst: int
    ballot: Ballot
    from_slot: int


@dataclass(frozen=True, slots=True)
class Promise:
    """Phase 1b: a promise when promised == ballot, else a refusal naming the higher promise."""
    group: int
    src: int
    dst: int
    ballot: Ballot
    promised: Ballot
    commit: int
    first_slot: int  # first slot still in the log: earlier ones are only in a snapshot
    entries: tuple  # accepted entries from max(from_slot, first_slot) on


@dataclass(frozen=True, slots=True)
class Accept:
    """Phase 2a for entries after prev_slot; with no entries, a heartbeat."""
    group: int
    src: int
    dst: int
    ballot: Ballot
    prev_slot: int
    prev_ballot: Ballot
    commit: int  # the leader's commit index, never past what this message proves matches
    ts: float  # the leader's clock at send, echoed back to extend its lease
    entries: tuple


@dataclass(frozen=True, slots=True)
class Accepted:
    """Phase 2b. ok: the log matches the leader's up to slot; else slot is a hint to resend after."""
    group: int
    src: int
    dst: int
    ballot: Ballot  # the ballot of the Accept answered
    promised: Ballot  # the replier's promise: above ballot means a newer leader exists
    ok: bool
    slot: int
    ts: float


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """One piece of a snapshot stream (the bytes of Engine.snapshot() chunks)."""
    group: int
    src: int
    dst: int
    ballot: Ballot
    meta: SnapshotMeta
    seq: int
    last: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class Abdicate:
    """The leader of ``ballot`` stepped down and claims no lease under it any more: a replica
    still promised to it stops refusing other ballots, and ``successor`` campaigns at once."""
    group: int
    src: int
    dst: int
    ballot: Ballot
    successor: int


Message = PreVote | PreVoteReply | Prepare | Promise | Accept | Accepted | SnapshotChunk | Abdicate

_FRAME = struct.Struct("<II")
_HEADER = struct.Struct("<BBQIIQI")
_BALLOT = struct.Struct("<QI")
_ENTRY = struct.Struct("<QQIBI")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")
_MEMBER = struct.Struct("<IB")

# Field layouts after the header, by type code. "b" ballot, "q" u64, "?" bool, "d" f64,
# "E" entries, "M" snapshot meta, "y" bytes.
_LAYOUTS = {
    PreVote: (1, "q"),
    PreVoteReply: (2, "?"),
    Prepare: (3, "q"),
    Promise: (4, "bqqE"),
    Accept: (5, "qbqdE"),
    Accepted: (6, "b?qd"),
    SnapshotChunk: (7, "Mq?y"),
    Abdicate: (8, "q"),
}
_RECORD_LAYOUTS = {HardState: (101, "bq"), Entries: (102, "E"), SnapshotMeta: (103, "qbm")}
_BY_CODE = {code: (cls, layout) for cls, (code, layout) in (_LAYOUTS | _RECORD_LAYOUTS).items()}


def encode_members(members: Members) -> bytes:
    return _U16.pack(len(members)) + b"".join(_MEMBER.pack(r, role) for r, role in members)


def _put(out: list, kind: str, value) -> None:
    if kind == "b":
        out.append(_BALLOT.pack(*value))
    elif kind == "q":
        out.append(_U64.pack(value))
    elif kind == "?":
        out.append(_U8.pack(1 if value else 0))
    elif kind == "d":
        out.append(_F64.pack(value))
    elif kind == "y":
        out.append(_U32.pack(len(value)))
        out.append(value)
    elif kind == "m":
        out.append(encode_members(value))
    elif kind == "M":
        out.append(_U64.pack(value.index) + _BALLOT.pack(*value.ballot) + encode_members(value.members))
    else:  # "E"
        out.append(_U32.pack(len(value)))
        for e in value:
            out.append(_ENTRY.pack(e.slot, e.ballot.round, e.ballot.replica, e.kind, len(e.data)))
            out.append(e.data)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int):
        self.buf = buf
        self.pos = pos

    def unpack(self, st: struct.Struct) -> tuple:
        if self.pos + st.size > len(self.buf):
            raise FrameError("frame body ends inside a field")
        values = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return values

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise FrameError("frame body ends inside a byte string")
        data = self.buf[self.pos:self.pos + n]
        self.pos += n
        return bytes(data)

    def members(self) -> Members:
        (count,) = self.unpack(_U16)
        return tuple(self.unpack(_MEMBER) for _ in range(count))

    def get(self, kind: str):
        if kind == "b":
            return Ballot(*self.unpack(_BALLOT))
        if kind == "q":
            return self.unpack(_U64)[0]
        if kind == "?":
            return self.unpack(_U8)[0] != 0
        if kind == "d":
            return self.unpack(_F64)[0]
        if kind == "y":
            return self.take(self.unpack(_U32)[0])
        if kind == "m":
            return self.members()
        if kind == "M":
            index = self.unpack(_U64)[0]
            return SnapshotMeta(index, Ballot(*self.unpack(_BALLOT)), self.members())
        (count,) = self.unpack(_U32)
        entries = []
        for _ in range(count):
            slot, rnd, rep, kind_, n = self.unpack(_ENTRY)
            entries.append(Entry(slot, Ballot(rnd, rep), kind_, self.take(n)))
        return tuple(entries)


def encode_change(old: Members, new: Members) -> bytes:
    """A MEMBERS entry: the membership it changes, then the new one."""
    return encode_members(old) + encode_members(new)


def decode_change(data: bytes) -> tuple[Members, Members]:
    reader = _Reader(data, 0)
    base = reader.members()
    members = reader.members()
    if reader.pos != len(data):
        raise FrameError("trailing bytes after a membership")
    return base, members


def _body(obj) -> bytes:
    cls = type(obj)
    if cls in _LAYOUTS:
        code, layout = _LAYOUTS[cls]
        out = [_HEADER.pack(PROTOCOL_VERSION, code, obj.group, obj.src, obj.dst, *obj.ballot)]
        values = [getattr(obj, name) for name in obj.__dataclass_fields__][4:]
    else:
        code, layout = _RECORD_LAYOUTS[cls]
        out = [_U8.pack(PROTOCOL_VERSION) + _U8.pack(code)]
        values = list(obj)
    for kind, value in zip(layout, values, strict=True):
        _put(out, kind, value)
    return b"".join(out)


def encode(obj) -> bytes:
    """One frame holding a message or a record, checksummed."""
    body = _body(obj)
    return _FRAME.pack(len(body), crc32c.crc32c(body)) + body


def frame_length(buf: bytes | memoryview, pos: int = 0) -> int | None:
    """Total length of the frame starting at pos, or None if its header is not all there yet."""
    if len(buf) - pos < _FRAME.size:
        return None
    body_len, _ = _FRAME.unpack_from(buf, pos)
    if body_len > FRAME_BYTES_MAX:
        raise FrameError(f"frame of {body_len} bytes exceeds the {FRAME_BYTES_MAX} byte limit")
    return _FRAME.size + body_len


def decode(frame: bytes):
    """The message or record in one whole frame; FrameError if it is damaged or unreadable."""
    if len(frame) < _FRAME.size + 2:
        raise FrameError("frame shorter than its header")
    body_len, crc = _FRAME.unpack_from(frame, 0)
    if body_len != len(frame) - _FRAME.size:
        raise FrameError("frame length does not match its header")
    body = memoryview(frame)[_FRAME.size:]
    if crc32c.crc32c(body) != crc:
        raise FrameError("frame checksum mismatch")
    version, code = body[0], body[1]
    if version not in READ_VERSIONS:
        raise FrameError(f"protocol version {version} is not readable here (reads {sorted(READ_VERSIONS)})")
    if code not in _BY_CODE:
        raise FrameError(f"unknown frame type {code}")
    cls, layout = _BY_CODE[code]
    if cls in _LAYOUTS:
        reader = _Reader(body, 0)
        _, _, group, src, dst, rnd, rep = reader.unpack(_HEADER)
        head = [group, src, dst, Ballot(rnd, rep)]
    else:
        reader = _Reader(body, 2)
        head = []
    obj = cls(*head, *(reader.get(kind) for kind in layout))
    if reader.pos != len(body):
        raise FrameError("trailing bytes after the last field")
    return obj
