"""Query and Scan: ranges, order, paging by Limit and by 1 MB, filters, Select, segments, indexes."""
import pytest

from dynstore.api.errors import ValidationException

KB = 1024


@pytest.fixture
def node(api):
    n = api
    n.create("tbl", range_type="N", extra_attributes=[{"AttributeName": "g", "AttributeType": "S"}],
             LocalSecondaryIndexes=[{"IndexName": "by_g", "Projection": {"ProjectionType": "INCLUDE",
                                                                          "NonKeyAttributes": ["v"]},
                                     "KeySchema": [{"AttributeName": "p", "KeyType": "HASH"},
                                                   {"AttributeName": "g", "KeyType": "RANGE"}]}])
    for p in ("a", "b"):
        for i in range(-5, 15):
            node_item = {"p": {"S": p}, "s": {"N": str(i)}, "v": {"N": str(i * i)}, "w": {"S": "w"}}
            if i % 2 == 0:
                node_item["g"] = {"S": f"g{20 - i:03d}"}
            n("PutItem", TableName="tbl", Item=node_item)
    return n


def sks(items):
    return [int(item["s"]["N"]) for item in items]


def query(node, condition="p = :p", **extra):
    values = {":p": {"S": "a"}}
    values.update(extra.pop("values", {}))
    return node("Query", TableName="tbl", KeyConditionExpression=condition, ExpressionAttributeValues=values, **extra)


def test_query_ranges_in_numeric_order(node):
    assert sks(query(node)["Items"]) == list(range(-5, 15))
    assert sks(query(node, "p = :p AND s BETWEEN :a AND :b", values={":a": {"N": "-2"}, ":b": {"N": "3"}})["Items"]) \
        == [-2, -1, 0, 1, 2, 3]
    assert sks(query(node, "p = :p AND s < :a", values={":a": {"N": "-3"}})["Items"]) == [-5, -4]
    assert sks(query(node, "p = :p AND s >= :a", values={":a": {"N": "13"}})["Items"]) == [13, 14]
    assert sks(query(node, ScanIndexForward=False)["Items"]) == list(range(14, -6, -1))
    legacy = node("Query", TableName="tbl", KeyConditions={
        "p": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "b"}]},
        "s": {"ComparisonOperator": "GT", "AttributeValueList": [{"N": "12"}]}})
    assert sks(legacy["Items"]) == [13, 14]


