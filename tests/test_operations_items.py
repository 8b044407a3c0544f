"""PutItem, GetItem, UpdateItem, DeleteItem: results, errors, capacity, limits, atomicity."""
import asyncio
import base64
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from dynstore.api.errors import ConditionalCheckFailedException, ValidationException
from dynstore.api.operations import OPERATIONS
from operations_harness import ClusterNode

KB = 1024


@pytest.fixture
def node(api):
    api.create("tbl", range_type="N")
    return api


def key(p="a", s="1"):
    return {"p": {"S": p}, "s": {"N": s}}


def test_put_get_and_return_values(node):
    assert node("PutItem", TableName="tbl", Item={**key(), "v": {"S": "one"}}) == {}
    out = node("PutItem", TableName="tbl", Item={**key(), "v": {"S": "two"}}, ReturnValues="ALL_OLD")
    assert out == {"Attributes": {**key(), "v": {"S": "one"}}}
    assert node("GetItem", TableName="tbl", Key=key())["Item"] == {**key(), "v": {"S": "two"}}
    assert node("GetItem", TableName="tbl", Key=key("b")) == {}
    got = node("GetItem", TableName="tbl", Key=key(), ProjectionExpression="v")
    assert got == {"Item": {"v": {"S": "two"}}}
    for op, extra in (("PutItem", {"Item": key()}), ("DeleteItem", {"Key": key()})):
        for mode in ("UPDATED_OLD", "ALL_NEW", "UPDATED_NEW"):
            with pytest.raises(ValidationException, match="^ReturnValues can only be ALL_OLD or NONE$"):
                node(op, TableName="tbl", ReturnValues=mode, **extra)
    out = node("DeleteItem", TableName="tbl", Key=key(), ReturnValues="ALL_OLD")
    assert out["Attributes"]["v"] == {"S": "two"}
    assert node("DeleteItem", TableName="tbl", Key=key(), ReturnValues="ALL_OLD") == {}


def test_update_return_values(node):
    node("PutItem", TableName="tbl", Item={**key(), "a": {"N": "1"}, "b": {"S": "x"}})
    update = dict(TableName="tbl", Key=key(), UpdateExpression="SET a = a + :one REMOVE b",
                  ExpressionAttributeValues={":one": {"N": "1"}})
    assert node("UpdateItem", **update, ReturnValues="UPDATED_OLD")["Attributes"] == {"a": {"N": "1"},
                                                                                        "b": {"S": "x"}}
    assert node("UpdateItem", **update, ReturnValues="UPDATED_NEW")["Attributes"] == {"a": {"N": "3"}}
    assert node("UpdateItem", **update, ReturnValues="ALL_NEW")["Attributes"] == {**key(), "a": {"N": "4"}}
    assert node("UpdateItem", **update, ReturnValues="ALL_OLD")["Attributes"] == {**key(), "a": {"N": "4"}}
    assert node("UpdateItem", **update) == {}
    # An update of a missing item creates it from its key.
    out = node("UpdateItem", TableName="tbl", Key=key("new"), UpdateExpression="SET c = :c",
               ExpressionAttributeValues={":c": {"BOOL": True}}, ReturnValues="ALL_NEW")
    assert out["Attributes"] == {**key("new"), "c": {"BOOL": True}}
    with pytest.raises(ValidationException, match="Cannot update attribute s. This attribute is part of the key"):
        node("UpdateItem", TableName="tbl", Key=key(), UpdateExpression="SET s = :c",
             ExpressionAttributeValues={":c": {"N": "2"}})
    legacy = node("UpdateItem", TableName="tbl", Key=key(), ReturnValues="UPDATED_NEW",
                  AttributeUpdates={"a": {"Action": "ADD", "Value": {"N": "10"}}})
    assert legacy["Attributes"] == {"a": {"N": "16"}}


