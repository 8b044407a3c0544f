"""PynamoDB models against a real `dynstore up` (one process, and the session's three nodes),
changed only in their host: tables with a global and a local index, every attribute type,
optimistic locking, conditions, update actions, batches larger than one request, paging.

Transactions (TransactWrite, TransactGet) are not tried: dynstore does not have them yet
(docs/compatibility.md).
"""
import datetime

import pytest
from pynamodb.attributes import (BinaryAttribute, BooleanAttribute, JSONAttribute, ListAttribute, MapAttribute,
                                 NumberAttribute, NumberSetAttribute, TTLAttribute, UnicodeAttribute,
                                 UnicodeSetAttribute, UTCDateTimeAttribute, VersionAttribute)
from pynamodb.exceptions import DoesNotExist, PutError, TableError
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, KeysOnlyProjection, LocalSecondaryIndex
from pynamodb.models import Model

from dynstore.api.credentials import DEVELOPMENT_ACCESS_KEY_ID, DEVELOPMENT_SECRET_ACCESS_KEY
from test_operations_clients import REGION, endpoint, served  # noqa: F401  (fixtures: the two `dynstore up`)


class Address(MapAttribute):
    street = UnicodeAttribute()
    zip = NumberAttribute(null=True)


def model_on(host: str):
    """A model class bound to `host`: PynamoDB keeps one connection per class."""

    class ByEmail(GlobalSecondaryIndex):
        class Meta:
            index_name = "by-email"
            projection = AllProjection()
        email = UnicodeAttribute(hash_key=True)

    class ByScore(LocalSecondaryIndex):
        class Meta:
            index_name = "by-score"
            projection = KeysOnlyProjection()
        user = UnicodeAttribute(hash_key=True)
        score = NumberAttribute(range_key=True)

    class Thing(Model):
        class Meta:
            table_name = "pynamodb_things"
            region = REGION
        user = UnicodeAttribute(hash_key=True)
        sort = UnicodeAttribute(range_key=True)
        email = UnicodeAttribute(null=True)
        score = NumberAttribute(default=0)
        when = UTCDateTimeAttribute(null=True)
        tags = UnicodeSetAttribute(null=True)
        nums = NumberSetAttribute(null=True)
        blob = BinaryAttribute(null=True, legacy_encoding=False)
        doc = JSONAttribute(null=True)
        addr = Address(null=True)
        things = ListAttribute(null=True)
        flag = BooleanAttribute(null=True)
        version = VersionAttribute()
        expires = TTLAttribute(null=True)
        by_email = ByEmail()
        by_score = ByScore()

    Thing.Meta.host = host
    return Thing


@pytest.fixture
def Thing(served, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DEVELOPMENT_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DEVELOPMENT_SECRET_ACCESS_KEY)
    model = model_on(served)
    model.create_table(billing_mode="PAY_PER_REQUEST", wait=True)
    yield model
    model.delete_table()


def _unordered_sets(value):
    """A serialized item with its sets' members sorted: PynamoDB lists a Python set's members in
    the set's iteration order, which two equal sets need not share."""
    if isinstance(value, dict):
        return {k: sorted(v) if k in ("SS", "NS", "BS") else _unordered_sets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unordered_sets(v) for v in value]
    return value


def test_a_pynamodb_model_round_trips_every_attribute_type(Thing):
    when = datetime.datetime(2026, 11, 30, 12, 0, 1, 250000, tzinfo=datetime.timezone.utc)
    saved = Thing("u1", "s001", email="a@x", score=7.5, when=when, tags={"a", "b"}, nums={1, 2.5}, blob=b"\x00\xff",
                  doc={"k": [1, 2, {"z": None}]}, addr=Address(street="main", zip=12345), things=[1, "two", [3]],
                  flag=False, expires=when.replace(microsecond=0) + datetime.timedelta(days=1))
    saved.save()
    got = Thing.get("u1", "s001", consistent_read=True)
    assert _unordered_sets(got.serialize()) == _unordered_sets(saved.serialize())
    assert got.version == 1 and got.expires == datetime.datetime(2026, 12, 1, 12, 0, 1, tzinfo=datetime.timezone.utc)
    with pytest.raises(DoesNotExist):
        Thing.get("u1", "nothing")
    # create_table enabled TTL on `expires`; DynamoDB refuses to enable it twice.
    with pytest.raises(TableError, match="TimeToLive is already enabled"):
        Thing.update_ttl(ignore_update_ttl_errors=False)


