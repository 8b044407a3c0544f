"""`dynstore router`: a standalone DynamoDB endpoint for a `dynstore up --nodes 3` cluster, driven by boto3."""
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import boto3
import orjson
import pytest
from botocore.config import Config

from dynstore.api.credentials import DEVELOPMENT_ACCESS_KEY_ID, DEVELOPMENT_SECRET_ACCESS_KEY
from dynstore.replication.group_process import free_ports
from test_cluster import WRITES_AGAIN_WITHIN_S, cluster, create_table, item  # noqa: F401  (cluster: a fixture)


class Router:
    def __init__(self, node_toml: str):
        self.port = free_ports(1)[0]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from dynstore.cli import main; main()", "router", "--cluster", node_toml,
             "--port", str(self.port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = b""
        while b"serving DynamoDB" not in output:
            line = self.proc.stdout.readline()
            assert line, output
            output += line
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self):
        return boto3.client("dynamodb", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=DEVELOPMENT_ACCESS_KEY_ID,
                            aws_secret_access_key=DEVELOPMENT_SECRET_ACCESS_KEY,
                            config=Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=15))

    def status(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/status", timeout=5) as response:
            return orjson.loads(response.read())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0


def test_router_serves_the_cluster_and_sends_items_to_their_leader(cluster):
    router = Router(os.path.join(cluster.directory, "node-1", "node.toml"))
    try:
        client = router.client()
        create_table(client, "orders")
        for n in range(40):
            client.put_item(TableName="orders", Item=item(f"p{n % 8}", n, v=str(n)))
        forwarded_before = sum(cluster.status(node)["forwarded"] for node in (1, 2, 3))
        for n in range(40):
            client.update_item(TableName="orders", Key={"pk": {"S": f"p{n % 8}"}, "sk": {"N": str(n)}},
                               UpdateExpression="SET w = :w", ExpressionAttributeValues={":w": {"S": "x"}})
        forwarded = sum(cluster.status(node)["forwarded"] for node in (1, 2, 3)) - forwarded_before
        assert forwarded <= 4, forwarded  # the router's map sends each update to its partition's leader
        assert router.status()["router"]["direct"] >= 80
        got = client.get_item(TableName="orders", Key={"pk": {"S": "p3"}, "sk": {"N": "11"}}, ConsistentRead=True)
        assert got["Item"]["v"] == {"S": "11"} and got["Item"]["w"] == {"S": "x"}
        q = client.query(TableName="orders", KeyConditionExpression="pk = :p", ConsistentRead=True,
                         ExpressionAttributeValues={":p": {"S": "p5"}})
        assert [int(i["sk"]["N"]) for i in q["Items"]] == [5, 13, 21, 29, 37]
        assert client.scan(TableName="orders", ConsistentRead=True)["Count"] == 40
        with pytest.raises(client.exceptions.ConditionalCheckFailedException):
            client.put_item(TableName="orders", Item=item("p0", 0), ConditionExpression="attribute_not_exists(pk)")
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            client.get_item(TableName="missing", Key={"pk": {"S": "a"}, "sk": {"N": "1"}})
        # The leader's node is killed: writes through the router succeed again within the bound.
        leader = cluster.leader_of("orders")
        os.kill(cluster.node_pids()[leader], signal.SIGKILL)
        killed_at = time.monotonic()
        while True:
            try:
                client.put_item(TableName="orders", Item=item("after", 1))
                break
            except Exception:  # noqa: BLE001 - retried until the bound
                assert time.monotonic() - killed_at < WRITES_AGAIN_WITHIN_S, cluster.describe()
                time.sleep(0.05)
    finally:
        router.stop()


def test_router_without_the_cluster_secret_reaches_no_node(cluster, tmp_path):
    config = open(os.path.join(cluster.directory, "node-1", "node.toml")).read()
    wrong = tmp_path / "wrong.secret"
    wrong.write_text(os.urandom(32).hex())
    config = re.sub(r'cluster_secret_file = ".*"', f'cluster_secret_file = "{wrong}"', config)
    path = tmp_path / "node.toml"
    path.write_text(config)
    router = Router(str(path))
    try:
        with pytest.raises(router.client().exceptions.ClientError, match="ServiceUnavailable|no node"):
            router.client().list_tables()
    finally:
        router.stop()
