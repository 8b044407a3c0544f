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

import operator
import struct
from dataclasses import dataclass
from typing import Callable, NamedTuple

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
_ENTRY = struct.Struct("<QQIBI")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_MEMBER = struct.Struct("<IB")

# Field layouts after the header, by type code. "b" ballot, "q" u64, "?" bool, "d" f64,
# "E" entries, "M" snapshot meta, "m" members, "y" bytes.
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
_MESSAGE_HEADER = "qiib"  # group, src, dst ("i": u32), ballot: the fields every message starts with
_FIXED = {"b": "QI", "q": "Q", "i": "I", "?": "?", "d": "d"}  # struct codes of the fixed-size kinds
_SINGLE = {kind: struct.Struct("<" + code) for kind, code in _FIXED.items()}  # one such field alone


class _Plan(NamedTuple):
    """How one type is laid out: its leading fixed-size fields (after the version and the type
    code) as one struct, packed and unpacked in one call; the fields from the first one of
    variable length on, one by one."""
    cls: type
    code: int
    head: struct.Struct
    fixed: str  # the kinds of the fields in ``head``
    rest: str  # the kinds of the fields after it
    fields: Callable | None  # a message's field values in order; None for a record (a tuple)


def _plan(cls: type, code: int, kinds: str) -> _Plan:
    n = 0
    while n < len(kinds) and kinds[n] in _FIXED:
        n += 1
    head = struct.Struct("<BB" + "".join(_FIXED[k] for k in kinds[:n]))
    fields = None
    if cls in _LAYOUTS:
        names = tuple(cls.__dataclass_fields__)
        assert len(names) == len(kinds), cls
        fields = operator.attrgetter(*names)
    return _Plan(cls, code, head, kinds[:n], kinds[n:], fields)


_PLANS = {cls: _plan(cls, code, _MESSAGE_HEADER + layout) for cls, (code, layout) in _LAYOUTS.items()}
_PLANS.update({cls: _plan(cls, code, layout) for cls, (code, layout) in _RECORD_LAYOUTS.items()})
_BY_CODE = {plan.code: plan for plan in _PLANS.values()}


def encode_members(members: Members) -> bytes:
    return _U16.pack(len(members)) + b"".join(_MEMBER.pack(r, role) for r, role in members)


def _put(out: list, kind: str, value) -> None:
    """A field after the leading fixed-size ones."""
    if kind in _SINGLE:
        out.append(_SINGLE[kind].pack(*value) if kind == "b" else _SINGLE[kind].pack(value))
    elif kind == "E":
        out.append(_U32.pack(len(value)))
        for e in value:
            out.append(_ENTRY.pack(e.slot, e.ballot.round, e.ballot.replica, e.kind, len(e.data)))
            out.append(e.data)
    elif kind == "y":
        out.append(_U32.pack(len(value)))
        out.append(value)
    elif kind == "m":
        out.append(encode_members(value))
    else:  # "M"
        _put(out, "q", value.index)
        _put(out, "b", value.ballot)
        out.append(encode_members(value.members))


def _take(buf, pos: int, n: int) -> bytes:
    if pos + n > len(buf):
        raise FrameError("frame body ends inside a byte string")
    return bytes(buf[pos:pos + n])


def _members(buf, pos: int) -> tuple[Members, int]:
    (count,) = _U16.unpack_from(buf, pos)
    pos += _U16.size
    members = []
    for _ in range(count):
        members.append(_MEMBER.unpack_from(buf, pos))
        pos += _MEMBER.size
    return tuple(members), pos


def _get(kind: str, buf, pos: int) -> tuple:
    """A field after the leading fixed-size ones, at ``pos``: (its value, the position after
    it). A field cut short raises struct.error (or FrameError, for a byte string)."""
    if kind in _SINGLE:
        values = _SINGLE[kind].unpack_from(buf, pos)
        return Ballot(*values) if kind == "b" else values[0], pos + _SINGLE[kind].size
    if kind == "E":
        (count,) = _U32.unpack_from(buf, pos)
        pos += _U32.size
        entries = []
        for _ in range(count):
            slot, rnd, rep, kind_, n = _ENTRY.unpack_from(buf, pos)
            pos += _ENTRY.size
            entries.append(Entry(slot, Ballot(rnd, rep), kind_, _take(buf, pos, n)))
            pos += n
        return tuple(entries), pos
    if kind == "y":
        (n,) = _U32.unpack_from(buf, pos)
        return _take(buf, pos + _U32.size, n), pos + _U32.size + n
    if kind == "m":
        return _members(buf, pos)
    (index,) = _U64.unpack_from(buf, pos)  # "M"
    ballot, pos = _get("b", buf, pos + _U64.size)
    members, pos = _members(buf, pos)
    return SnapshotMeta(index, ballot, members), pos


def encode_change(old: Members, new: Members) -> bytes:
    """A MEMBERS entry: the membership it changes, then the new one."""
    return encode_members(old) + encode_members(new)


def decode_change(data: bytes) -> tuple[Members, Members]:
    try:
        base, pos = _members(data, 0)
        members, pos = _members(data, pos)
    except struct.error:
        raise FrameError("membership ends inside a field") from None
    if pos != len(data):
        raise FrameError("trailing bytes after a membership")
    return base, members


def _body(obj) -> bytes:
    plan = _PLANS[type(obj)]
    values = obj if plan.fields is None else plan.fields(obj)
    flat = [PROTOCOL_VERSION, plan.code]
    for kind, value in zip(plan.fixed, values):
        if kind == "b":
            flat += value
        else:
            flat.append(value)
    head = plan.head.pack(*flat)
    if not plan.rest:
        return head
    out = [head]
    for kind, value in zip(plan.rest, values[len(plan.fixed):]):
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
    plan = _BY_CODE.get(code)
    if plan is None:
        raise FrameError(f"unknown frame type {code}")
    try:
        flat = plan.head.unpack_from(body)
        args = []
        i = 2
        for kind in plan.fixed:
            if kind == "b":
                args.append(Ballot(flat[i], flat[i + 1]))
                i += 2
            else:
                args.append(flat[i])
                i += 1
        pos = plan.head.size
        for kind in plan.rest:
            value, pos = _get(kind, body, pos)
            args.append(value)
    except struct.error:
        raise FrameError("frame body ends inside a field") from None
    if pos != len(body):
        raise FrameError("trailing bytes after the last field")
    return plan.cls(*args)
