"""The Multi-Paxos core of a replication group: a pure state machine.

It owns no socket, file, clock, thread or randomness. Inputs are messages (``step``),
proposals (``propose``, ``propose_members``), reads (``read``) and the passing of time
(``tick``); every input carries ``now``, the replica's monotonic clock in seconds, and
jitter comes from the ``rng`` the shell passes in. Outputs are collected until the
shell calls ``ready()``, which hands back a ``Ready``:

    persist     records to make durable, in order (messages.HardState / Entries /
                SnapshotMeta); the core has already applied each to its own Store
    send_first  to send at once, before persist is durable: the leader's Accepts (below)
    messages    to send, and only once every record of this and earlier Readys is durable
    committed   entries to apply to the state machine, in slot order, after persist (a log
                replica's shell, which holds no state machine, only counts them); or at
                once, if apply_first (after those of earlier Readys)
    apply_first every committed entry is already durable in this replica's log (a leader's
                own, counted only once durable): they need not wait for this Ready's
                HardState, which only records how far the commit index got. That record
                rides along with other records, and is written alone only every
                COMMIT_RECORD_LAG_MAX slots or for a committed membership change: a commit
                index found behind at recovery is learnt again from the leader
    snapshots   (peer, meta): that peer needs our snapshot, the log it lacks is gone
    durable     a token to hand back to ``persisted`` once this Ready's persist is durable

The leader writes to its own disk in parallel with replicating (Raft thesis 10.2.1): an
Accept states nothing about the leader's disk (its ballot was durable before its Prepares
went out, and the commit index it carries already counts only durable acceptances), so
it goes out before the entries it carries are durable here. The leader counts its own
acceptance of a slot toward the quorum only once the shell reports, through
``persisted(rd.durable)``, that the Ready appending it is durable. A leader that crashes
before then has not counted itself: a slot it held only in memory commits only if a
majority of others have it durable, and otherwise a later leader finds it on at most a
minority and may fill the slot otherwise, as with any entry that never reached a quorum.
For the same reason a leader's committed entries are durable here before they are handed
out, so they are applied without waiting for the record of the commit index (a replica
that crashes before that record is durable finds the entries in its log at recovery).
Everything that speaks of the sender's own disk waits for persist as before: promises,
pre-vote answers, Accepted replies, and every message of a replica that is not leading.

Recovery replays the persisted records into ``Store.replay`` and builds a new core on
it: memory and disk go through the same ``Store.apply``, so they cannot disagree.

Protocol. A ballot is (round, replica), unique to the replica that owns it.
- Pre-vote: a storage replica that hears nothing from a leader for a randomized
  election timeout asks its peers whether they would promise a higher ballot; a peer
  says yes only if its own window (below) has passed. A replica cut off alone cannot
  gather the votes, so it never bumps its ballot and disturbs a healthy group.
- Phase 1: the candidate promises itself and sends Prepare(ballot, commit + 1). An
  acceptor promises a higher ballot (persisting it first) and returns every entry it
  accepted from that slot on. With promises from a majority of the membership in
  force (the latest in its log once merged with what it learned, asking any member
  that membership adds), the candidate takes, per slot, the value of the highest ballot,
  fills gaps with no-ops, re-proposes all of it under its own ballot and adds one
  no-op that opens its reign.
- Phase 2: the leader streams Accepts (pipelined, batched, at most INFLIGHT_ENTRIES_MAX
  unacknowledged per peer). An acceptor takes an Accept whose ballot is at least its
  promise when its log matches the leader's at prev_slot (same ballot there, or slot
  already committed); it overwrites entries of other ballots and never touches a
  committed slot. A slot commits once a majority of the membership in force holds it
  in the leader's ballot; the commit index rides on later Accepts and heartbeats, or on
  one the shell asks for soon after it moved (``tell_commit``: in the metadata group, and
  everywhere for a new leader's opening entry). A quiet
  group (all committed, held and told everywhere) beats at a quarter of the election timeout.
- Lease: an acceptor that hears from the leader at local time t refuses every other
  ballot (promise and pre-vote) until t + election_timeout; after a restart it refuses
  for election_timeout, having forgotten whom it backed. The leader holds a lease
  until (send time of the newest Accept acknowledged by a majority) + lease, where
  lease = election_timeout * (1 - drift) / (1 + drift): so a new leader cannot gather
  promises before the old lease has run out on any clock within the drift bound, and
  the old leader, which refuses promises while it leads, steps down once a full
  election timeout passes without a majority. Strongly consistent reads need a valid
  lease and a committed entry of the leader's own ballot (``read``).
- Transfer: a leader hands over (``transfer``) only with every entry committed and the
  successor holding all of them. It steps down, which ends its lease, and sends each peer
  Abdicate(ballot): a replica still promised to that ballot stops refusing others (no lease
  is held under it any more, and none under an older one, which was over before it was
  elected), and the successor campaigns at once, so the group is without a leader for a
  round trip rather than an election timeout. A lost Abdicate costs only that: the group
  elects as after any leader's loss.
- Membership: one change at a time (one voter added or removed) through a MEMBERS
  entry naming the membership it changes (void if that is no longer the one in force
  where it lands), in force as soon as it is in the log (every quorum is a majority of the
  latest membership a replica holds), proposed only after the leader committed in its
  own ballot. Majorities of two memberships one change apart always intersect, so a
  candidate with an older membership still meets a replica that holds the newer one
  and learns it in phase 1. A leader that removed itself proposes no command after the
  change (NotLeader: it could not answer one that commits after it has left) and steps
  down once it commits; one that lost its lead before that may campaign again until it
  commits (it may hold entries the others lack and a peer compacted). Log replicas vote
  and count in quorums but never campaign. Every replica, also one added later, starts from the
  group's founding membership at slot 0 (Store.replay([SnapshotMeta(0, ZERO_BALLOT,
  founding)])), so all read the changes in the log alike; one that joins campaigns only
  once the change adding it reaches it.
- Learning a commit: a follower commits up to a slot the leader told of outside the group's
  messages (``learn``: the request router passes it on from the leader's answer) only if it
  holds that very entry, the same slot in the same ballot, and still follows that ballot.
- Catch-up: every heartbeat is an Accept from the peer's next slot; a peer that lost
  some refuses it (a gap before it) and names what it has, and the leader resends from
  there. If those entries are compacted away, the leader asks the shell to ship its
  snapshot (Ready.snapshots) and keeps probing; the peer's shell calls
  ``install_snapshot`` once the state is in place, which answers the leader.

Faults tolerated: message loss, delay, duplication and reordering (every message is
idempotent or judged by ballot), crashes (nothing that claims durability is sent before it
is durable; a leader's own unsynced entries are not counted toward a quorum), and
clocks that run fast or slow within Timing.drift_max.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dynstore.limits import (ACCEPT_ENTRIES_MAX, CLOCK_DRIFT_MAX, COMMIT_RECORD_LAG_MAX, ELECTION_TIMEOUT_S,
                             HEARTBEAT_INTERVAL_S, INFLIGHT_ENTRIES_MAX, UNCOMMITTED_ENTRIES_MAX)
from dynstore.replication.errors import Busy, NotLeader
from dynstore.replication.messages import (COMMAND, MEMBERS, NOOP, STORAGE, ZERO_BALLOT, Abdicate, Accept,
                                           Accepted, Ballot, Entries, Entry, HardState, Members,
                                           PreVote, PreVoteReply, Prepare, Promise, SnapshotChunk, SnapshotMeta,
                                           decode_change, encode_change)

FOLLOWER = "follower"
PRECANDIDATE = "precandidate"
CANDIDATE = "candidate"
LEADER = "leader"

_NEVER = float("-inf")
_FOREVER = float("inf")


@dataclass(frozen=True)
class Timing:
    election_timeout: float = ELECTION_TIMEOUT_S
    heartbeat_interval: float = HEARTBEAT_INTERVAL_S
    drift_max: float = CLOCK_DRIFT_MAX  # the clock drift rate the lease is safe against

    @property
    def lease(self) -> float:
        # See limits.LEASE_S for the derivation.
        return self.election_timeout * (1 - self.drift_max) / (1 + self.drift_max)

    @property
    def quiet_heartbeat_interval(self) -> float:
        """A leader's beat while its group is quiet (``Paxos._quiet``): four to an election
        timeout keep the lease and the followers' patience with a beat or two to lose; a
        node holds many idle groups, and each beat is two messages per peer."""
        return max(self.heartbeat_interval, self.election_timeout / 4)


class Store:
    """The durable state of one replica, changed only by records.

    The log holds each entry as a plain tuple ``(slot, (round, replica), kind, data)``, and
    hands out ``Entry`` and ``Ballot``. CPython's collector stops tracking a plain tuple of
    ints and bytes, never an instance of a tuple subclass, and every full collection walks all
    it tracks: a node's groups hold tens of thousands of entries between checkpoints, which
    made each full collection a pause of 20 to 100 ms (one every few seconds under writes).
    """

    def __init__(self) -> None:
        self.promised = ZERO_BALLOT  # highest ballot promised
        self.commit = 0  # highest slot known committed (never past the log: it is written after it)
        self.snap = SnapshotMeta(0, ZERO_BALLOT, ())  # what the log starts after
        self.entries: list[tuple] = []  # slots snap.index + 1 .. last_slot, no holes, as plain tuples
        self._ballot = ()  # the plain tuple of the latest entry's ballot, shared by the entries after it

    @classmethod
    def replay(cls, records) -> Store:
        store = cls()
        for record in records:
            store.apply(record)
        return store

    @property
    def first_slot(self) -> int:
        return self.snap.index + 1

    @property
    def last_slot(self) -> int:
        return self.snap.index + len(self.entries)

    def entry(self, slot: int) -> Entry:
        return _entry(self.entries[slot - self.snap.index - 1])

    def ballot_at(self, slot: int) -> Ballot:
        if slot == self.snap.index:
            return self.snap.ballot
        return Ballot._make(self.entries[slot - self.snap.index - 1][1])

    def slice(self, lo: int, hi: int) -> tuple:
        """Entries lo..hi inclusive (clipped to the log)."""
        base = self.snap.index + 1
        return tuple(map(_entry, self.entries[max(lo - base, 0):max(hi - base + 1, 0)]))

    def log(self) -> tuple:
        """Every entry the log holds."""
        return tuple(map(_entry, self.entries))

    def _plain(self, e: Entry) -> tuple:
        ballot = self._ballot
        if ballot != e.ballot:
            ballot = self._ballot = tuple(e.ballot)
        return e.slot, ballot, e.kind, e.data

    def apply(self, record) -> None:
        if type(record) is HardState:
            self.promised, self.commit = record
        elif type(record) is Entries:
            first = record.entries[0].slot
            assert self.snap.index < first <= self.last_slot + 1 and first > self.commit, (first, self.commit)
            del self.entries[first - self.snap.index - 1:]
            self.entries.extend(map(self._plain, record.entries))
        else:
            assert type(record) is SnapshotMeta
            if record.index >= self.last_slot:
                self.entries = []
            else:
                del self.entries[:record.index - self.snap.index]
            self.snap = record
            self.commit = max(self.commit, record.index)


def _entry(plain: tuple) -> Entry:
    slot, ballot, kind, data = plain
    return Entry(slot, Ballot._make(ballot), kind, data)


@dataclass
class Ready:
    persist: list = field(default_factory=list)
    messages: list = field(default_factory=list)
    committed: list = field(default_factory=list)
    snapshots: list = field(default_factory=list)
    send_first: list = field(default_factory=list)
    durable: tuple | None = None  # (leader's ballot, last slot) to pass to Paxos.persisted
    apply_first: bool = False  # committed may be applied at once, before persist is durable

    def __bool__(self) -> bool:
        """Whether the shell has anything to do for it."""
        return bool(self.persist or self.messages or self.committed or self.snapshots or self.send_first)


class _Progress:
    """The leader's view of one peer."""
    __slots__ = ("match", "next", "snapshot_at", "told", "sent_at")

    def __init__(self, next_slot: int):
        self.match = 0  # highest slot known to match the leader's log
        self.next = next_slot  # next slot to send
        self.snapshot_at = _NEVER  # when a snapshot was last asked for this peer
        self.told = 0  # highest commit index sent to this peer
        self.sent_at = _NEVER  # when an Accept last went to this peer


