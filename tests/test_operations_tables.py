"""Table lifecycle, tags, TTL and service operations, in-process on real storage and through a cluster."""
import time

import pytest

from dynstore import limits
from dynstore.api.errors import (
    LimitExceededException,
    ResourceInUseException,
    ResourceNotFoundException,
    ValidationException,
)
from dynstore.api.operations.ttl import expire_once
from operations_harness import ClusterNode


@pytest.fixture
def node(api):
    return api


KEYS = [{"AttributeName": "p", "KeyType": "HASH"}]
ATTRS = [{"AttributeName": "p", "AttributeType": "S"}]


@pytest.mark.single_node("compares dates with the injected clock (node.now)")
def test_create_describe_is_active_and_shaped_like_dynamodb(node):
    created = node("CreateTable", TableName="tbl", KeySchema=KEYS, AttributeDefinitions=ATTRS,
                   ProvisionedThroughput={"ReadCapacityUnits": 5, "WriteCapacityUnits": 7})["TableDescription"]
    assert created["TableStatus"] == "CREATING"
    table = node("DescribeTable", TableName="tbl")["Table"]
    assert table["TableStatus"] == "ACTIVE"
    assert table["TableArn"] == "arn:aws:dynamodb:us-east-1:000000000000:table/tbl"
    assert len(table["TableId"]) == 36 and table["TableId"] == created["TableId"]
    assert table["CreationDateTime"] == node.now
    assert table["ProvisionedThroughput"] == {"NumberOfDecreasesToday": 0, "ReadCapacityUnits": 5,
                                              "WriteCapacityUnits": 7}
    assert table["ItemCount"] == 0 and table["TableSizeBytes"] == 0
    assert "BillingModeSummary" not in table
    node.create("on_demand")
    od = node("DescribeTable", TableName="on_demand")["Table"]
    assert od["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert od["ProvisionedThroughput"]["ReadCapacityUnits"] == 0


def test_not_found_and_already_exists(node):
    with pytest.raises(ResourceNotFoundException, match="^Requested resource not found: Table: nope not found$"):
        node("DescribeTable", TableName="nope")
    with pytest.raises(ResourceNotFoundException):
        node("DeleteTable", TableName="nope")
    node.create("tbl")
    with pytest.raises(ResourceInUseException, match="^Table already exists: tbl$"):
        node.create("tbl")
    with pytest.raises(ResourceNotFoundException, match="^Requested resource not found$"):
        node("GetItem", TableName="nope", Key={"p": {"S": "x"}})


@pytest.mark.parametrize("request_, message", [
    (dict(KeySchema=[{"AttributeName": "x", "KeyType": "HASH"}]),
     "One or more parameter values were invalid: Some index key attributes are not defined in "
     "AttributeDefinitions. Keys: [x], AttributeDefinitions: [p]"),
    (dict(KeySchema=[{"AttributeName": "p", "KeyType": "RANGE"}]),
     "Invalid KeySchema: The first KeySchemaElement is not a HASH key type"),
    (dict(KeySchema=[{"AttributeName": "p", "KeyType": "HASH"}, {"AttributeName": "q", "KeyType": "HASH"}],
          AttributeDefinitions=ATTRS + [{"AttributeName": "q", "AttributeType": "S"}]),
     "Invalid KeySchema: The second KeySchemaElement is not a RANGE key type"),
    (dict(KeySchema=[{"AttributeName": "p", "KeyType": "HASH"}, {"AttributeName": "p", "KeyType": "RANGE"}],
          AttributeDefinitions=ATTRS * 2),
     "Both the Hash Key and the Range Key element in the KeySchema have the same name"),
    (dict(AttributeDefinitions=ATTRS + [{"AttributeName": "q", "AttributeType": "S"}]),
     "One or more parameter values were invalid: Number of attributes in KeySchema does not exactly match "
     "number of attributes defined in AttributeDefinitions"),
    (dict(BillingMode="PROVISIONED", ProvisionedThroughput=None),
     "One or more parameter values were invalid: ReadCapacityUnits and WriteCapacityUnits must both be "
     "specified when BillingMode is PROVISIONED"),
    (dict(BillingMode="PAY_PER_REQUEST", ProvisionedThroughput={"ReadCapacityUnits": 1, "WriteCapacityUnits": 1}),
     "One or more parameter values were invalid: Neither ReadCapacityUnits nor WriteCapacityUnits can be "
     "specified when BillingMode is PAY_PER_REQUEST"),
    (dict(LocalSecondaryIndexes=[{"IndexName": "lsi", "KeySchema": KEYS, "Projection": {"ProjectionType": "ALL"}}]),
     "One or more parameter values were invalid: Table KeySchema does not have a range key, which is required "
     "when specifying a LocalSecondaryIndex"),
    (dict(AttributeDefinitions=None),
     "1 validation error detected: Value null at 'attributeDefinitions' failed to satisfy constraint: "
     "Member must not be null"),
    (dict(AttributeDefinitions=ATTRS + [{"AttributeName": "p", "AttributeType": "N"}]),
     "Attribute Name is duplicated: p"),
    (dict(KeySchema=KEYS + [{"AttributeName": a, "KeyType": "RANGE"} for a in "qr"],
          AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in "pqr"]),
     "Invalid KeySchema: it has 3 elements; a KeySchema holds one HASH and at most one RANGE element"),
    # INCLUDE names the projected attributes, so the list must be given, each name once.
    (dict(GlobalSecondaryIndexes=[{"IndexName": "gsi", "KeySchema": KEYS,
                                   "Projection": {"ProjectionType": "INCLUDE"}}]),
     "One or more parameter values were invalid: ProjectionType is INCLUDE, but NonKeyAttributes is not specified"),
    (dict(GlobalSecondaryIndexes=[{"IndexName": "gsi", "KeySchema": KEYS,
                                   "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["b", "a", "b"]}}]),
     "One or more parameter values were invalid: Duplicate attributes in NonKeyAttributes: b"),
    (dict(TableClass="standard"),  # names are case-sensitive; DynamoDB words this one itself
     "Invalid table-class parameter provided. Please try again with a valid table-class value: "
     "[STANDARD, STANDARD_INFREQUENT_ACCESS]."),
])
def test_create_table_validation(node, request_, message):
    request = dict(TableName="bad", KeySchema=KEYS, AttributeDefinitions=ATTRS, BillingMode="PAY_PER_REQUEST")
    request.update(request_)
    request = {k: v for k, v in request.items() if v is not None}
    with pytest.raises(ValidationException) as caught:
        node("CreateTable", **request)
    assert caught.value.message == message
    assert node("ListTables")["TableNames"] == []


def test_throughput_above_table_maximum_is_a_limit_error(node):
    with pytest.raises(LimitExceededException):
        node("CreateTable", TableName="big", KeySchema=KEYS, AttributeDefinitions=ATTRS,
             ProvisionedThroughput={"ReadCapacityUnits": limits.PROVISIONED_UNITS_MAX + 1, "WriteCapacityUnits": 1})
    node("CreateTable", TableName="big", KeySchema=KEYS, AttributeDefinitions=ATTRS,
         ProvisionedThroughput={"ReadCapacityUnits": limits.PROVISIONED_UNITS_MAX, "WriteCapacityUnits": 1})


def test_list_tables_pages(node):
    names = [f"tbl{i:02d}" for i in range(7)]
    for name in reversed(names):
        node.create(name)
    assert node("ListTables")["TableNames"] == names
    page = node("ListTables", Limit=3)
    assert page == {"TableNames": names[:3], "LastEvaluatedTableName": names[2]}
    page = node("ListTables", Limit=3, ExclusiveStartTableName=names[2])
    assert page["TableNames"] == names[3:6]
    assert node("ListTables", Limit=3, ExclusiveStartTableName=names[5]) == {"TableNames": names[6:]}


@pytest.mark.single_node("compares dates with the injected clock (node.now)")
def test_update_table_throughput_and_billing(node):
    node("CreateTable", TableName="tbl", KeySchema=KEYS, AttributeDefinitions=ATTRS,
         ProvisionedThroughput={"ReadCapacityUnits": 5, "WriteCapacityUnits": 5})
    with pytest.raises(ValidationException, match="will not change"):
        node("UpdateTable", TableName="tbl", ProvisionedThroughput={"ReadCapacityUnits": 5, "WriteCapacityUnits": 5})
    with pytest.raises(ValidationException, match="^At least one of"):
        node("UpdateTable", TableName="tbl")
    with pytest.raises(ValidationException, match="^Invalid table-class parameter provided"):
        node("UpdateTable", TableName="tbl", TableClass="junk")
    assert node("UpdateTable", TableName="tbl", TableClass="STANDARD_INFREQUENT_ACCESS")["TableDescription"][
        "TableClassSummary"] == {"TableClass": "STANDARD_INFREQUENT_ACCESS"}
    up = node("UpdateTable", TableName="tbl", ProvisionedThroughput={"ReadCapacityUnits": 10, "WriteCapacityUnits": 5})
    assert up["TableDescription"]["TableStatus"] == "UPDATING"
    node("UpdateTable", TableName="tbl", ProvisionedThroughput={"ReadCapacityUnits": 2, "WriteCapacityUnits": 2})
    throughput = node("DescribeTable", TableName="tbl")["Table"]["ProvisionedThroughput"]
    assert throughput["ReadCapacityUnits"] == 2 and throughput["NumberOfDecreasesToday"] == 1
    assert throughput["LastIncreaseDateTime"] == throughput["LastDecreaseDateTime"] == node.now
    node("UpdateTable", TableName="tbl", BillingMode="PAY_PER_REQUEST")
    table = node("DescribeTable", TableName="tbl")["Table"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    with pytest.raises(ValidationException, match="ProvisionedThroughput must be specified"):
        node("UpdateTable", TableName="tbl", BillingMode="PROVISIONED")


def test_delete_table_and_deletion_protection(node):
    node.create("tbl", DeletionProtectionEnabled=True)
    with pytest.raises(ValidationException, match="protected against deletion"):
        node("DeleteTable", TableName="tbl")
    node("UpdateTable", TableName="tbl", DeletionProtectionEnabled=False)
    node("PutItem", TableName="tbl", Item={"p": {"S": "x"}})
    gone = node("DeleteTable", TableName="tbl")["TableDescription"]
    assert gone["TableStatus"] == "DELETING" and gone["ItemCount"] == 1
    # Unlike DescribeTable, DeleteTable's description leaves out the schema and the creation time.
    assert not {"CreationDateTime", "KeySchema", "AttributeDefinitions"} & set(gone)
    with pytest.raises(ResourceNotFoundException):
        node("DescribeTable", TableName="tbl")
    node.create("tbl")  # same name again: a fresh, empty table
    assert node("Scan", TableName="tbl")["Count"] == 0


@pytest.mark.single_node("needs restart()")
def test_catalog_and_counts_survive_restart(node):
    node.create("tbl", range_type="N")
    for i in range(10):
        node("PutItem", TableName="tbl", Item={"p": {"S": "a"}, "s": {"N": str(i)}, "v": {"S": "x" * i}})
    node("DeleteItem", TableName="tbl", Key={"p": {"S": "a"}, "s": {"N": "0"}})
    before = node("DescribeTable", TableName="tbl")["Table"]
    node.restart()
    after = node("DescribeTable", TableName="tbl")["Table"]
    assert after == before and after["ItemCount"] == 9
    assert after["TableSizeBytes"] == sum(1 + 1 + 1 + 2 + 1 + i for i in range(1, 10))


def test_tags(node):
    arn = node.create("tbl", Tags=[{"Key": "a", "Value": "1"}])["TableArn"]
    assert node("ListTagsOfResource", ResourceArn=arn)["Tags"] == [{"Key": "a", "Value": "1"}]
    node("TagResource", ResourceArn=arn, Tags=[{"Key": "b", "Value": "2"}, {"Key": "a", "Value": "3"}])
    assert node("ListTagsOfResource", ResourceArn=arn)["Tags"] == [{"Key": "a", "Value": "3"},
                                                                   {"Key": "b", "Value": "2"}]
    node("UntagResource", ResourceArn=arn, TagKeys=["a", "missing"])
    assert node("ListTagsOfResource", ResourceArn=arn)["Tags"] == [{"Key": "b", "Value": "2"}]
    with pytest.raises(ResourceNotFoundException):
        node("ListTagsOfResource", ResourceArn=arn + "x")
    with pytest.raises(ValidationException, match="ARNs must start with 'arn:'"):
        node("TagResource", ResourceArn="not-an-arn", Tags=[{"Key": "a", "Value": "b"}])
    for index_arn in (arn + "/index/gsi", arn + "/stream/2026-01-01T00:00:00.000"):  # no tags of their own
        with pytest.raises(ValidationException, match="Invalid TableArn"):
            node("ListTagsOfResource", ResourceArn=index_arn)
    with pytest.raises(ValidationException):
        node("TagResource", ResourceArn=arn, Tags=[{"Key": "!!", "Value": "b"}])
    node("TagResource", ResourceArn=arn, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(49)])
    with pytest.raises(ValidationException, match="limit of 50"):
        node("TagResource", ResourceArn=arn, Tags=[{"Key": "one-too-many", "Value": "v"}])
    assert len(node("ListTagsOfResource", ResourceArn=arn)["Tags"]) == 50


@pytest.mark.single_node("moves the injected clock and runs expiry on the State")
def test_ttl_settings_and_expiry(node):
    node.create("tbl")
    assert node("DescribeTimeToLive", TableName="tbl") == {"TimeToLiveDescription": {"TimeToLiveStatus": "DISABLED"}}
    with pytest.raises(ValidationException, match="already disabled"):
        node("UpdateTimeToLive", TableName="tbl", TimeToLiveSpecification={"Enabled": False, "AttributeName": "e"})
    out = node("UpdateTimeToLive", TableName="tbl", TimeToLiveSpecification={"Enabled": True, "AttributeName": "e"})
    assert out == {"TimeToLiveSpecification": {"Enabled": True, "AttributeName": "e"}}
    with pytest.raises(ValidationException, match="already enabled"):
        node("UpdateTimeToLive", TableName="tbl", TimeToLiveSpecification={"Enabled": True, "AttributeName": "e"})
    now = node.now
    items = {
        "past": {"N": str(int(now) - 10)},
        "future": {"N": str(int(now) + 1000)},
        "ancient": {"N": str(int(now) - limits.TTL_PAST_MAX_S - 10)},
        "string": {"S": str(int(now) - 10)},
    }
    for name, value in items.items():
        node("PutItem", TableName="tbl", Item={"p": {"S": name}, "e": value})
    node("PutItem", TableName="tbl", Item={"p": {"S": "none"}})
    assert node.run(expire_once(node.state)) == 1
    left = {item["p"]["S"] for item in node("Scan", TableName="tbl")["Items"]}
    assert left == {"future", "ancient", "string", "none"}
    node.now += 2000
    assert node.run(expire_once(node.state)) == 0  # the first pass ended: this round starts over
    assert node.run(expire_once(node.state)) == 1
    assert node("DescribeTable", TableName="tbl")["Table"]["ItemCount"] == 3


def test_a_cluster_deletes_expired_items(api_cluster):
    """Each node expires what its replicas lead, on the real clock."""
    node = ClusterNode(api_cluster.endpoints[2])
    try:
        node.create("expiring")
        node("UpdateTimeToLive", TableName="expiring", TimeToLiveSpecification={"Enabled": True, "AttributeName": "e"})
        now = int(time.time())
        for name, when in (("past", now - 10), ("future", now + 3600)):
            node("PutItem", TableName="expiring", Item={"p": {"S": name}, "e": {"N": str(when)}})
        deadline = time.monotonic() + 10 * limits.TTL_SCAN_INTERVAL_S
        while node("Scan", TableName="expiring", ConsistentRead=True)["Count"] > 1:
            assert time.monotonic() < deadline, "the expired item is still there"
            time.sleep(0.1)
        left = node("Scan", TableName="expiring", ConsistentRead=True)["Items"]
        assert [item["p"]["S"] for item in left] == ["future"]
        assert node("DescribeTable", TableName="expiring")["Table"]["ItemCount"] == 1
    finally:
        node.drop_tables()
        node.close()


def test_describe_limits_and_endpoints(node):
    assert node("DescribeLimits") == {"AccountMaxReadCapacityUnits": 80000, "AccountMaxWriteCapacityUnits": 80000,
                                      "TableMaxReadCapacityUnits": 40000, "TableMaxWriteCapacityUnits": 40000}
    endpoints = node("DescribeEndpoints")["Endpoints"]
    assert endpoints == [{"Address": node.address, "CachePeriodInMinutes": 1440}]


def test_secondary_indexes_are_described(node):
    node.create("tbl", range_type="S", extra_attributes=[{"AttributeName": "g", "AttributeType": "N"}],
                LocalSecondaryIndexes=[{"IndexName": "lsi", "Projection": {"ProjectionType": "KEYS_ONLY"},
                                        "KeySchema": [{"AttributeName": "p", "KeyType": "HASH"},
                                                      {"AttributeName": "g", "KeyType": "RANGE"}]}],
                GlobalSecondaryIndexes=[{"IndexName": "gsi", "Projection": {"ProjectionType": "ALL"},
                                         "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}]}])
    node("PutItem", TableName="tbl", Item={"p": {"S": "a"}, "s": {"S": "b"}, "g": {"N": "1"}})
    node("PutItem", TableName="tbl", Item={"p": {"S": "a"}, "s": {"S": "c"}})  # sparse: in no index
    table = node("DescribeTable", TableName="tbl")["Table"]
    lsi, = table["LocalSecondaryIndexes"]
    gsi, = table["GlobalSecondaryIndexes"]
    assert lsi["IndexArn"] == table["TableArn"] + "/index/lsi" and lsi["ItemCount"] == 1
    assert gsi["IndexStatus"] == "ACTIVE" and gsi["ItemCount"] == 1 and "IndexId" not in gsi