def test_conditions_and_old_item_on_failure(node):
    node("PutItem", TableName="tbl", Item={**key(), "v": {"N": "5"}})
    with pytest.raises(ConditionalCheckFailedException) as caught:
        node("PutItem", TableName="tbl", Item=key(), ConditionExpression="attribute_not_exists(p)")
    assert caught.value.body() == {"__type": "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException",
                                   "message": "The conditional request failed"}
    with pytest.raises(ConditionalCheckFailedException) as caught:
        node("UpdateItem", TableName="tbl", Key=key(), UpdateExpression="SET v = :n", ConditionExpression="v > :n",
             ExpressionAttributeValues={":n": {"N": "9"}}, ReturnValuesOnConditionCheckFailure="ALL_OLD")
    assert caught.value.body()["Item"] == {**key(), "v": {"N": "5"}}
    with pytest.raises(ConditionalCheckFailedException) as caught:
        node("DeleteItem", TableName="tbl", Key=key("zz"), ConditionExpression="attribute_exists(p)",
             ReturnValuesOnConditionCheckFailure="ALL_OLD")
    assert "Item" not in caught.value.body()
    with pytest.raises(ConditionalCheckFailedException):
        node("DeleteItem", TableName="tbl", Key=key(), Expected={"v": {"Value": {"N": "6"}}})
    node("DeleteItem", TableName="tbl", Key=key(), Expected={"v": {"Value": {"N": "5"}}})
    assert node("GetItem", TableName="tbl", Key=key()) == {}
    with pytest.raises(ValidationException, match="unused in expressions"):
        node("PutItem", TableName="tbl", Item=key(), ConditionExpression="attribute_exists(p)",
             ExpressionAttributeValues={":x": {"S": "y"}})


@pytest.mark.single_node("runs operations concurrently on the in-process State")
def test_concurrent_updates_are_atomic(node):
    async def many():
        update = dict(TableName="tbl", Key=key(), UpdateExpression="ADD n :one",
                      ExpressionAttributeValues={":one": {"N": "1"}})
        await asyncio.gather(*(OPERATIONS["UpdateItem"](node.state, update) for _ in range(200)))
        # Conditional creates of one key: exactly one wins.
        put = dict(TableName="tbl", Item=key("once"), ConditionExpression="attribute_not_exists(p)")
        results = await asyncio.gather(*(OPERATIONS["PutItem"](node.state, put) for _ in range(20)),
                                       return_exceptions=True)
        return results
    results = node.run(many())
    assert node("GetItem", TableName="tbl", Key=key(), ConsistentRead=True)["Item"]["n"] == {"N": "200"}
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, ConditionalCheckFailedException) for r in results if isinstance(r, Exception))


def test_concurrent_updates_through_every_node_of_a_cluster_are_atomic(api_cluster):
    nodes = [ClusterNode(url) for url in api_cluster.endpoints.values() for _ in range(2)]
    try:
        nodes[0].create("tbl", range_type="N")

        def add(node):
            for _ in range(20):
                node("UpdateItem", TableName="tbl", Key=key(), UpdateExpression="ADD n :one",
                     ExpressionAttributeValues={":one": {"N": "1"}})

        def create_once(node):
            try:
                node("PutItem", TableName="tbl", Item=key("once"), ConditionExpression="attribute_not_exists(p)")
                return True
            except ConditionalCheckFailedException:
                return False

        with ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(add, nodes))
            assert sum(pool.map(create_once, nodes)) == 1
        assert nodes[1]("GetItem", TableName="tbl", Key=key(), ConsistentRead=True)["Item"]["n"] == {"N": "120"}
    finally:
        nodes[0].drop_tables()
        for node in nodes:
            node.close()


@pytest.mark.single_node("interleaves operations on the in-process State at one suspension point")
def test_failed_condition_is_answered_only_after_what_it_saw_is_durable(node):
    """A refusal decided on an accepted write never reports state a crash could undo."""
    put = dict(TableName="tbl", Item=key("race"), ConditionExpression="attribute_not_exists(p)")
    get = dict(TableName="tbl", Key=key("race"), ConsistentRead=True)

    async def race():
        first = asyncio.ensure_future(OPERATIONS["PutItem"](node.state, put))
        await asyncio.sleep(0)  # the first put is accepted, not yet durable
        with pytest.raises(ConditionalCheckFailedException):
            await OPERATIONS["PutItem"](node.state, put)
        # GetItem reads durable state only: the write the refusal saw must be there.
        assert "Item" in await OPERATIONS["GetItem"](node.state, get)
        await first

    node.run(race())


def _filler(name_bytes: int, target: int) -> dict:
    """An item with key a/1 whose DynamoDB size is exactly ``target`` bytes."""
    base = 1 + 1 + 1 + 2  # p:"a" and s:1
    return {**key(), "x" * name_bytes: {"S": "v" * (target - base - name_bytes)}}


def test_item_size_limit_exactly(node):
    node("PutItem", TableName="tbl", Item=_filler(1, 400 * KB))
    assert node("GetItem", TableName="tbl", Key=key())["Item"] == _filler(1, 400 * KB)
    with pytest.raises(ValidationException, match="^Item size has exceeded the maximum allowed size$"):
        node("PutItem", TableName="tbl", Item=_filler(1, 400 * KB + 1))
    with pytest.raises(ValidationException, match="Item size to update has exceeded the maximum allowed size"):
        node("UpdateItem", TableName="tbl", Key=key(), UpdateExpression="SET y = :y",
             ExpressionAttributeValues={":y": {"S": "z"}})


