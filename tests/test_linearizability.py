"""The linearizability checker, on histories whose verdict is known."""
from dynstore.replication.linearizability import Op, check, check_key


def put(v, call, ret, key="k"):
    return Op("put", key, v, call, ret)


def app(v, call, ret, key="k"):
    return Op("append", key, v, call, ret)


def get(v, call, ret, key="k"):
    return Op("get", key, v, call, ret)


def test_sequential_history_is_linearizable():
    h = [put("a", 0, 1), get("a", 2, 3), app("b", 4, 5), get("ab", 6, 7)]
    assert check(h).ok


def test_stale_read_after_completed_write_is_not():
    h = [put("a", 0, 1), put("b", 2, 3), get("a", 4, 5)]
    assert not check(h).ok


def test_read_of_a_value_never_written_is_not():
    assert not check([put("a", 0, 1), get("z", 2, 3)]).ok


def test_concurrent_write_may_be_seen_or_not():
    # The get overlaps the put of "b": both answers are fine.
    assert check([put("a", 0, 1), put("b", 2, 6), get("a", 3, 4)]).ok
    assert check([put("a", 0, 1), put("b", 2, 6), get("b", 3, 4)]).ok


def test_reads_going_back_in_time_are_not():
    # Once one read saw "b", a later read may not see "a" again.
    h = [put("a", 0, 1), put("b", 2, 10), get("b", 3, 4), get("a", 5, 6)]
    assert not check(h).ok


def test_lost_append_is_not():
    h = [app("x", 0, 1), app("y", 2, 3), get("y", 4, 5)]
    assert not check(h).ok


def test_appends_order_must_respect_real_time():
    assert check([app("x", 0, 5), app("y", 1, 6), get("yx", 7, 8)]).ok
    assert not check([app("x", 0, 1), app("y", 2, 3), get("yx", 4, 5)]).ok


def test_write_with_unknown_outcome_may_take_effect_late_or_never():
    h = [put("a", 0, 1), put("b", 2, None), get("a", 3, 4), get("b", 10, 11)]
    assert check(h).ok
    assert check([put("a", 0, 1), put("b", 2, None), get("a", 10, 11)]).ok
    # ... but only once, and only after its call.
    assert not check([put("a", 0, 1), get("b", 2, 3), put("b", 4, None)]).ok
    assert not check([app("x", 0, None), get("x", 1, 2), get("", 3, 4)]).ok


def test_keys_are_checked_independently():
    h = [put("a", 0, 1, key="k1"), put("b", 0, 1, key="k2"), get("a", 2, 3, key="k1"), get("a", 2, 3, key="k2")]
    result = check(h)
    assert not result.ok and result.key == "k2"


def test_budget_gives_no_verdict_instead_of_a_wrong_one():
    # Many concurrent appends and a read no order explains: the search must try them all.
    h = [app(str(i), 0, 100) for i in range(9)] + [get("nope", 101, 102)]
    verdict, steps = check_key(h, budget=50)
    assert verdict is None and steps > 50
    assert check_key(h)[0] is False
