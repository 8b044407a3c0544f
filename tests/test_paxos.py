"""The Multi-Paxos core, scenario by scenario, and its wire and record formats.

Scenarios run a three-replica group (storage 0 and 1, log replica 2) on the explorer's
exact clocks: explore.settle delivers every message in order and ticks when idle.
"""
import random
import struct

import crc32c
import pytest

from dynstore.limits import COMMIT_RECORD_LAG_MAX
from dynstore.replication import explore
from dynstore.replication.errors import Busy, FrameError, NotLeader
from dynstore.replication.explore import collect, initial, settle
from dynstore.replication.messages import (LOG, MEMBERS, STORAGE, ZERO_BALLOT, Abdicate, Accept, Accepted, Ballot,
                                           Entries, Entry, HardState, PreVote, PreVoteReply, Prepare,
                                           Promise, SnapshotChunk, SnapshotMeta, decode, encode)
from dynstore.replication.paxos import LEADER, Paxos, Store, Timing

E = (Entry(3, Ballot(2, 1), 1, b"cmd"), Entry(4, Ballot(2, 1), MEMBERS, bytes(4)))
META = SnapshotMeta(7, Ballot(1, 0), ((0, STORAGE), (2, LOG)))
EXAMPLES = [
    PreVote(5, 1, 2, Ballot(3, 1), 9),
    PreVoteReply(5, 2, 1, Ballot(3, 1), True),
    Prepare(5, 1, 2, Ballot(3, 1), 10),
    Promise(5, 2, 1, Ballot(3, 1), Ballot(3, 1), 9, 4, E),
    Accept(5, 1, 2, Ballot(3, 1), 2, Ballot(1, 0), 2, 12.5, E),
    Accepted(5, 2, 1, Ballot(3, 1), Ballot(4, 0), False, 7, 12.5),
    SnapshotChunk(5, 1, 2, Ballot(3, 1), META, 0, True, b"zstd bytes"),
    Abdicate(5, 1, 2, Ballot(3, 1), 0),
    HardState(Ballot(3, 1), 9),
    Entries(E),
    META,
]


@pytest.mark.parametrize("obj", EXAMPLES, ids=lambda o: type(o).__name__)
def test_every_message_and_record_round_trips(obj):
    assert decode(encode(obj)) == obj


# EXAMPLES as frames (hex), in the layout messages.py documents: what a log on disk or a peer
# running older code holds.
WIRE = [
    "260000004d50e91b0101050000000000000001000000020000000300000000000000010000000900000000000000",
    "1f000000f3617eb501020500000000000000020000000100000003000000000000000100000001",
    "2600000091428b3b0103050000000000000001000000020000000300000000000000010000000a00000000000000",
    "770000008feb8618010405000000000000000200000001000000030000000000000001000000030000000000000001000000"
    "090000000000000004000000000000000200000003000000000000000200000000000000010000000103000000636d640400"
    "000000000000020000000000000001000000020400000000000000",
    "7f0000004fa65b82010505000000000000000100000002000000030000000000000001000000020000000000000001000000"
    "0000000000000000020000000000000000000000000029400200000003000000000000000200000000000000010000000103"
    "000000636d640400000000000000020000000000000001000000020400000000000000",
    "3b000000797a6381010605000000000000000200000001000000030000000000000001000000040000000000000000000000"
    "0007000000000000000000000000002940",
    "55000000ef4a9a20010705000000000000000100000002000000030000000000000001000000070000000000000001000000"
    "00000000000000000200000000000102000000020000000000000000010a0000007a737464206279746573",
    "26000000d595250d0108050000000000000001000000020000000300000000000000010000000000000000000000",
    "16000000c08cfcdc01650300000000000000010000000900000000000000",
    "3f00000020ff823701660200000003000000000000000200000000000000010000000103000000636d640400000000000000"
    "020000000000000001000000020400000000000000",
    "22000000fed2ee9801670700000000000000010000000000000000000000020000000000010200000002",
]


def test_frames_keep_their_layout():
    assert [encode(obj).hex() for obj in EXAMPLES] == WIRE
    assert [decode(bytes.fromhex(frame)) for frame in WIRE] == EXAMPLES


@pytest.mark.parametrize("obj", EXAMPLES, ids=lambda o: type(o).__name__)
def test_a_body_cut_short_under_a_good_checksum_is_refused(obj):
    body = encode(obj)[8:]
    for end in range(2, len(body)):
        cut = body[:end]
        with pytest.raises(FrameError):
            decode(struct.pack("<II", len(cut), crc32c.crc32c(cut)) + cut)