def test_query_limit_paging_and_filter_counts(node):
    seen = []
    start = None
    while True:
        extra = {"ExclusiveStartKey": start} if start else {}
        page = query(node, Limit=6, FilterExpression="v > :v", values={":v": {"N": "10"}}, **extra)
        assert page["ScannedCount"] <= 6 and page["Count"] == len(page["Items"])
        seen += sks(page["Items"])
        start = page.get("LastEvaluatedKey")
        if start is None:
            break
        assert set(start) == {"p", "s"}
    assert seen == [-5, -4, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    back = query(node, Limit=3, ScanIndexForward=False)
    assert sks(back["Items"]) == [14, 13, 12]
    more = query(node, Limit=3, ScanIndexForward=False, ExclusiveStartKey=back["LastEvaluatedKey"])
    assert sks(more["Items"]) == [11, 10, 9]
    with pytest.raises(ValidationException, match="^The provided starting key is outside query boundaries"):
        query(node, ExclusiveStartKey={"p": {"S": "b"}, "s": {"N": "1"}})
    with pytest.raises(ValidationException, match="^The provided starting key is invalid"):
        query(node, ExclusiveStartKey={"p": {"S": "a"}})
    count = query(node, Select="COUNT")
    assert count == {"Count": 20, "ScannedCount": 20}


def test_select_and_projection_rules(node):
    got = query(node, ProjectionExpression="v", Limit=1)["Items"]
    assert got == [{"v": {"N": "25"}}]
    with pytest.raises(ValidationException, match="Cannot specify the ProjectionExpression when choosing to get "
                                                  "ALL_ATTRIBUTES"):
        query(node, ProjectionExpression="v", Select="ALL_ATTRIBUTES")
    with pytest.raises(ValidationException, match="ALL_PROJECTED_ATTRIBUTES can be used only when Querying using"):
        query(node, Select="ALL_PROJECTED_ATTRIBUTES")
    with pytest.raises(ValidationException, match="Must specify the AttributesToGet or ProjectionExpression"):
        query(node, Select="SPECIFIC_ATTRIBUTES")
    with pytest.raises(ValidationException, match="Query condition missed key schema element"):
        node("Query", TableName="tbl", KeyConditionExpression="s = :s", ExpressionAttributeValues={":s": {"N": "1"}})
    with pytest.raises(ValidationException, match="The table does not have the specified index"):
        query(node, IndexName="nope")


def test_local_index_query_projects_and_pages(node):
    page = query(node, IndexName="by_g", Limit=4)
    assert [item["g"]["S"] for item in page["Items"]] == ["g006", "g008", "g010", "g012"]
    assert set(page["Items"][0]) == {"p", "s", "g", "v"}  # "w" is not projected
    assert set(page["LastEvaluatedKey"]) == {"p", "s", "g"}
    rest = query(node, IndexName="by_g", ExclusiveStartKey=page["LastEvaluatedKey"])
    assert [item["g"]["S"] for item in rest["Items"]] == ["g014", "g016", "g018", "g020", "g022", "g024"]
    assert query(node, IndexName="by_g", Select="COUNT")["Count"] == 10


def test_local_index_reads_unprojected_attributes_of_the_base_item(node):
    # "w" is outside by_g's projection; a local index still returns it when asked for.
    whole = query(node, IndexName="by_g", Select="ALL_ATTRIBUTES", Limit=1)["Items"]
    assert whole == [{"p": {"S": "a"}, "s": {"N": "14"}, "v": {"N": "196"}, "w": {"S": "w"}, "g": {"S": "g006"}}]
    named = query(node, IndexName="by_g", ProjectionExpression="w, v", Limit=1)["Items"]
    assert named == [{"w": {"S": "w"}, "v": {"N": "196"}}]
    # A filter may read it too, while the default Select still returns only the projection.
    filtered = query(node, IndexName="by_g", FilterExpression="w = :w", values={":w": {"S": "w"}}, Limit=1)
    assert filtered["Items"] == [{"p": {"S": "a"}, "s": {"N": "14"}, "v": {"N": "196"}, "g": {"S": "g006"}}]


def test_one_megabyte_pages(node):
    node.create("big")
    value = "x" * (100 * KB)
    for i in range(25):
        node("PutItem", TableName="big", Item={"p": {"S": f"k{i:02d}"}, "v": {"S": value}})
    pages = []
    start = None
    while True:
        extra = {"ExclusiveStartKey": start} if start else {}
        page = node("Scan", TableName="big", ReturnConsumedCapacity="TOTAL", **extra)
        pages.append(page["Count"])
        start = page.get("LastEvaluatedKey")
        if start is None:
            break
    # Each item is a little over 100 KB: a page closes at the item that crosses 1 MB.
    assert pages == [11, 11, 3]
    assert sum(pages) == 25


def test_parallel_scan_segments_partition_the_table(node):
    all_keys = {(i["p"]["S"], i["s"]["N"]) for i in node("Scan", TableName="tbl")["Items"]}
    assert len(all_keys) == 40
    for total in (1, 2, 3, 7):
        seen = []
        for segment in range(total):
            seen += [(i["p"]["S"], i["s"]["N"])
                     for i in node("Scan", TableName="tbl", Segment=segment, TotalSegments=total)["Items"]]
        assert sorted(seen) == sorted(all_keys)
    with pytest.raises(ValidationException, match="Segment: 2 is not less than TotalSegments: 2"):
        node("Scan", TableName="tbl", Segment=2, TotalSegments=2)
    with pytest.raises(ValidationException, match="The TotalSegments parameter is required"):
        node("Scan", TableName="tbl", Segment=0)


def test_parallel_scan_start_key_must_lie_in_its_segment(node):
    # Only two partition keys exist, so some segment of 8 holds items and another holds none.
    pages = [node("Scan", TableName="tbl", Segment=segment, TotalSegments=8, Limit=1) for segment in range(8)]
    own = next(segment for segment, page in enumerate(pages) if "LastEvaluatedKey" in page)
    other = next(segment for segment, page in enumerate(pages) if not page["Items"])
    start = pages[own]["LastEvaluatedKey"]
    rest = node("Scan", TableName="tbl", Segment=own, TotalSegments=8, ExclusiveStartKey=start)["Items"]
    assert rest and start not in rest
    with pytest.raises(ValidationException, match="Exclusive start key does not map to the provided Segment"):
        node("Scan", TableName="tbl", Segment=other, TotalSegments=8, ExclusiveStartKey=start)

def test_scan_filter_paging_and_capacity(node):
    page = node("Scan", TableName="tbl", Limit=10, ScanFilter={"v": {"ComparisonOperator": "GT",
                                                                  "AttributeValueList": [{"N": "100"}]}},
                ReturnConsumedCapacity="TOTAL")
    assert page["ScannedCount"] == 10 and "LastEvaluatedKey" in page
    assert page["ConsumedCapacity"] == {"TableName": "tbl", "CapacityUnits": 0.5}
    total = 0
    start = None
    while True:
        extra = {"ExclusiveStartKey": start} if start else {}
        page = node("Scan", TableName="tbl", Limit=7, FilterExpression="w = :w",
                    ExpressionAttributeValues={":w": {"S": "w"}}, **extra)
        total += page["Count"]
        start = page.get("LastEvaluatedKey")
        if not start:
            break
    assert total == 40


def test_legacy_query_filter_may_not_name_a_key_attribute(node):
    keys = {"p": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "a"}]}}
    for name in ("s", "p"):
        with pytest.raises(ValidationException, match="^QueryFilter can only contain non-primary key attributes: "
                                                      f"Primary key attribute: {name}$"):
            node("Query", TableName="tbl", KeyConditions=keys, QueryFilter={
                "w": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "w"}]},
                name: {"ComparisonOperator": "NOT_NULL"}})
    # A non-key attribute filters as usual.
    out = node("Query", TableName="tbl", KeyConditions=keys,
               QueryFilter={"v": {"ComparisonOperator": "LT", "AttributeValueList": [{"N": "2"}]}})
    assert sks(out["Items"]) == [-1, 0, 1]


def test_filter_expression_may_not_read_a_key_attribute_of_a_query(node):
    for text, name in (("s = :n", "s"), ("v > :n AND p = :p", "p"), ("v = s", "s"), ("attribute_exists(#k.x)", "s")):
        with pytest.raises(ValidationException, match="^Filter Expression can only contain non-primary key "
                                                      f"attributes: Primary key attribute: {name}$"):
            extra = {"ExpressionAttributeNames": {"#k": "s"}} if "#k" in text else {}
            query(node, FilterExpression=text, values={":n": {"N": "1"}} if ":n" in text else {}, **extra)
    assert sks(query(node, FilterExpression="v < :n", values={":n": {"N": "2"}})["Items"]) == [-1, 0, 1]
    # A Scan has no key condition, so its filter is the only way to select by key.
    out = node("Scan", TableName="tbl", FilterExpression="p = :p AND s = :n",
               ExpressionAttributeValues={":p": {"S": "b"}, ":n": {"N": "3"}})
    assert sks(out["Items"]) == [3]
