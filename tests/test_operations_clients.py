"""The operations behind a real `dynstore up` process, driven by boto3 (client and resource
APIs, waiters) and by the AWS CLI, over sockets: once against `dynstore up --nodes 1`, once
against the three node processes of `dynstore up --nodes 3`.

``endpoint`` and ``client`` (the single process) serve other modules too: the canary and the
metrics they check are the single process's.
"""
import json
import os
import re
import signal
import subprocess
import sys

import boto3
import pytest
from boto3.dynamodb.conditions import Attr, Key
from botocore.config import Config
from botocore.exceptions import ClientError

from dynstore.api.credentials import DEVELOPMENT_ACCESS_KEY_ID, DEVELOPMENT_SECRET_ACCESS_KEY

REGION = "us-east-1"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    data = tmp_path_factory.mktemp("clients") / "data"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("DYNSTORE_ACCESS_KEY_ID", None)
    env.pop("DYNSTORE_SECRET_ACCESS_KEY", None)
    proc = subprocess.Popen([sys.executable, "-c", "from dynstore.cli import main; main()", "up", "--nodes", "1",
                             "--port", "0", "--data-dir", str(data)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    url = None
    for line in proc.stdout:
        found = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        if found:
            url = found.group(1)
            break
    assert url, "the server did not start"
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def _session_kwargs(endpoint):
    return dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id=DEVELOPMENT_ACCESS_KEY_ID,
                aws_secret_access_key=DEVELOPMENT_SECRET_ACCESS_KEY,
                config=Config(retries={"max_attempts": 1}))


@pytest.fixture(scope="module")
def client(endpoint):
    return boto3.client("dynamodb", **_session_kwargs(endpoint))


@pytest.fixture(scope="module", params=["single", "cluster"])
def served(request):
    """The endpoint of `dynstore up --nodes 1`, or node 1's of the session's `dynstore up --nodes 3`."""
    if request.param == "single":
        return request.getfixturevalue("endpoint")
    return request.getfixturevalue("api_cluster").endpoints[1]


@pytest.fixture(scope="module")
def served_client(served):
    return boto3.client("dynamodb", **_session_kwargs(served))


@pytest.fixture(scope="module")
def resource(served):
    return boto3.resource("dynamodb", **_session_kwargs(served))


def test_client_lifecycle_items_and_errors(served_client):
    client = served_client
    client.create_table(TableName="orders", BillingMode="PAY_PER_REQUEST",
                        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}])
    client.get_waiter("table_exists").wait(TableName="orders", WaiterConfig={"Delay": 1, "MaxAttempts": 5})
    client.put_item(TableName="orders", Item={"id": {"S": "1"}, "n": {"N": "1.50"}})
    assert client.get_item(TableName="orders", Key={"id": {"S": "1"}})["Item"] == {"id": {"S": "1"}, "n": {"N": "1.5"}}
    with pytest.raises(ClientError) as caught:
        client.put_item(TableName="orders", Item={"id": {"S": "1"}}, ConditionExpression="attribute_not_exists(id)",
                        ReturnValuesOnConditionCheckFailure="ALL_OLD")
    assert caught.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert caught.value.response["Item"] == {"id": {"S": "1"}, "n": {"N": "1.5"}}
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.describe_table(TableName="missing")
    with pytest.raises(client.exceptions.ResourceInUseException):
        client.create_table(TableName="orders", BillingMode="PAY_PER_REQUEST",
                            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}])
    with pytest.raises(ClientError) as caught:
        client.put_item(TableName="orders", Item={"id": {"S": "2"}, "v": {"S": "x" * (400 * 1024)}})
    assert caught.value.response["Error"] == {"Code": "ValidationException",
                                              "Message": "Item size has exceeded the maximum allowed size"}
    arn = client.describe_table(TableName="orders")["Table"]["TableArn"]
    client.tag_resource(ResourceArn=arn, Tags=[{"Key": "team", "Value": "core"}])
    assert client.list_tags_of_resource(ResourceArn=arn)["Tags"] == [{"Key": "team", "Value": "core"}]
    client.update_time_to_live(TableName="orders", TimeToLiveSpecification={"Enabled": True, "AttributeName": "exp"})
    assert client.describe_time_to_live(TableName="orders")["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED"
    assert client.describe_limits()["TableMaxReadCapacityUnits"] == 40000
    client.delete_table(TableName="orders")
    client.get_waiter("table_not_exists").wait(TableName="orders", WaiterConfig={"Delay": 1, "MaxAttempts": 5})


def test_resource_api_query_scan_batch(resource):
    table = resource.create_table(TableName="events", BillingMode="PAY_PER_REQUEST",
                                  KeySchema=[{"AttributeName": "user", "KeyType": "HASH"},
                                             {"AttributeName": "ts", "KeyType": "RANGE"}],
                                  AttributeDefinitions=[{"AttributeName": "user", "AttributeType": "S"},
                                                        {"AttributeName": "ts", "AttributeType": "N"}])
    table.wait_until_exists()
    with table.batch_writer() as batch:
        for i in range(60):
            batch.put_item(Item={"user": f"u{i % 3}", "ts": i, "kind": "click" if i % 2 else "view"})
    got = table.query(KeyConditionExpression=Key("user").eq("u1") & Key("ts").between(10, 30),
                      FilterExpression=Attr("kind").eq("click"), ScanIndexForward=False)
    assert [int(item["ts"]) for item in got["Items"]] == [25, 19, 13]
    assert got["ScannedCount"] == 7
    items = []
    kwargs = {"Limit": 7}
    while True:
        page = table.scan(**kwargs)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    assert len(items) == 60
    table.update_item(Key={"user": "u0", "ts": 0}, UpdateExpression="ADD hits :one",
                      ExpressionAttributeValues={":one": 1})
    assert table.get_item(Key={"user": "u0", "ts": 0})["Item"]["hits"] == 1
    out = resource.batch_get_item(RequestItems={"events": {"Keys": [{"user": "u0", "ts": 0},
                                                                    {"user": "u2", "ts": 2}]}})
    assert len(out["Responses"]["events"]) == 2
    table.delete()


def _aws(endpoint, *args):
    env = dict(os.environ, AWS_ACCESS_KEY_ID=DEVELOPMENT_ACCESS_KEY_ID,
               AWS_SECRET_ACCESS_KEY=DEVELOPMENT_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION=REGION,
               AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    done = subprocess.run(["aws", "dynamodb", "--endpoint-url", endpoint, "--output", "json", *args],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else {}


def test_aws_cli_flow(served):
    endpoint = served
    created = _aws(endpoint, "create-table", "--table-name", "cli", "--billing-mode", "PAY_PER_REQUEST",
                   "--key-schema", "AttributeName=k,KeyType=HASH", "AttributeName=r,KeyType=RANGE",
                   "--attribute-definitions", "AttributeName=k,AttributeType=S", "AttributeName=r,AttributeType=N")
    assert created["TableDescription"]["TableName"] == "cli"
    _aws(endpoint, "wait", "table-exists", "--table-name", "cli")
    for r in (1, 2, 3):
        _aws(endpoint, "put-item", "--table-name", "cli", "--item", json.dumps({"k": {"S": "a"}, "r": {"N": str(r)}}))
    got = _aws(endpoint, "get-item", "--table-name", "cli", "--key", json.dumps({"k": {"S": "a"}, "r": {"N": "2"}}))
    assert got["Item"] == {"k": {"S": "a"}, "r": {"N": "2"}}
    queried = _aws(endpoint, "query", "--table-name", "cli", "--key-condition-expression", "k = :k AND r > :r",
                   "--expression-attribute-values", json.dumps({":k": {"S": "a"}, ":r": {"N": "1"}}))
    assert [item["r"]["N"] for item in queried["Items"]] == ["2", "3"]
    scanned = _aws(endpoint, "scan", "--table-name", "cli")  # the CLI pages through on its own
    assert scanned["Count"] == 3
    _aws(endpoint, "delete-item", "--table-name", "cli", "--key", json.dumps({"k": {"S": "a"}, "r": {"N": "1"}}))
    assert _aws(endpoint, "scan", "--table-name", "cli", "--select", "COUNT")["Count"] == 2
    assert "cli" in _aws(endpoint, "list-tables")["TableNames"]
    _aws(endpoint, "delete-table", "--table-name", "cli")
    assert "cli" not in _aws(endpoint, "list-tables")["TableNames"]