def test_damaged_frames_are_refused():
    frame = encode(EXAMPLES[4])
    rng = random.Random(1)
    for _ in range(200):
        b = bytearray(frame)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        with pytest.raises(FrameError):
            decode(bytes(b))
    with pytest.raises(FrameError):
        decode(frame[:-1])


def test_unknown_protocol_version_is_refused():
    body = bytearray(encode(EXAMPLES[0])[8:])
    body[0] = 99
    with pytest.raises(FrameError, match="version 99"):
        decode(struct.pack("<II", len(body), crc32c.crc32c(bytes(body))) + bytes(body))


def _leader(w):
    leaders = [r for r, c in w.cores.items() if c.role == LEADER]
    assert len(leaders) == 1, {r: c.role for r, c in w.cores.items()}
    return leaders[0]


def _elected():
    return settle(initial(), 6)


def test_a_storage_replica_is_elected_and_commits():
    w = _elected()
    leader = _leader(w)
    assert leader in (0, 1)  # never the log replica
    slot = w.cores[leader].propose(b"x", float(w.clock))
    collect(w, leader)
    settle(w, w.clock + 2)
    for core in w.cores.values():
        assert core.commit >= slot and core.store.entry(slot).data == b"x"


def test_the_leader_sends_before_its_write_is_durable_and_counts_itself_only_after():
    w = _elected()
    leader = _leader(w)
    peer = 1 - leader
    core = w.cores[leader]
    now = float(w.clock)
    slot = core.propose(b"x", now)
    rd = core.ready()
    assert any(e.slot == slot for r in rd.persist if isinstance(r, Entries) for e in r.entries)
    accept = next(m for m in rd.send_first if m.dst == peer)
    assert not rd.messages and any(e.slot == slot for e in accept.entries)
    # The storage peer takes it and answers once its own copy is durable; the log replica is slow.
    w.cores[peer].step(accept, now)
    peer_rd = w.cores[peer].ready()
    assert peer_rd.persist and not peer_rd.send_first
    (accepted,) = peer_rd.messages
    core.step(accepted, now)
    assert core.commit < slot  # one durable copy of three: the leader's own is not yet
    core.persisted(rd.durable)
    assert core.commit == slot


def test_strong_reads_need_the_leader_and_its_lease():
    w = _elected()
    leader = _leader(w)
    follower = 1 - leader
    assert w.cores[leader].read(float(w.clock)) == w.cores[leader].commit
    with pytest.raises(NotLeader) as exc:
        w.cores[follower].read(float(w.clock))
    assert exc.value.leader == leader
    with pytest.raises(NotLeader):
        w.cores[follower].propose(b"x", float(w.clock))
    # Cut off, the leader keeps its lease only while a majority's last acknowledgement allows.
    settle(w, w.clock + 2, cut=leader)
    with pytest.raises(NotLeader):
        w.cores[leader].read(float(w.clock))


def test_new_leader_only_after_old_lease_ran_out():
    w = _elected()
    old = _leader(w)
    lease_end = w.cores[old]._quorum_ack(float(w.clock)) + w.cores[old].timing.lease
    while w.clock < 20:
        settle(w, w.clock + 1, cut=old)
        for r, core in w.cores.items():
            if r != old and core.role == LEADER:
                assert w.clock >= lease_end
                assert not w.cores[old].lease_valid(float(w.clock))
    assert w.cores[1 - old].role == LEADER


def test_a_quiet_group_beats_slower_and_a_late_tick_keeps_the_beat():
    w = settle(_elected(), 6)
    leader = _leader(w)
    core = w.cores[leader]
    core.timing = Timing(election_timeout=2.0, heartbeat_interval=0.25)  # a quiet group beats every 0.5

    def beats(start: float, ticks: int, answered: bool) -> list[float]:
        """Tick every 0.1 (late for most beats, as a shell ticking on a grid is); when beats went out."""
        sent = []
        for k in range(1, ticks + 1):
            now = start + k / 10
            core.tick(now)
            accepts = [m for m in core.ready().send_first if type(m) is Accept]
            if accepts:
                sent.append(round(now - start, 1))
            for m in accepts if answered else ():
                w.cores[m.dst].step(m, now)
                for reply in w.cores[m.dst].ready().messages:
                    core.step(reply, now)
        return sent

    start = float(w.clock)
    assert core._quiet() and beats(start, 10, answered=True) == [0.5, 1.0]
    core.propose(b"x", start + 1.0)  # sent at once; until it commits everywhere the group is not quiet
    assert core.ready().send_first
    # Due at 1.25, 1.5, 1.75, 2.0: counted from when each was due, not from the late tick.
    assert beats(start + 1.0, 10, answered=False) == [0.3, 0.5, 0.8, 1.0]