@pytest.mark.single_node("needs restart()")
def test_largest_binary_item_is_stored(node):
    blob = os.urandom(400 * KB - 5 - 1)
    item = {**key(), "b": {"B": base64.b64encode(blob).decode()}}
    node("PutItem", TableName="tbl", Item=item)
    node.restart()
    assert node("GetItem", TableName="tbl", Key=key())["Item"] == item


def test_key_size_limits(node):
    node.create("huge_keys", hash_type="S", range_type="S")
    node("PutItem", TableName="huge_keys", Item={"p": {"S": "p" * 2048}, "s": {"S": "s" * 1024}})
    with pytest.raises(ValidationException, match="Size of hashkey has exceeded the maximum size limit"):
        node("PutItem", TableName="huge_keys", Item={"p": {"S": "p" * 2049}, "s": {"S": "s"}})
    with pytest.raises(ValidationException, match="Aggregated size of all range keys has exceeded"):
        node("PutItem", TableName="huge_keys", Item={"p": {"S": "p"}, "s": {"S": "s" * 1025}})
    with pytest.raises(ValidationException, match="Size of hashkey"):
        node("GetItem", TableName="huge_keys", Key={"p": {"S": "p" * 2049}, "s": {"S": "s"}})
    got = node("GetItem", TableName="huge_keys", Key={"p": {"S": "p" * 2048}, "s": {"S": "s" * 1024}})
    assert got["Item"]["s"]["S"] == "s" * 1024


def test_key_schema_errors(node):
    with pytest.raises(ValidationException, match="Missing the key s in the item"):
        node("PutItem", TableName="tbl", Item={"p": {"S": "a"}})
    with pytest.raises(ValidationException, match="^The provided key element does not match the schema$"):
        node("GetItem", TableName="tbl", Key={"p": {"S": "a"}})
    with pytest.raises(ValidationException, match="^The provided key element does not match the schema$"):
        node("GetItem", TableName="tbl", Key={"p": {"S": "a"}, "s": {"S": "1"}})


def test_nesting_limit(node):
    def nested(levels):
        value = {"S": "leaf"}
        for _ in range(levels):
            value = {"M": {"m": value}}
        return value
    node("PutItem", TableName="tbl", Item={**key(), "m": nested(31)})
    with pytest.raises(ValidationException, match="Nesting Levels have exceeded supported limits"):
        node("PutItem", TableName="tbl", Item={**key(), "m": nested(32)})


