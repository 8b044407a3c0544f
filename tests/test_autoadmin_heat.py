"""Hot partitions: the tracker's arithmetic over counters, and the key a hot partition is cut at."""
from dynstore.api.operations.schema import ITEMS, Table
from dynstore.autoadmin.heat import HeatTracker, hot_split_key

DESC = {"TableName": "hot", "TableId": "00000000-0000-0000-0000-000000000001",
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"},
                                 {"AttributeName": "sk", "AttributeType": "N"}]}


def storage_key(pk: str, sk: int) -> bytes:
    return Table(DESC).storage_key({"pk": {"S": pk}, "sk": {"N": str(sk)}})


def test_a_partition_is_hot_only_after_a_sustained_share_at_rate():
    heat = HeatTracker(share_min=0.5, rate_min=100, sustain_s=3)
    heat.observe(0, 1, {7: 0, 8: 0})
    heat.observe(1, 1, {7: 300, 8: 100})  # 75 % at 300/s: hot from t=1
    assert heat.hot(1) == []
    heat.observe(2, 1, {7: 600, 8: 200})
    heat.observe(4, 1, {7: 1200, 8: 400})
    assert heat.hot(4) == [(1, 7)]
    heat.observe(5, 1, {7: 1250, 8: 700})  # 14 %: cold again, the clock starts over
    assert heat.hot(5) == []
    heat.observe(6, 1, {7: 1600, 8: 700})
    assert heat.hot(8.9) == [] and heat.hot(9) == [(1, 7)]
    heat.forget(7)
    assert heat.hot(100) == []


def test_slow_or_shared_traffic_is_not_heat_and_nodes_count_apart():
    heat = HeatTracker(share_min=0.5, rate_min=100, sustain_s=0)
    heat.observe(0, 1, {7: 0})
    heat.observe(1, 1, {7: 99})  # all of the node's requests, but slow
    heat.observe(0, 2, {7: 0, 8: 0, 9: 0})
    heat.observe(1, 2, {7: 400, 8: 400, 9: 400})  # fast, but a third each
    assert heat.hot(1) == []
    heat.observe(2, 1, {7: 5})  # the node restarted: its counter starts from zero
    assert heat.hot(2) == []
    heat.observe(3, 1, {7: 500})
    assert heat.hot(3) == [(1, 7)]


def test_a_hot_partition_is_cut_at_the_median_of_its_traffic():
    keys = [storage_key(f"user{i}", s) for i in range(10) for s in range(3)]
    cut = hot_split_key(DESC, keys, b"", None)
    ordered = sorted(keys)
    assert cut is not None and ordered[0] < cut <= ordered[-1]
    left = [k for k in keys if k < cut]
    assert 9 <= len(left) <= 21  # about half of the requests on each side
    assert cut[len(ITEMS):] == Table(DESC).schema.partition_prefix(cut[len(ITEMS):])  # a partition-key boundary


def test_one_hot_partition_key_is_cut_after_it_or_not_at_all():
    one = [storage_key("celebrity", s) for s in range(50)]
    assert hot_split_key(DESC, one, b"", None) is None
    other = storage_key("someone-else", 0)
    cut = hot_split_key(DESC, one + [other], b"", None)
    # The celebrity's items all on one side, the other partition key on the other.
    assert cut is not None
    assert (all(k < cut for k in one) and other >= cut) or (all(k >= cut for k in one) and other < cut)
    # Keys outside the partition's range are not its traffic.
    assert hot_split_key(DESC, one + [other], max(one) + b"\xff", None) is None