def test_an_isolated_replica_does_not_disturb_the_group():
    w = _elected()
    leader = _leader(w)
    follower = 1 - leader
    ballot = w.cores[leader].ballot
    rounds = w.cores[follower].store.promised.round
    settle(w, w.clock + 20, cut=follower)
    assert w.cores[follower].store.promised.round == rounds  # pre-vote never succeeded
    settle(w, w.clock + 3)
    assert w.cores[leader].role == LEADER and w.cores[leader].ballot == ballot


def test_a_log_replica_never_campaigns():
    w = _elected()
    log = w.cores[2]
    rounds = log.store.promised.round
    for _ in range(20):  # both storage replicas are gone: the log replica waits, it never leads
        w.clock += 1
        log.tick(float(w.clock))
        assert not log.ready().messages
    assert log.role == "follower" and log.store.promised.round == rounds


def test_membership_changes_one_at_a_time_through_the_log():
    w = _elected()
    leader = _leader(w)
    core = w.cores[leader]
    now = float(w.clock)
    with pytest.raises(ValueError):
        core.propose_members(((0, STORAGE), (1, STORAGE), (3, LOG), (4, LOG)), now)  # two at once
    slot = core.propose_members(((0, STORAGE), (1, STORAGE)), now)  # remove the log replica
    with pytest.raises(Busy):
        core.propose_members(((0, STORAGE), (1, STORAGE), (2, LOG)), now)
    collect(w, leader)
    settle(w, w.clock + 2)
    assert core.commit >= slot and core.members == ((0, STORAGE), (1, STORAGE))
    assert w.cores[1 - leader].members == core.members
    core.propose_members(((0, STORAGE), (1, STORAGE), (2, LOG)), float(w.clock))
    collect(w, leader)
    settle(w, w.clock + 2)
    assert all(c.members == ((0, STORAGE), (1, STORAGE), (2, LOG)) for c in w.cores.values())


def test_a_leader_that_removes_itself_takes_no_more_commands():
    w = _elected()
    old = _leader(w)
    other = 1 - old
    core = w.cores[old]
    before = core.propose(b"before", float(w.clock))
    change = core.propose_members(((other, STORAGE), (2, LOG)), float(w.clock))
    # A command after the change could commit once this replica has left the group, with no
    # one to tell it: it is refused, as at a replica that does not lead.
    with pytest.raises(NotLeader) as exc:
        core.propose(b"after", float(w.clock))
    assert exc.value.leader is None
    collect(w, old)
    settle(w, w.clock + 6)
    assert core.commit >= change > before and core.role != LEADER
    assert w.cores[other].role == LEADER and w.cores[other].members == ((other, STORAGE), (2, LOG))
    assert core.store.entry(before).data == b"before"


def _deliver_all(w):
    """Deliver every message in flight, and what they cause, with the clock standing still."""
    while w.net:
        m = decode(w.net[0])
        w.net = w.net[1:]
        w.cores[m.dst].step(m, float(w.clock))
        collect(w, m.dst)


def test_a_leader_knows_which_peer_holds_the_most_of_its_log():
    w = settle(_elected(), 6)
    leader = _leader(w)
    peer = 1 - leader
    core = w.cores[leader]
    assert core.matched(peer) == core.matched(2) == core.commit
    slot = core.propose(b"x", float(w.clock))
    collect(w, leader)
    settle(w, w.clock + 1, cut=2)  # the log replica hears nothing
    assert core.commit == slot and core.matched(peer) == slot > core.matched(2)
    assert w.cores[peer].matched(leader) == 0  # only a leader keeps track


def test_a_leader_hands_over_to_a_peer_holding_its_whole_log_without_waiting_an_election():
    w = _elected()
    old = _leader(w)
    new = 1 - old
    core = w.cores[old]
    with pytest.raises(ValueError):
        core.transfer(2, float(w.clock))  # a log replica never leads
    core.propose(b"in flight", float(w.clock))
    assert not core.transfer(new, float(w.clock))  # not while an entry is uncommitted
    assert core.role == LEADER
    collect(w, old)
    _deliver_all(w)
    assert core.transfer(new, float(w.clock))
    assert core.role != LEADER and not core.lease_valid(float(w.clock))
    with pytest.raises(NotLeader):
        core.read(float(w.clock))
    collect(w, old)
    _deliver_all(w)  # no tick: the successor needs no election timeout
    assert w.cores[new].role == LEADER
    settle(w, w.clock + 2)
    assert _leader(w) == new and w.cores[new].read(float(w.clock)) >= 2
    assert all(c.store.entry(2).data == b"in flight" for c in w.cores.values())


