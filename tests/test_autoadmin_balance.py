"""Evening out leads and tables: the plan's two rules, by request rate and by count, and that
they never undo each other's moves."""
import itertools
import random

from dynstore.autoadmin.heat import HeatTracker
from dynstore.autoadmin.balance import Holding, Move, plan, table_replicas

NODES = (1, 2, 3)


def lead(group: int, leader: int, rate: float, members=NODES, movable=True) -> Holding:
    return Holding(f"t{group}", group, leader, tuple(members), rate, movable)


def even(leads: list[Holding]) -> Move | None:
    return plan(leads, rate_min=50, share=0.25, count_min=2)


def moved(holdings: list[Holding], move: Move) -> list[Holding]:
    which, to = move.holding, move.to
    return [Holding(x.name, x.key, to, x.nodes, x.rate, x.movable) if x == which else x for x in holdings]


def test_two_busy_partitions_of_one_node_are_led_apart_though_every_node_leads_two():
    leads = [lead(1, 1, 300), lead(2, 1, 290), lead(3, 2, 1), lead(4, 2, 0), lead(5, 3, 0), lead(6, 3, 2)]
    move = even(leads)
    # Node 2 leads the least load; either busy partition's move leaves a gap of 10/s or less.
    assert (move.holding.holder, move.to, move.why) == (1, 2, "load") and move.holding.key in (1, 2), move
    # Then counts are evened with a cold partition, and nothing more moves.
    leads = moved(leads, move)
    move = even(leads)
    assert (move.holding.holder, move.to, move.why) == (2, 1, "count") and move.holding.rate <= 1, move
    leads = moved(leads, move)
    assert even(leads) is None
    assert sorted(x.holder for x in leads if x.rate > 100) == [1, 2]


def test_one_partition_taking_a_node_s_load_stays_and_small_gaps_are_noise():
    assert even([lead(1, 1, 900), lead(2, 2, 10), lead(3, 3, 0)]) is None  # moving it only moves the load
    assert even([lead(1, 1, 25), lead(2, 1, 25), lead(3, 2, 10), lead(4, 3, 20)]) is None  # under 50/s apart
    assert even([lead(1, 1, 1000), lead(2, 1, 1000), lead(3, 2, 900), lead(4, 3, 950),
                 lead(5, 3, 1)]) is None  # under a quarter of the most loaded node's load


def test_only_members_that_answer_and_hold_state_are_handed_a_lead():
    leads = [lead(1, 1, 300, movable=False), lead(2, 1, 300, movable=False), lead(3, 2, 0), lead(4, 3, 0)]
    assert even(leads) is None
    leads = [lead(1, 1, 300, members=(1, 2)), lead(2, 1, 300, members=(1, 2)), lead(3, 3, 0)]
    assert even(leads).to == 2


def test_a_restarted_node_is_handed_cold_leads_first():
    leads = [lead(1, 1, 200), lead(2, 1, 0), lead(3, 1, 5), lead(4, 2, 200), lead(5, 2, 0)]
    move = even(leads)
    assert (move.holding.key, move.to, move.why) == (2, 3, "count"), move


def test_the_rules_settle_and_each_move_for_load_evens_the_loads():
    rng = random.Random(7)
    for _ in range(500):
        rates = [0, 0, 1, 20, 100, 300, 800]
        leads = [lead(g, rng.choice(NODES), rng.choice(rates)) for g in range(rng.randint(1, 12))]
        for step in itertools.count():
            move = even(leads)
            if move is None:
                break
            assert step < 2 * len(leads), leads
            after = moved(leads, move)
            if move.why == "load":
                assert squares(after) < squares(leads), (leads, move)
            leads = after


def squares(leads: list[Holding]) -> float:
    return sum(sum(x.rate for x in leads if x.holder == node) ** 2 for node in NODES)


def test_rates_are_taken_over_the_window_from_the_node_s_counters():
    heat = HeatTracker(share_min=0.5, rate_min=100, sustain_s=0, window_s=5)
    assert heat.rates(1) == {}
    for t in range(11):
        heat.observe(t, 1, {7: 100 * t, 8: 10 * t if t < 8 else 10 * t + 500})
    assert heat.rates(1) == {7: 100, 8: 110}  # t 5 to 10, 500 more of group 8 in that window
    heat.observe(11, 1, {7: 3})  # restarted: counting from zero, group 8 not here any more
    assert heat.rates(1) == {7: 3 / 5}


ZONE = {1: "a", 2: "b", 3: "c", 4: "a", 5: "b", 6: "c"}


def test_the_busiest_tables_are_moved_apart_within_each_zone_and_counts_even_out_after():
    # As four tables are placed on six nodes: the two busy ones land on the same three nodes.
    placement = {"t0": [1, 2, 3], "t1": [4, 5, 6], "t2": [1, 2, 3], "t3": [4, 5, 6]}
    rates = {"t0": 300.0, "t1": 0.0, "t2": 290.0, "t3": 2.0}
    whys = []
    for step in itertools.count():
        replicas = table_replicas([(name, hosts, rates[name]) for name, hosts in placement.items()], ZONE, set())
        move = even(replicas)
        if move is None:
            break
        assert step < 12, placement
        assert ZONE[move.to] == ZONE[move.holding.holder] and move.to not in placement[move.holding.name], move
        placement[move.holding.name] = sorted(set(placement[move.holding.name]) - {move.holding.holder} | {move.to})
        whys.append(move.why)
    assert whys == ["load"] * 3 + ["count"] * 3, whys  # one busy table leaves each zone's node, then a cold one
    # In every zone the busy tables are on different nodes, and each node holds two tables.
    for node in ZONE:
        assert sum(node in hosts for hosts in placement.values()) == 2, placement
    assert not set(placement["t0"]) & set(placement["t2"]), placement


def test_a_table_is_not_moved_while_one_of_its_nodes_is_lost_nor_onto_a_lost_node():
    placement = [("t0", [1, 2, 3], 300.0), ("t1", [1, 5, 6], 290.0), ("t2", [4, 2, 3], 0.0)]
    assert even(table_replicas(placement, ZONE, {4})) is None  # zone a has no other live node
    move = even(table_replicas(placement, ZONE, {5}))  # t1 has a lost node: t0 goes
    assert (move.holding.name, move.holding.holder, move.to, move.why) == ("t0", 1, 4, "load"), move
    # A lone node of its zone has nowhere to go.
    assert even(table_replicas(placement, {1: "a", 2: "b", 3: "c", 4: "b", 5: "b", 6: "c"}, set())) is None
