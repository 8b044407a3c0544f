"""DynamoDB's operations over one node's storage, behind the router seam.

``OPERATIONS`` maps each operation name to ``async fn(state, request) -> response``:
``state`` is a ``State`` (state.py), ``request`` the JSON body already checked
against botocore's service model by the HTTP front end, the response the JSON body
to send. Expected failures raise dynstore.api.errors types with DynamoDB's messages.

Modules: tables.py (table lifecycle), items.py (single-item reads and writes),
query.py (Query, Scan), batch.py (BatchGetItem, BatchWriteItem), tags.py, ttl.py,
service.py (DescribeLimits, DescribeEndpoints); store.py is the one write path,
schema.py the layout of a table inside its partitions, capacity.py consumed
capacity, codec.py the stored item format.
"""
from dynstore.api.operations import batch, items, query, service, tables, tags, ttl
from dynstore.api.operations.state import State

OPERATIONS = {
    "CreateTable": tables.create_table,
    "DeleteTable": tables.delete_table,
    "DescribeTable": tables.describe_table,
    "ListTables": tables.list_tables,
    "UpdateTable": tables.update_table,
    "PutItem": items.put_item,
    "GetItem": items.get_item,
    "UpdateItem": items.update_item,
    "DeleteItem": items.delete_item,
    "Query": query.query,
    "Scan": query.scan,
    "BatchGetItem": batch.batch_get_item,
    "BatchWriteItem": batch.batch_write_item,
    "TagResource": tags.tag_resource,
    "UntagResource": tags.untag_resource,
    "ListTagsOfResource": tags.list_tags_of_resource,
    "UpdateTimeToLive": ttl.update_time_to_live,
    "DescribeTimeToLive": ttl.describe_time_to_live,
    "DescribeLimits": service.describe_limits,
    "DescribeEndpoints": service.describe_endpoints,
}

__all__ = ["OPERATIONS", "State"]