def test_an_abdication_of_an_older_ballot_leaves_the_lease_of_a_newer_one():
    w = _elected()
    leader = _leader(w)
    follower = w.cores[1 - leader]
    stale = Ballot(w.cores[leader].ballot.round - 1, 1 - leader)
    follower.step(Abdicate(0, leader, 1 - leader, stale, 1 - leader), float(w.clock))
    assert follower.role != LEADER and follower.window_until > w.clock  # still refuses other ballots
    assert not follower.ready().messages  # and did not campaign


def test_a_lagging_replica_gets_a_snapshot_when_its_log_is_gone():
    w = _elected()
    leader = _leader(w)
    lagging = 1 - leader
    core = w.cores[leader]
    for i in range(5):
        core.propose(b"v%d" % i, float(w.clock))
        collect(w, leader)
        settle(w, w.clock + 1, cut=lagging)
    core.compact(core.applied)
    w.clock += 1
    now = float(w.clock)
    core.tick(now)
    # The heartbeat finds the gap; the answer shows the peer needs slots the log no longer has.
    probe = next(m for m in core.ready().send_first if m.dst == lagging)
    w.cores[lagging].step(probe, now)
    (refusal,) = w.cores[lagging].ready().messages
    assert not refusal.ok and refusal.slot < core.store.snap.index
    core.step(refusal, now)
    rd = core.ready()
    assert rd.snapshots == [(lagging, core.store.snap)]
    # The shell ships its snapshot; the lagging replica's shell installs it and says so.
    chunk = SnapshotChunk(0, leader, lagging, core.ballot, core.store.snap, 0, True, b"state")
    w.cores[lagging].install_snapshot(chunk, float(w.clock))
    assert w.cores[lagging].commit == core.store.snap.index
    w.net = tuple(sorted(w.net + tuple(encode(m) for m in rd.send_first + rd.messages)))
    collect(w, lagging)
    settle(w, w.clock + 2)
    assert w.cores[lagging].commit == core.commit


def test_recovery_from_persisted_records_rebuilds_the_same_state():
    # Keep what each replica persisted from the start, in order, and replay it.
    w = initial()
    records = {r: [] for r in w.cores}

    def persist(rid):
        core = w.cores[rid]
        rd = core.ready()
        while rd:
            records[rid] += rd.persist
            w.net = tuple(sorted(w.net + tuple(encode(x) for x in rd.send_first + rd.messages)))
            core.persisted(rd.durable)
            rd = core.ready()

    for _ in range(30):
        if w.net:
            m = decode(w.net[0])
            w.net = w.net[1:]
            w.cores[m.dst].step(m, float(w.clock))
            persist(m.dst)
        else:
            w.clock += 1
            for rid, core in w.cores.items():
                core.tick(float(w.clock))
                persist(rid)
    leader = _leader(w)
    for rid, core in w.cores.items():
        bootstrap = [SnapshotMeta(0, ZERO_BALLOT, explore.MEMBERS)]
        store = Store.replay(bootstrap + [decode(encode(r)) for r in records[rid]])
        assert store.entries == core.store.entries and store.promised == core.store.promised
        # The commit index is recorded along with other records, or alone once far enough behind.
        assert core.store.commit - COMMIT_RECORD_LAG_MAX < store.commit <= core.store.commit
        # A restarted replica refuses any ballot for a full timeout: it forgot whom it backed.
        restarted = Paxos(rid, store, now=float(w.clock), rng=explore.NoJitter(), timing=explore.TIMING)
        restarted.step(Prepare(0, leader, rid, Ballot(99, leader), 1), float(w.clock) + 1)
        reply = restarted.ready().messages[0]
        assert reply.promised != Ballot(99, leader)
    assert leader in (0, 1)


def test_the_log_is_not_tracked_by_the_garbage_collector():
    # A full collection walks every object it tracks; a log of tuple subclasses (Entry,
    # Ballot) would be tens of thousands of them per node, walked every few seconds.
    import gc
    store = Store.replay([SnapshotMeta(0, ZERO_BALLOT, ()), Entries(tuple(
        Entry(slot, Ballot(1 + slot // 100, 2), 0, b"data") for slot in range(1, 1001)))])
    gc.collect()  # a pass stops tracking a ballot; the next, the entries that hold it
    gc.collect()
    assert not any(gc.is_tracked(e) or gc.is_tracked(e[1]) for e in store.entries)
    assert store.entry(150) == Entry(150, Ballot(2, 2), 0, b"data") and type(store.entry(150).ballot) is Ballot
    assert store.ballot_at(1000) == Ballot(11, 2) and store.slice(999, 2000) == (
        Entry(999, Ballot(10, 2), 0, b"data"), Entry(1000, Ballot(11, 2), 0, b"data"))
