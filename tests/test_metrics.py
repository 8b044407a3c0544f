"""The node's Prometheus metrics: a real `dynstore up` driven by boto3 and scraped at GET /metrics
over HTTP, a real Engine's storage metrics, and the front end's own counts with two servers in
one process."""
import asyncio
import socket
import time
import urllib.error
import urllib.request

import pytest
from botocore.exceptions import ClientError
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from test_operations_clients import client, endpoint  # noqa: F401  (fixtures: a `dynstore up` and boto3 on it)
from test_server import client as server_client
from test_server import start_server

from dynstore.api.errors import ConditionalCheckFailedException
from dynstore.metrics import CONTENT_TYPE, HistogramFamily, StorageMetrics
from dynstore.storage.engine import Engine


class Scrape:
    """One scrape, parsed: sample values by name and labels."""

    def __init__(self, url: str):
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            assert response.status == 200
            self.content_type = response.headers["Content-Type"]
            text = response.read().decode()
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                        for family in self.families.values() for sample in family.samples}

    def value(self, name: str, **labels) -> float:
        """The sample's value, 0 when the series does not exist (yet)."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def series(self, name: str) -> list[dict]:
        return [dict(labels) for sample_name, labels in self.samples if sample_name == name]


def create_table(client, name: str) -> None:
    client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}])


def test_requests_are_counted_per_table_and_operation(endpoint, client):
    create_table(client, "orders")
    before = Scrape(endpoint)
    for i in range(7):
        client.put_item(TableName="orders", Item={"id": {"S": f"o{i}"}, "v": {"S": "x" * 100}})
    for i in range(3):
        assert "Item" in client.get_item(TableName="orders", Key={"id": {"S": f"o{i}"}})
    after = Scrape(endpoint)

    assert after.content_type == CONTENT_TYPE.decode()
    for operation, count in (("PutItem", 7), ("GetItem", 3)):
        labels = dict(table="orders", operation=operation)
        assert after.value("dynstore_request_seconds_count", **labels) - \
            before.value("dynstore_request_seconds_count", **labels) == count
        assert after.value("dynstore_request_seconds_sum", **labels) > before.value("dynstore_request_seconds_sum",
                                                                                    **labels)
        assert after.value("dynstore_request_seconds_bucket", le="+Inf", **labels) == \
            after.value("dynstore_request_seconds_count", **labels)
    # Each write is one WAL batch made durable, applied in some group commit, and counted on its partition.
    partition = dict(table="orders", partition="0")
    assert after.value("dynstore_partition_writes_total", **partition) - \
        before.value("dynstore_partition_writes_total", **partition) == 7
    assert after.value("dynstore_partition_reads_total", **partition) - \
        before.value("dynstore_partition_reads_total", **partition) == 3
    assert after.value("dynstore_partition_items", **partition) == 7
    assert after.value("dynstore_partition_bytes", **partition) == 7 * (len("id") + 2 + len("v") + 100)
    assert after.value("dynstore_wal_durable_seconds_count") - before.value("dynstore_wal_durable_seconds_count") == 7
    assert after.value("dynstore_wal_group_commit_batches_sum") - \
        before.value("dynstore_wal_group_commit_batches_sum") == 7
    assert 1 <= after.value("dynstore_wal_group_commit_batches_count") - \
        before.value("dynstore_wal_group_commit_batches_count") <= 7
    assert after.value("dynstore_wal_appended_bytes_total") - before.value("dynstore_wal_appended_bytes_total") > \
        7 * 100
    assert after.value("dynstore_engine_apply_seconds_count") > before.value("dynstore_engine_apply_seconds_count")


def test_buffer_pool_figures_come_from_the_tree(endpoint, client):
    create_table(client, "pool")
    client.put_item(TableName="pool", Item={"id": {"S": "a"}})
    before = Scrape(endpoint)
    for _ in range(5):
        client.get_item(TableName="pool", Key={"id": {"S": "a"}})
    after = Scrape(endpoint)
    partition = dict(table="pool", partition="0")
    lookups = sum(after.value(f"dynstore_btree_cache_{kind}_total", **partition) -
                  before.value(f"dynstore_btree_cache_{kind}_total", **partition) for kind in ("hits", "misses"))
    assert lookups >= 5
    assert after.value("dynstore_btree_cache_hits_total", **partition) > \
        before.value("dynstore_btree_cache_hits_total", **partition)
    assert 0 < after.value("dynstore_btree_cache_bytes", **partition) <= \
        after.value("dynstore_btree_cache_bytes_max", **partition)
    assert after.value("dynstore_btree_pages", **partition) >= 2
    assert after.families["dynstore_btree_cache_hits"].documentation


def test_errors_are_counted_by_type_without_table_labels(endpoint, client):
    create_table(client, "errs")
    client.put_item(TableName="errs", Item={"id": {"S": "1"}})
    before = Scrape(endpoint)
    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            client.put_item(TableName="errs", Item={"id": {"S": "1"}}, ConditionExpression="attribute_not_exists(id)")
        assert caught.value.response["Error"]["Code"] == ConditionalCheckFailedException.__name__
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_item(TableName="no-such-table", Key={"id": {"S": "1"}})
    after = Scrape(endpoint)

    def delta(name, **labels):
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("dynstore_request_errors_total", operation="PutItem", type="ConditionalCheckFailedException") == 2
    assert delta("dynstore_request_errors_total", operation="GetItem", type="ResourceNotFoundException") == 1
    # Failed requests are timed without a table: a client cannot grow the label set with names.
    assert delta("dynstore_request_seconds_count", table="", operation="PutItem") == 2
    assert delta("dynstore_request_seconds_count", table="", operation="GetItem") == 1
    assert not any(labels.get("table") == "no-such-table" for labels in after.series("dynstore_request_seconds_count"))


def test_unknown_operations_and_bad_http_are_counted(endpoint):
    before = Scrape(endpoint)
    body = b"{}"
    request = urllib.request.Request(endpoint, data=body, method="POST", headers={
        "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB_20120810.NoSuchThing"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400
    host, port = endpoint.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400")
    after = Scrape(endpoint)
    # An operation name the node does not serve never becomes a label value.
    assert after.value("dynstore_request_errors_total", operation="", type="UnknownOperationException") - \
        before.value("dynstore_request_errors_total", operation="", type="UnknownOperationException") == 1
    assert after.value("dynstore_request_errors_total", operation="", type="BadRequestException") - \
        before.value("dynstore_request_errors_total", operation="", type="BadRequestException") == 1
    assert not any(labels.get("operation") == "NoSuchThing" for labels in after.series("dynstore_request_seconds_count"))


def test_deleted_tables_leave_the_registry(endpoint, client):
    create_table(client, "shortlived")
    client.put_item(TableName="shortlived", Item={"id": {"S": "1"}})
    during = Scrape(endpoint)
    assert during.value("dynstore_request_seconds_count", table="shortlived", operation="PutItem") == 1
    assert during.value("dynstore_partition_items", table="shortlived", partition="0") == 1
    client.delete_table(TableName="shortlived")
    after = Scrape(endpoint)
    for name in ("dynstore_request_seconds_count", "dynstore_partition_items", "dynstore_btree_cache_hits_total"):
        assert not any(labels.get("table") == "shortlived" for labels in after.series(name)), name


def test_open_connections_are_a_gauge(endpoint):
    def connections():
        return Scrape(endpoint).value("dynstore_http_connections")

    host, port = endpoint.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(3)]
    try:
        # The scrape's own connection is open while it is answered, and boto3 may keep some.
        assert connections() >= 4
        opened = connections()
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 10
    while connections() > opened - 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert connections() <= opened - 3


def test_histogram_buckets_are_cumulative_and_include_their_bound():
    registry = CollectorRegistry()
    family = HistogramFamily("t_seconds", "A test histogram.", ("op",), buckets=(0.001, 0.01))
    registry.register(family)
    for value in (0.0005, 0.001, 0.002, 0.01, 0.5, 7.0):
        family("a").observe(value)
    value = registry.get_sample_value
    assert [value("t_seconds_bucket", {"op": "a", "le": le}) for le in ("0.001", "0.01", "+Inf")] == [2, 4, 6]
    assert value("t_seconds_count", {"op": "a"}) == 6
    assert value("t_seconds_sum", {"op": "a"}) == pytest.approx(7.5135)
    family.forget("a")
    assert value("t_seconds_count", {"op": "a"}) is None


def test_engine_reports_group_commits_and_checkpoints(tmp_path, storage_backend):
    registry = CollectorRegistry()
    metrics = StorageMetrics(registry)
    engine = Engine(str(tmp_path / "p"), metrics=metrics, checkpoint_wal_bytes=64 << 10)

    async def writes():
        # 40 writers at once share group commits; 40 x 4 KB passes the checkpoint threshold.
        await asyncio.gather(*(engine.write([(b"k%03d" % i, b"v" * 4096)]) for i in range(40)))

    try:
        asyncio.run(writes())
        value = registry.get_sample_value
        assert value("dynstore_wal_group_commit_batches_sum") == 40
        assert 1 <= value("dynstore_wal_group_commit_batches_count") <= 40
        assert value("dynstore_wal_durable_seconds_count") == 40
        assert value("dynstore_engine_apply_seconds_count") == value("dynstore_wal_group_commit_batches_count")
        assert value("dynstore_wal_appended_bytes_total") > 40 * 4096
        checkpoints = value("dynstore_engine_checkpoint_seconds_count")
        assert checkpoints >= 1
        engine.checkpoint()
        assert value("dynstore_engine_checkpoint_seconds_count") == checkpoints + 1
        assert value("dynstore_engine_checkpoint_seconds_sum") > 0
    finally:
        engine.close()


def test_servers_in_one_process_count_apart():
    first, second = start_server(), start_server()
    try:
        client_of_first = server_client(first.endpoint)
        for _ in range(4):
            client_of_first.list_tables()
        with pytest.raises(ClientError) as caught:
            client_of_first.describe_table(TableName="broken")  # the operation has a bug: a 500
        assert caught.value.response["Error"]["Code"] == "InternalServerError"
        attempts = caught.value.response["ResponseMetadata"]["RetryAttempts"] + 1  # botocore retries a 500
        scraped = Scrape(first.endpoint)
        assert scraped.value("dynstore_request_seconds_count", table="", operation="ListTables") == 4
        assert scraped.value("dynstore_request_errors_total", operation="DescribeTable",
                             type="InternalServerError") == attempts
        assert Scrape(second.endpoint).value("dynstore_request_seconds_count", table="", operation="ListTables") == 0
        with urllib.request.urlopen(first.endpoint, timeout=10) as response:
            assert response.read().startswith(b"healthy: ")
    finally:
        first.stop()
        second.stop()