def test_pynamodb_queries_indexes_and_scans_page_through_everything(Thing):
    for i in range(60):
        Thing(f"u{i % 3}", f"s{i:03d}", email=f"e{i % 5}@x", score=i, flag=i % 2 == 0).save()
    # page_size forces several Query and Scan requests, each resuming at LastEvaluatedKey.
    u1 = [t.sort for t in Thing.query("u1", page_size=4)]
    assert u1 == [f"s{i:03d}" for i in range(1, 60, 3)]
    newest = [t.sort for t in Thing.query("u1", Thing.sort.between("s004", "s040"), scan_index_forward=False,
                                          limit=3)]
    assert newest == ["s040", "s037", "s034"]
    assert Thing.count("u2", Thing.sort.startswith("s0"), filter_condition=Thing.score > 30) == 10
    assert sorted(t.sort for t in Thing.by_email.query("e3@x", page_size=2)) == [f"s{i:03d}" for i in range(3, 60, 5)]
    assert [t.sort for t in Thing.by_score.query("u0", Thing.score >= 45)] == ["s045", "s048", "s051", "s054",
                                                                                 "s057"]
    assert Thing.count() == 60
    assert sorted(t.sort for t in Thing.scan(Thing.flag == True, page_size=7)) == [  # noqa: E712 (an expression)
        f"s{i:03d}" for i in range(0, 60, 2)]
    halves = [{t.sort for t in Thing.scan(segment=s, total_segments=2)} for s in (0, 1)]
    assert not halves[0] & halves[1] and len(halves[0] | halves[1]) == 60


def test_pynamodb_updates_locks_conditions_and_batches(Thing):
    thing = Thing("u1", "s001", email="a@x", score=1, tags={"a"}, things=[1], addr=Address(street="main"))
    thing.save()
    thing.update(actions=[Thing.score.add(5), Thing.tags.add({"new"}), Thing.things.set(Thing.things.append([9])),
                          Thing.email.remove(), Thing.addr.zip.set(99)])
    thing.refresh(consistent_read=True)
    assert (thing.score, thing.tags, thing.things, thing.email, thing.addr.zip, thing.version) == (
        6, {"a", "new"}, [1, 9], None, 99, 2)

    stale = Thing.get("u1", "s001", consistent_read=True)
    stale.version = 1  # another writer's copy from before the update
    with pytest.raises(PutError) as failed:
        stale.save()
    assert failed.value.cause_response_code == "ConditionalCheckFailedException"
    with pytest.raises(PutError) as failed:
        Thing("u9", "x").save(condition=Thing.user.exists())
    assert failed.value.cause_response_code == "ConditionalCheckFailedException"
    assert Thing.count("u9") == 0

    with Thing.batch_write() as batch:  # 40 puts: two BatchWriteItem requests
        for i in range(40):
            batch.save(Thing("batch", f"b{i:03d}", score=i))
    assert Thing.count("batch", consistent_read=True) == 40
    fetched = Thing.batch_get([("batch", f"b{i:03d}") for i in range(0, 40, 2)])
    assert sorted(t.score for t in fetched) == list(range(0, 40, 2))
    with Thing.batch_write() as batch:
        for i in range(30):
            batch.delete(Thing("batch", f"b{i:03d}"))
    assert [t.score for t in Thing.query("batch", consistent_read=True)] == list(range(30, 40))
    Thing.get("batch", "b030").delete()
    assert Thing.count("batch", consistent_read=True) == 9
