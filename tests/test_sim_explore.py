"""Exhaustive exploration of a three-replica group (dynstore/replication/explore.py).

From each starting state every interleaving of deliveries, losses, ticks, a proposal, a
crash-restart and a membership change is explored to a depth: DEPTH_CI in CI, DEPTH_LONG
with --long.
"""
import pytest

from conftest import long_mode
from dynstore.replication import explore

DEPTH = explore.DEPTH_LONG if long_mode() else explore.DEPTH_CI


@pytest.mark.parametrize("name", [name for name, _ in explore.starts()])
def test_every_interleaving_keeps_the_invariants(name, capsys):
    start = dict(explore.starts())[name]
    stats = explore.explore(DEPTH, start)
    with capsys.disabled():
        print(f"\nexplored from {name}: depth {stats.depth}, {stats.states} states, {stats.transitions} transitions")
    assert stats.depth == DEPTH and stats.states > 1000


def test_the_explorer_finds_a_broken_invariant():
    # Two leaders' commits disagreeing is what the check exists for: plant one.
    start = dict(explore.starts())["failover"]
    leader = next(r for r, c in start.cores.items() if c.role == "leader")
    start.chosen = ((start.cores[leader].commit, 1, b"something else"),)
    with pytest.raises(explore.Violation, match="chosen was"):
        explore.explore(1, start)
