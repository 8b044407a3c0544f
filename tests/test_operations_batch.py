"""BatchGetItem and BatchWriteItem: limits at ±1, duplicates, capacity, all-or-nothing validation."""
import pytest

from dynstore.api.errors import ResourceNotFoundException, ValidationException


@pytest.fixture
def node(api):
    api.create("tbl")
    api.create("tbl2", range_type="N")
    return api


def puts(count, prefix="k"):
    return [{"PutRequest": {"Item": {"p": {"S": f"{prefix}{i}"}, "v": {"N": str(i)}}}} for i in range(count)]


def test_batch_write_limit_and_duplicates(node):
    out = node("BatchWriteItem", RequestItems={"tbl": puts(25)}, ReturnConsumedCapacity="TOTAL")
    assert out == {"UnprocessedItems": {}, "ConsumedCapacity": [{"TableName": "tbl", "CapacityUnits": 25.0}]}
    assert node("DescribeTable", TableName="tbl")["Table"]["ItemCount"] == 25
    with pytest.raises(ValidationException, match="^Too many items requested for the BatchWriteItem call$"):
        node("BatchWriteItem", RequestItems={"tbl": puts(13, "x"), "tbl2": [
            {"PutRequest": {"Item": {"p": {"S": "a"}, "s": {"N": str(i)}}}} for i in range(13)]})
    with pytest.raises(ValidationException, match="^Provided list of item keys contains duplicates$"):
        node("BatchWriteItem", RequestItems={"tbl": puts(2, "d") + [{"DeleteRequest": {"Key": {"p": {"S": "d0"}}}}]})
    assert node("GetItem", TableName="tbl", Key={"p": {"S": "d1"}}) == {}  # nothing of a refused batch is written
    with pytest.raises(ResourceNotFoundException):
        node("BatchWriteItem", RequestItems={"nope": puts(1)})
    deletes = [{"DeleteRequest": {"Key": {"p": {"S": f"k{i}"}}}} for i in range(10)]
    node("BatchWriteItem", RequestItems={"tbl": deletes})
    assert node("DescribeTable", TableName="tbl")["Table"]["ItemCount"] == 15


def test_batch_write_validates_every_item_first(node):
    bad = puts(3) + [{"PutRequest": {"Item": {"v": {"N": "1"}}}}]
    with pytest.raises(ValidationException, match="Missing the key p in the item"):
        node("BatchWriteItem", RequestItems={"tbl": bad})
    assert node("Scan", TableName="tbl")["Count"] == 0


def test_batch_get_limit_duplicates_and_capacity(node):
    node("BatchWriteItem", RequestItems={"tbl": puts(25)})
    node("BatchWriteItem", RequestItems={"tbl": puts(25, "m")})
    keys = [{"p": {"S": f"k{i}"}} for i in range(25)] + [{"p": {"S": f"m{i}"}} for i in range(25)]
    keys += [{"p": {"S": f"missing{i}"}} for i in range(50)]
    out = node("BatchGetItem", RequestItems={"tbl": {"Keys": keys, "ConsistentRead": True}},
               ReturnConsumedCapacity="TOTAL")
    assert len(out["Responses"]["tbl"]) == 50 and out["UnprocessedKeys"] == {}
    assert out["ConsumedCapacity"] == [{"TableName": "tbl", "CapacityUnits": 100.0}]
    with pytest.raises(ValidationException, match="^Too many items requested for the BatchGetItem call$"):
        node("BatchGetItem", RequestItems={"tbl": {"Keys": keys},
                                           "tbl2": {"Keys": [{"p": {"S": "a"}, "s": {"N": "1"}}]}})
    with pytest.raises(ValidationException, match="^Provided list of item keys contains duplicates$"):
        node("BatchGetItem", RequestItems={"tbl": {"Keys": [{"p": {"S": "k1"}}, {"p": {"S": "k1"}}]}})
    projected = node("BatchGetItem", RequestItems={"tbl": {"Keys": [{"p": {"S": "k3"}}],
                                                         "ProjectionExpression": "#v",
                                                         "ExpressionAttributeNames": {"#v": "v"}}})
    assert projected["Responses"] == {"tbl": [{"v": {"N": "3"}}]}
    eventual = node("BatchGetItem", RequestItems={"tbl": {"Keys": keys[:3]}}, ReturnConsumedCapacity="TOTAL")
    assert eventual["ConsumedCapacity"][0]["CapacityUnits"] == 1.5


def test_batch_get_stops_at_16_megabytes(node):
    value = "x" * (399 * 1024)
    for start in range(0, 45, 15):
        node("BatchWriteItem", RequestItems={"tbl": [
            {"PutRequest": {"Item": {"p": {"S": f"big{i}"}, "v": {"S": value}}}} for i in range(start, start + 15)]})
    keys = [{"p": {"S": f"big{i}"}} for i in range(45)]
    got = []
    request = {"tbl": {"Keys": keys}}
    rounds = 0
    while request:
        out = node("BatchGetItem", RequestItems=request)
        got += out["Responses"]["tbl"]
        request = out["UnprocessedKeys"]
        rounds += 1
    assert rounds == 2 and len(got) == 45
