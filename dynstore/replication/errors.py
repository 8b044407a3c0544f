"""Typed errors of the replication layer.

Each is retryable by the caller (the request router): it says where to go next or
when to come back, never that data was lost.
"""
from __future__ import annotations


class ReplicationError(Exception):
    """Base class of every expected replication failure."""


class NotLeader(ReplicationError):
    """This replica may not take the request: it is not the leader or its lease has lapsed.

    ``leader`` is the replica id believed to lead (None when unknown); retry there, or
    after a short wait when no leader is known yet.
    """

    def __init__(self, replica: int, leader: int | None):
        self.replica = replica
        self.leader = leader
        hint = f"; try replica {leader}" if leader is not None and leader != replica else ""
        super().__init__(f"replica {replica} cannot serve this request as leader now{hint}")


class NotChosen(NotLeader):
    """The slot of a proposal was chosen for another command (a later leader filled it): the
    command was not written and never will be, since it was proposed at that slot only; and
    no later command of its leader was chosen either (an acceptor takes a slot only with the
    ones before it in the same ballot). Route the request again, as for NotLeader before a
    proposal."""


class Busy(ReplicationError):
    """The leader holds its maximum of uncommitted proposals (or a membership change is
    still in flight); retry once earlier proposals commit."""


class FrameError(ReplicationError):
    """A frame from the network is not a message this replica can read: bad checksum,
    unknown protocol version or malformed body. The frame is dropped and counted."""


class StaleRange(ReplicationError):
    """The write was proposed under a key range its group has since split: it was not
    applied. Route the request again; the key now belongs to another group."""

    def __init__(self, group: int):
        self.group = group
        super().__init__(f"replication group {group} split while the write was in flight; it was not applied")