def test_expression_length_limit(node):
    node("PutItem", TableName="tbl", Item={**key(), "v": {"N": "1"}})
    def condition(length):
        text = "attribute_exists(v)"
        return text + " AND attribute_exists(v)" * ((length - len(text)) // 24) + " " * ((length - len(text)) % 24)
    assert len(condition(4096)) == 4096
    node("PutItem", TableName="tbl", Item=key(), ConditionExpression=condition(4096))
    with pytest.raises(ValidationException, match="Expression size has exceeded the maximum allowed size"):
        node("PutItem", TableName="tbl", Item=key(), ConditionExpression=condition(4097))


def test_consumed_capacity(node):
    base = 1 + 1 + 1 + 2
    def put(size, **extra):
        return node("PutItem", TableName="tbl", Item={**key(), "v": {"S": "x" * (size - base - 1)}},
                    ReturnConsumedCapacity="TOTAL", **extra)["ConsumedCapacity"]
    assert put(KB) == {"TableName": "tbl", "CapacityUnits": 1.0}
    assert put(KB + 1)["CapacityUnits"] == 2.0
    assert put(3 * KB)["CapacityUnits"] == 3.0
    assert put(10)["CapacityUnits"] == 3.0  # replacing a larger item costs the larger size
    get = dict(TableName="tbl", Key=key(), ReturnConsumedCapacity="TOTAL")
    assert node("GetItem", **get)["ConsumedCapacity"]["CapacityUnits"] == 0.5
    assert node("GetItem", **get, ConsistentRead=True)["ConsumedCapacity"]["CapacityUnits"] == 1.0
    put(4 * KB + 1)
    assert node("GetItem", **get, ConsistentRead=True)["ConsumedCapacity"]["CapacityUnits"] == 2.0
    assert node("GetItem", **get, ProjectionExpression="p")["ConsumedCapacity"]["CapacityUnits"] == 1.0
    assert node("GetItem", TableName="tbl", Key=key("none"), ReturnConsumedCapacity="TOTAL",
                ConsistentRead=True)["ConsumedCapacity"]["CapacityUnits"] == 1.0
    out = node("DeleteItem", TableName="tbl", Key=key(), ReturnConsumedCapacity="INDEXES")["ConsumedCapacity"]
    assert out == {"TableName": "tbl", "CapacityUnits": 5.0, "Table": {"CapacityUnits": 5.0}}
    assert "ConsumedCapacity" not in node("GetItem", TableName="tbl", Key=key(), ReturnConsumedCapacity="NONE")


def test_global_index_maintenance_and_type_checks(node):
    node.create("gsi_table", extra_attributes=[{"AttributeName": "gk", "AttributeType": "S"}],
                GlobalSecondaryIndexes=[{"IndexName": "by_gk", "Projection": {"ProjectionType": "KEYS_ONLY"},
                                         "KeySchema": [{"AttributeName": "gk", "KeyType": "HASH"}]}])
    def by_gk(value):
        return node("Query", TableName="gsi_table", IndexName="by_gk", KeyConditionExpression="gk = :v",
                    ExpressionAttributeValues={":v": {"S": value}})["Items"]
    node("PutItem", TableName="gsi_table", Item={"p": {"S": "1"}, "gk": {"S": "x"}, "other": {"N": "1"}})
    assert by_gk("x") == [{"p": {"S": "1"}, "gk": {"S": "x"}}]
    out = node("UpdateItem", TableName="gsi_table", Key={"p": {"S": "1"}}, UpdateExpression="SET gk = :y",
               ExpressionAttributeValues={":y": {"S": "y"}}, ReturnConsumedCapacity="INDEXES")
    assert out["ConsumedCapacity"]["GlobalSecondaryIndexes"] == {"by_gk": {"CapacityUnits": 2.0}}
    assert by_gk("x") == [] and by_gk("y") == [{"p": {"S": "1"}, "gk": {"S": "y"}}]
    with pytest.raises(ValidationException, match="Type mismatch for Index Key gk Expected: S Actual: N"):
        node("PutItem", TableName="gsi_table", Item={"p": {"S": "2"}, "gk": {"N": "1"}})
    node("DeleteItem", TableName="gsi_table", Key={"p": {"S": "1"}})
    assert by_gk("y") == []
    assert node("DescribeTable", TableName="gsi_table")["Table"]["GlobalSecondaryIndexes"][0]["ItemCount"] == 0


def test_update_that_only_removes_does_not_create_a_missing_item(node):
    node("UpdateItem", TableName="tbl", Key=key("gone"), UpdateExpression="REMOVE a")
    node("UpdateItem", TableName="tbl", Key=key("gone"), UpdateExpression="DELETE s2 :v",
         ExpressionAttributeValues={":v": {"SS": ["x"]}})
    node("UpdateItem", TableName="tbl", Key=key("gone"), AttributeUpdates={"a": {"Action": "DELETE"}})
    out = node("UpdateItem", TableName="tbl", Key=key("gone"), UpdateExpression="REMOVE a", ReturnValues="UPDATED_NEW")
    assert out == {}
    assert node("GetItem", TableName="tbl", Key=key("gone")) == {}
    # An update with nothing to do still creates the item from its key, as a SET would.
    node("UpdateItem", TableName="tbl", Key=key("empty"), AttributeUpdates={})
    assert node("GetItem", TableName="tbl", Key=key("empty"))["Item"] == key("empty")


def test_attribute_updates_refuse_an_empty_set(node):
    with pytest.raises(ValidationException, match="An string set  may not be empty"):
        node("UpdateItem", TableName="tbl", Key=key(), AttributeUpdates={"a": {"Action": "PUT", "Value": {"SS": []}}})
    assert node("GetItem", TableName="tbl", Key=key()) == {}


def test_empty_expected_is_no_condition_and_takes_no_conditional_operator(node):
    node("UpdateItem", TableName="tbl", Key=key(), AttributeUpdates={"v": {"Value": {"N": "1"}, "Action": "PUT"}},
         Expected={})
    assert node("GetItem", TableName="tbl", Key=key())["Item"]["v"] == {"N": "1"}
    for operator in ("AND", "OR"):
        with pytest.raises(ValidationException, match="^ConditionalOperator can only be used when"):
            node("UpdateItem", TableName="tbl", Key=key(),
                 AttributeUpdates={"v": {"Value": {"N": "2"}, "Action": "PUT"}}, Expected={},
                 ConditionalOperator=operator)
    assert node("GetItem", TableName="tbl", Key=key())["Item"]["v"] == {"N": "1"}