def _ids(members: Members) -> tuple:
    return tuple(r for r, _ in members)


def _role(replica: int, members: Members) -> int | None:
    for r, role in members:
        if r == replica:
            return role
    return None


def _chain(configs: list, entries) -> list:
    """Extend configs, [(slot, members)], with the membership changes among entries, in order.

    A change names the membership it was made from. One that no longer follows the membership
    in force at its slot is void: a later leader may re-propose an old leader's uncommitted
    change after newer ones, and applying it would undo them (and step over one change at a time).
    """
    for e in entries:
        if e.kind == MEMBERS:
            old, members = decode_change(e.data)
            if old == configs[-1][1]:
                configs.append((e.slot, members))
    return configs


def _majority(members: Members, yes) -> bool:
    ids = _ids(members)
    return bool(ids) and 2 * sum(1 for r in ids if r in yes) > len(ids)


class Paxos:
    def __init__(self, replica: int, store: Store, *, now: float, rng, timing: Timing = Timing(),
                 group: int = 0, applied: int | None = None):
        self.id = replica
        self.group = group
        self.timing = timing
        self.rng = rng
        self.store = store
        # Entries handed out for applying. A shell whose state machine is durable on its own
        # (the engine's tree) passes how far it got; otherwise it re-applies from the snapshot.
        self.applied = store.snap.index if applied is None else applied
        assert store.snap.index <= self.applied <= store.commit
        self.role = FOLLOWER
        self.leader: int | None = None
        self.ballot: Ballot | None = None  # ours, while campaigning or leading
        self.max_round = store.promised.round
        self._configs: list[tuple[int, Members]] = []  # (slot, members) of every membership in the log
        self._rebuild_configs()
        # Whom we backed before a restart is forgotten: refuse other ballots for a full timeout
        # (a replica that never promised a ballot backed no one).
        self.window_until = now if self._unused() else now + timing.election_timeout
        self.election_deadline = now
        self._reset_election(now)
        # Outputs gathered for the next Ready.
        self._persist: list = []
        self._messages: list = []
        self._send_first: list = []
        self._snapshots: list = []
        self._commit_persisted = store.commit
        # Campaign state.
        self._votes: set[int] = set()
        self._prevote_ballot = ZERO_BALLOT
        self._promises: dict[int, Promise] = {}
        self._from_slot = 0
        self._asked: set[int] = set()  # peers sent our Prepare
        # Leader state.
        self._progress: dict[int, _Progress] = {}
        self._acked: dict[int, float] = {}  # peer -> newest Accept send time it acknowledged
        self._start_slot = 0  # the no-op that opened our ballot
        self._durable = 0  # the last slot of our log known durable here, while leading
        self._change_slot = 0  # an uncommitted membership entry, or 0
        self._learned: tuple[int, Ballot] | None = None  # (slot, ballot) heard chosen, not held yet (learn)
        self._last_heartbeat = _NEVER
        self._unsent = False  # entries appended since the last broadcast

    # --- what the shell may look at ---------------------------------------------------------

    @property
    def members(self) -> Members:
        return self._configs[-1][1]

    @property
    def commit(self) -> int:
        return self.store.commit

    def members_at(self, slot: int) -> Members:
        """The membership in force at slot (at least the snapshot's index)."""
        return next(m for s, m in reversed(self._configs) if s <= slot)

    def lease_valid(self, now: float) -> bool:
        return (self.role == LEADER and self.store.commit >= self._start_slot
                and now < self._quorum_ack(now) + self.timing.lease)

    # --- inputs -------------------------------------------------------------------------------

    def wake_at(self) -> float:
        """When ``tick`` next has something to do: a leader's next heartbeat (when it also checks
        that a quorum still answers), anyone else's election deadline. After ``tick(now)`` it is
        later than now, so a shell may sleep until then instead of ticking on a fixed beat."""
        return self._next_heartbeat() if self.role == LEADER else self.election_deadline

    def _next_heartbeat(self) -> float:
        timing = self.timing
        return self._last_heartbeat + (timing.quiet_heartbeat_interval if self._quiet() else timing.heartbeat_interval)

    def _quiet(self) -> bool:
        """Every entry is committed and every peer holds all of them and was told the commit
        index: a beat then only keeps the lease, and nothing waits for the next one."""
        store = self.store
        last = store.last_slot
        if store.commit != last:
            return False
        for peer in self._peers():
            pr = self._progress.get(peer)
            if pr is None or pr.match != last or pr.told != last:
                return False
        return True

    def tick(self, now: float) -> None:
        self._last_now = now
        if self.role == LEADER:
            if now - max(self._quorum_ack(now), self._leader_since) > self.timing.election_timeout:
                # No majority for a whole timeout: the lease is long gone; let others lead.
                self._become_follower(now)
            elif now >= self._next_heartbeat():
                self._heartbeat(now)
        elif now >= self.election_deadline:
            if self.role != FOLLOWER:
                self._become_follower(now)
            elif self._can_lead() and now >= self.window_until:
                self._precampaign(now)
            else:
                self._reset_election(now)

    def step(self, m, now: float) -> None:
        assert m.group == self.group and m.dst == self.id, m
        self._last_now = now
        self.max_round = max(self.max_round, m.ballot.round)
        t = type(m)
        if t is Accept:
            self._on_accept(m, now)
        elif t is Accepted:
            self._on_accepted(m, now)
        elif t is Prepare:
            self._on_prepare(m, now)
        elif t is Promise:
            self._on_promise(m, now)
        elif t is PreVote:
            self._on_prevote(m, now)
        elif t is PreVoteReply:
            self._on_prevote_reply(m, now)
        elif t is Abdicate:
            self._on_abdicate(m, now)
        else:
            raise TypeError(f"not a message for the core: {t.__name__}")

    def propose(self, data: bytes, now: float) -> int:
        """Append a command; returns its slot. It is chosen once it comes out in committed,
        at this slot and with this data (a new leader may fill the slot otherwise)."""
        self._last_now = now
        self._check_can_append()
        if self._change_slot and _role(self.id, self._configs[-1][1]) != STORAGE:
            # Our removal is in flight: we step down once it commits, and a command after it that
            # had not committed by then would wait, unanswered, on a replica no one tells of it.
            raise NotLeader(self.id, None)
        return self._append_new(COMMAND, data)

    def propose_members(self, members: Members, now: float) -> int:
        """Change the membership by one voter (added or removed); one change at a time."""
        self._last_now = now
        self._check_can_append()
        if self._change_slot or self.store.commit < self._start_slot:
            raise Busy("a membership change is in flight, or this leader has not committed yet")
        old, new = dict(self.members), dict(members)
        changed = set(old) ^ set(new)
        if len(changed) != 1 or any(old[r] != new[r] for r in set(old) & set(new)):
            raise ValueError(f"a change adds or removes exactly one replica: {self.members} -> {members}")
        if not any(role == STORAGE for role in new.values()):
            raise ValueError("a group needs a storage replica to lead it")
        change = encode_change(self.members, tuple(sorted(new.items())))
        self._change_slot = self._append_new(MEMBERS, change)
        return self._change_slot

    def transfer(self, to: int, now: float) -> bool:
        """Hand the lead to storage member ``to``: once every entry is committed and ``to``
        holds them all, step down, giving up the lease, and send every peer Abdicate, on which
        ``to`` campaigns at once. False, with nothing changed, while that does not hold yet
        (replication brings ``to`` up to date as ever): the shell asks again."""
        self._last_now = now
        if self.role != LEADER:
            raise NotLeader(self.id, self.leader)
        if to == self.id or _role(to, self.members) != STORAGE:
            raise ValueError(f"replica {to} is not another storage member of {self.members}")
        store = self.store
        if self._change_slot or store.commit != store.last_slot or self._progress_of(to).match != store.last_slot:
            return False
        ballot = self.ballot
        self._become_follower(now)
        for peer in self._peers():
            self._send(Abdicate(self.group, self.id, peer, ballot, to))
        return True

    def learn(self, slot: int, ballot: Ballot) -> bool:
        """At a follower: the entry at ``slot`` of the leader of ``ballot``, in that ballot, is
        chosen, as heard outside the group's messages (the leader's answer to a request this
        node forwarded it). If this replica holds that entry it commits up to it, now or as
        the Accept bringing it arrives, rather than with the leader's next Accept: a ballot's
        leader proposes one value per slot, and a replica takes an entry only with the ones
        before it as that leader had them (the Accept's previous slot and ballot), so its log
        up to there is the leader's. True if the commit moved."""
        if self.role != FOLLOWER or slot <= self.store.commit:
            return False
        if self._learned is None or slot > self._learned[0]:
            self._learned = (slot, ballot)
        return self._commit_learned()

    def matched(self, peer: int) -> int:
        """At a leader: the last slot ``peer`` is known to hold as the leader does (0 if none)."""
        pr = self._progress.get(peer) if self.role == LEADER else None
        return pr.match if pr is not None else 0

    def chosen(self, slot: int) -> Ballot | None:
        """At a leader: its ballot, if its entry at ``slot`` is of that ballot and committed (what
        ``learn`` takes at a follower); None otherwise."""
        store = self.store
        if self.role == LEADER and store.snap.index < slot <= store.commit and store.ballot_at(slot) == self.ballot:
            return self.ballot
        return None

    def _commit_learned(self) -> bool:
        slot, ballot = self._learned
        store = self.store
        if slot <= store.commit:
            self._learned = None
        elif slot <= store.last_slot and store.ballot_at(slot) == ballot == store.promised:
            store.commit = slot
            self._learned = None
            return True
        return False

    def read(self, now: float) -> int:
        """Slot a strongly consistent read must see applied before it is served."""
        if not self.lease_valid(now):
            raise NotLeader(self.id, self.leader)
        return self.store.commit

    def install_snapshot(self, m: SnapshotChunk, now: float) -> None:
        """The shell installed the snapshot that m (its last chunk) ends, or already had that much."""
        self._last_now = now
        store = self.store
        if m.meta.index > store.commit:
            # Committed state whoever sent it: the shell already holds it, so the log follows.
            self._record(m.meta)
            self.applied = m.meta.index
        if m.ballot < store.promised:
            return  # from a deposed leader: nothing to answer
        self._on_accept(Accept(self.group, m.src, self.id, m.ballot, m.meta.index, m.meta.ballot, m.meta.index,
                               _NEVER, ()), now)

    def persisted(self, durable: tuple | None) -> None:
        """The Ready whose ``durable`` this is, and every one before it, is durable: a leader
        of that ballot now counts its own acceptance of the log through that slot."""
        if durable is None or self.role != LEADER or durable[0] != self.ballot or durable[1] <= self._durable:
            return
        # Within one ballot the leader's log only grows, so the log through that slot is the one
        # those records wrote.
        self._durable = durable[1]
        self._maybe_commit()

    def compact(self, index: int) -> None:
        """The state through index is in a durable snapshot: drop the log up to there."""
        assert index <= self.applied, (index, self.applied)
        if index <= self.store.snap.index:
            return
        self._record(SnapshotMeta(index, self.store.ballot_at(index), self.members_at(index)))

    def ready(self) -> Ready:
        if self.role == LEADER and self._unsent:
            self._unsent = False
            for peer in self._peers():
                pr = self._progress_of(peer)
                if pr.next - pr.match - 1 < INFLIGHT_ENTRIES_MAX and pr.next <= self.store.last_slot:
                    self._send_append(peer)
            self._maybe_commit()
        store = self.store
        if store.commit != self._commit_persisted and (self._persist or self._commit_record_due()):
            self._commit_persisted = store.commit
            self._persist.append(HardState(store.promised, store.commit))
        committed = []
        # A leader's own entries that it counted itself for are durable here already.
        apply_first = self.role == LEADER and self.applied + 1 >= self._from_slot and store.commit <= self._durable
        if store.commit > self.applied:
            committed = list(store.slice(self.applied + 1, store.commit))
            self.applied = store.commit
        durable = (self.ballot, store.last_slot) if self.role == LEADER else None
        rd = Ready(self._persist, self._messages, committed, self._snapshots, self._send_first, durable,
                   apply_first)
        self._persist, self._messages, self._send_first, self._snapshots = [], [], [], []
        return rd

    def _commit_record_due(self) -> bool:
        """Whether the commit index needs a record of its own now. It rides along with the next
        records (a leader's next entries, a follower's next Accept) for free; alone it costs a
        sync, so it waits until COMMIT_RECORD_LAG_MAX slots went by, or a membership change
        committed: a restarted replica must know which membership is in force (_can_lead)."""
        persisted, commit = self._commit_persisted, self.store.commit
        return commit - persisted >= COMMIT_RECORD_LAG_MAX or any(persisted < s <= commit for s, _ in self._configs)

    # --- acceptor -------------------------------------------------------------------------

    def _on_prevote(self, m: PreVote, now: float) -> None:
        # Membership is not checked: a lagging replica may not know the asker joined (and a
        # removed replica is kept out by the window of every replica that hears the leader).
        granted = now >= self.window_until and m.ballot > self.store.promised and m.commit >= self.store.snap.index
        self._send(PreVoteReply(self.group, self.id, m.src, m.ballot, granted))

    def _on_prepare(self, m: Prepare, now: float) -> None:
        store = self.store
        if m.ballot > store.promised and now >= self.window_until:
            if self.role != FOLLOWER:
                self._become_follower(now)
            self.leader = None
            self._record(HardState(m.ballot, store.commit))
            self._reset_election(now)
        if m.ballot == store.promised:  # also answers a duplicate Prepare again
            entries = store.slice(max(m.from_slot, store.first_slot), store.last_slot)
            self._send(Promise(self.group, self.id, m.src, m.ballot, m.ballot, store.commit,
                               store.first_slot, entries))
        else:
            self._send(Promise(self.group, self.id, m.src, m.ballot, store.promised, store.commit,
                               store.first_slot, ()))

    def _on_accept(self, m: Accept, now: float) -> None:
        store = self.store
        if m.ballot < store.promised:
            self._send(Accepted(self.group, self.id, m.src, m.ballot, store.promised, False, 0, m.ts))
            return
        if self.role != FOLLOWER:
            self._become_follower(now)
        if m.ballot > store.promised:
            self._record(HardState(m.ballot, store.commit))
        self.leader = m.src
        self.window_until = now + self.timing.election_timeout
        self._reset_election(now)
        last = store.last_slot
        if m.prev_slot > last:
            self._send(Accepted(self.group, self.id, m.src, m.ballot, m.ballot, False, last, m.ts))
            return
        if m.prev_slot > store.commit and store.ballot_at(m.prev_slot) != m.prev_ballot:
            self._send(Accepted(self.group, self.id, m.src, m.ballot, m.ballot, False, store.commit, m.ts))
            return
        for i, e in enumerate(m.entries):
            if e.slot <= store.commit:
                # Chosen values never differ between replicas.
                assert e.slot <= store.snap.index or store.entry(e.slot)[2:] == e[2:], (self.id, e)
                continue
            if e.slot > last or store.ballot_at(e.slot) != e.ballot:
                self._append(m.entries[i:])
                break
        match = m.prev_slot + len(m.entries)
        if min(m.commit, match) > store.commit:
            store.commit = min(m.commit, match)
        if self._learned is not None:
            self._commit_learned()
        self._send(Accepted(self.group, self.id, m.src, m.ballot, m.ballot, True, match, m.ts))

    def _on_abdicate(self, m: Abdicate, now: float) -> None:
        # Whoever holds a lease holds it under the ballot promised here (a ballot is elected only
        # once the windows of the one before ran out): if that leader gave it up, none is held.
        if m.ballot != self.store.promised:
            return
        self.window_until = min(self.window_until, now)
        if self.leader == m.src:
            self.leader = None
        if m.successor == self.id and self._can_lead():
            self._campaign(now)

    # --- campaign ---------------------------------------------------------------------------

    def _precampaign(self, now: float) -> None:
        self.role = PRECANDIDATE
        self.leader = None
        self._prevote_ballot = Ballot(self.max_round + 1, self.id)
        self._votes = {self.id}
        self._reset_election(now)
        for peer in self._peers():
            self._send(PreVote(self.group, self.id, peer, self._prevote_ballot, self.store.commit))
        self._on_prevote_reply(None, now)

    def _on_prevote_reply(self, m: PreVoteReply | None, now: float) -> None:
        if self.role != PRECANDIDATE:
            return
        if m is not None:
            if m.ballot != self._prevote_ballot or not m.granted:
                return
            self._votes.add(m.src)
        if _majority(self.members, self._votes):
            self._campaign(now)

    def _campaign(self, now: float) -> None:
        assert now >= self.window_until
        store = self.store
        self.role = CANDIDATE
        self.ballot = Ballot(self.max_round + 1, self.id)
        self.max_round = self.ballot.round
        self._record(HardState(self.ballot, store.commit))
        self._from_slot = store.commit + 1
        self._promises = {}
        self._asked = set(self._peers())
        self._reset_election(now)
        for peer in self._asked:
            self._send(Prepare(self.group, self.id, peer, self.ballot, self._from_slot))
        own = store.slice(self._from_slot, store.last_slot)
        self._on_promise(Promise(self.group, self.id, self.id, self.ballot, self.ballot, store.commit,
                                 store.first_slot, own), now)

    def _on_promise(self, m: Promise, now: float) -> None:
        if m.promised > self.store.promised:
            self.max_round = max(self.max_round, m.promised.round)
            if self.role != FOLLOWER:
                self._become_follower(now)
            return
        if self.role != CANDIDATE or m.ballot != self.ballot or m.promised != m.ballot:
            return
        if m.first_slot > self._from_slot:
            # The peer compacted slots we lack; a replica that has them must lead.
            self._become_follower(now)
            return
        self._promises[m.src] = m
        merged = self._merge()
        base = next((s, m) for s, m in reversed(self._configs) if s <= self.store.commit)
        members = _chain([base], merged)[-1][1]
        for peer in set(_ids(members)) - self._asked - {self.id}:
            self._asked.add(peer)
            self._send(Prepare(self.group, self.id, peer, self.ballot, self._from_slot))
        if _majority(members, self._promises):
            self._become_leader(merged, now)

    def _merge(self) -> list[Entry]:
        """Per slot from the campaign's first on, the value accepted in the highest ballot."""
        best: dict[int, Entry] = {}
        for p in self._promises.values():
            for e in p.entries:
                if e.slot >= self._from_slot:
                    cur = best.get(e.slot)
                    if cur is None or e.ballot > cur.ballot:
                        best[e.slot] = e
        end = max(best, default=self._from_slot - 1)
        return [best.get(s) or Entry(s, ZERO_BALLOT, NOOP, b"") for s in range(self._from_slot, end + 1)]

    # --- leader -----------------------------------------------------------------------------

    def _become_leader(self, merged: list[Entry], now: float) -> None:
        b = self.ballot
        self.role = LEADER
        self.leader = self.id
        self.window_until = _FOREVER  # a leader promises no one; it steps down first
        self._promises = {}
        self._start_slot = self._from_slot + len(merged)
        entries = tuple(Entry(e.slot, b, e.kind, e.data) for e in merged)
        self._append(entries + (Entry(self._start_slot, b, NOOP, b""),))
        self._change_slot = self._configs[-1][0] if self._configs[-1][0] > self.store.commit else 0
        self._progress = {peer: _Progress(self._from_slot) for peer in self._peers()}
        self._acked = {}
        # Our own ballot's entries start at _from_slot and none is durable yet.
        self._durable = self._from_slot - 1
        self._leader_since = now
        self._heartbeat(now)

    def _check_can_append(self) -> None:
        if self.role != LEADER:
            raise NotLeader(self.id, self.leader)
        if self.store.last_slot - self.store.commit >= UNCOMMITTED_ENTRIES_MAX:
            raise Busy(f"{UNCOMMITTED_ENTRIES_MAX} proposals are waiting to commit")

    def _append_new(self, kind: int, data: bytes) -> int:
        slot = self.store.last_slot + 1
        self._append((Entry(slot, self.ballot, kind, data),))
        self._unsent = True
        return slot

    def _heartbeat(self, now: float) -> None:
        # Counted from when it was due: a shell that ticks a little late (replica.py ticks on a
        # grid) does not put every later beat off too.
        due = self._next_heartbeat()
        self._last_heartbeat = due if now - due < self.timing.heartbeat_interval else now
        for peer in self._peers():
            # A peer that lost an Accept refuses the next one (a gap before it), so a beat
            # also repairs losses: the refusal moves next back to what the peer has.
            self._progress_of(peer)
            self._send_append(peer)

    def _untold(self, every: bool):
        """At a leader: the peers holding entries up to a commit index they were not told of;
        unless ``every``, only those not told yet that this leader's opening entry committed."""
        if self.role != LEADER:
            return
        commit, progress, opening = self.store.commit, self._progress, self._start_slot
        for peer in self._peers():
            pr = progress.get(peer)
            if pr is not None and pr.told < min(commit, pr.match) and (every or pr.told < opening):
                yield peer

    def commit_untold(self, every: bool) -> bool:
        """Asked after every turn of the shell's pipeline: stops at the first such peer."""
        return next(self._untold(every), None) is not None

    def tell_commit(self, now: float, idle: float, every: bool) -> tuple[bool, float | None]:
        """At a leader: tell each peer of ``commit_untold`` that was sent nothing for ``idle``
        the commit index (an Accept from its next slot, as a heartbeat is); one sent something
        since is told by its next Accept, if one comes by then. Returns whether a message went
        out, and when to ask again for the peers left untold (None: none is)."""
        self._last_now = now
        sent, again = False, None
        for peer in self._untold(every):
            due = self._progress[peer].sent_at + idle
            if due <= now:
                self._send_append(peer)
                sent = True
            else:
                again = due if again is None else min(again, due)
        return sent, again

    def _send_append(self, peer: int) -> None:
        store = self.store
        pr = self._progress[peer]
        now = self._last_now
        if pr.next <= store.snap.index:
            if now - pr.snapshot_at >= self.timing.election_timeout:
                pr.snapshot_at = now
                self._snapshots.append((peer, store.snap))
            # Still probe: a peer that got past the snapshot (one whose answer was lost) says so.
            prev, entries = store.snap.index, ()
        else:
            prev = pr.next - 1
            entries = store.slice(pr.next, min(store.last_slot, prev + ACCEPT_ENTRIES_MAX))
        commit = min(store.commit, prev + len(entries))
        pr.told = max(pr.told, commit)
        pr.sent_at = now
        self._send_accept(Accept(self.group, self.id, peer, self.ballot, prev, store.ballot_at(prev), commit, now,
                                 entries))
        pr.next += len(entries)

    def _on_accepted(self, m: Accepted, now: float) -> None:
        if m.promised > self.store.promised:
            self.max_round = max(self.max_round, m.promised.round)
            if self.role != FOLLOWER:
                self._become_follower(now)
            return
        if self.role != LEADER or m.ballot != self.ballot or m.promised != self.ballot:
            return
        if m.ts > self._acked.get(m.src, _NEVER):
            self._acked[m.src] = m.ts
        pr = self._progress_of(m.src)
        if m.ok:
            if m.slot > pr.match:
                pr.match = m.slot
                pr.snapshot_at = _NEVER
                self._maybe_commit()
            pr.next = max(pr.next, m.slot + 1)
        elif m.slot + 1 < pr.next:
            pr.next = max(pr.match + 1, m.slot + 1)
        else:
            return
        if self.role == LEADER and pr.next <= self.store.last_slot and pr.next - pr.match - 1 < INFLIGHT_ENTRIES_MAX:
            self._send_append(m.src)

    def _maybe_commit(self) -> None:
        store = self.store
        matches = sorted((self._durable if r == self.id else self._progress_of(r).match
                          for r in _ids(self.members)), reverse=True)
        n = matches[len(matches) // 2]
        # Only an entry of our own ballot is known chosen by counting; earlier ones follow it.
        if n <= store.commit or store.ballot_at(n) != self.ballot:
            return
        store.commit = n
        if self._change_slot and n >= self._change_slot:
            self._change_slot = 0
        if n >= self._configs[-1][0] and not self._can_lead():
            self._become_follower(self._last_now)  # our removal is committed: hand over

    def _quorum_ack(self, now: float) -> float:
        """Send time of the newest Accept that a majority of the membership holds."""
        acked = self._acked
        times = sorted((now if r == self.id else acked.get(r, _NEVER) for r in _ids(self.members)), reverse=True)
        return times[len(times) // 2] if times else _NEVER

    # --- shared -----------------------------------------------------------------------------

    _last_now = _NEVER  # the clock at the latest input: the send time of what it causes
    _leader_since = _NEVER  # when we became leader: a new leader has a timeout to gather acks

    def _become_follower(self, now: float) -> None:
        if self.role == LEADER:
            self.window_until = now  # the lease is no longer claimed
            self.leader = None
        self.role = FOLLOWER
        self.ballot = None
        self._progress = {}
        self._acked = {}
        self._promises = {}
        self._votes = set()
        self._change_slot = 0
        self._reset_election(now)

    def _reset_election(self, now: float) -> None:
        t = self.timing.election_timeout
        if self._unused() and self.id == self._first_leader():
            # A new group (a new table's, a split's half): one member campaigns within a
            # heartbeat or two of its peers opening, rather than all waiting out a timeout.
            t = self.timing.heartbeat_interval
        self.election_deadline = now + t + self.rng.random() * t

    def _first_leader(self) -> int | None:
        """The storage member that opens a new group, chosen by the group's id so that new
        groups are led from every node."""
        storage = sorted(r for r, role in self.members if role == STORAGE)
        return storage[self.group % len(storage)] if storage else None

    def _unused(self) -> bool:
        """Nothing was ever promised or proposed here: a replica of a group that never had a
        leader (a replica that lost its files rejoins from a snapshot, and is not this)."""
        store = self.store
        return store.promised == ZERO_BALLOT and store.snap.ballot == ZERO_BALLOT and not store.entries

    def _can_lead(self) -> bool:
        # A storage replica whose own removal is not committed yet may still lead, as a leader
        # that removed itself does until the change commits: it may hold entries that every
        # remaining member lacks and that a peer has compacted away, and then only it can lead.
        slot, members = self._configs[-1]
        if slot > self.store.commit and _role(self.id, self.members_at(self.store.commit)) == STORAGE:
            return True
        return _role(self.id, members) == STORAGE

    def _peers(self) -> list[int]:
        return [r for r in _ids(self.members) if r != self.id]

    def _progress_of(self, peer: int) -> _Progress:
        pr = self._progress.get(peer)
        if pr is None:
            pr = self._progress[peer] = _Progress(self.store.last_slot + 1)
        return pr

    def _send(self, m) -> None:
        self._messages.append(m)

    def _send_accept(self, m: Accept) -> None:
        # Only the leader sends Accepts; see the module docstring for why they need not wait.
        self._send_first.append(m)

    def _record(self, record) -> None:
        self.store.apply(record)
        self._persist.append(record)
        if type(record) is HardState:
            self._commit_persisted = record.commit
        else:
            self._rebuild_configs()

    def _append(self, entries: tuple) -> None:
        """Entries replacing the log from entries[0].slot on; merged with a directly preceding append."""
        if self._persist and type(self._persist[-1]) is Entries:
            prev = self._persist[-1].entries
            if prev[0].slot <= entries[0].slot <= prev[-1].slot + 1:
                self.store.apply(Entries(entries))
                self._persist[-1] = Entries(prev[:entries[0].slot - prev[0].slot] + entries)
                self._update_configs(entries)
                return
        self.store.apply(Entries(entries))
        self._persist.append(Entries(entries))
        self._update_configs(entries)

    def _update_configs(self, entries: tuple) -> None:
        first = entries[0].slot
        while self._configs[-1][0] >= first:
            self._configs.pop()
        _chain(self._configs, entries)
        if self.role == LEADER:
            for peer in self._peers():
                self._progress_of(peer)

    def _rebuild_configs(self) -> None:
        store = self.store
        self._configs = _chain([(store.snap.index, store.snap.members)], store.log())
