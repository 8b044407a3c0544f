"""dynstore's own DynamoDB client: plain Python values, persistent connections, a small CPU cost.

    from dynstore.client import Client
    client = Client("http://127.0.0.1:8000", access_key, secret_key, "us-east-1")
    users = client.table("users")
    users.put({"id": "u1", "name": "Ada", "logins": 3})
    users.get({"id": "u1"})                      # {'id': 'u1', 'name': 'Ada', 'logins': 3}
    for user in users.query({"id": "u1"}): ...

``AsyncClient`` (dynstore.client.aio) has the same API with awaitables and async iterators.
It works against any DynamoDB endpoint: dynstore, Amazon DynamoDB, DynamoDB Local, moto.
"""
from dynstore.client.aio import AsyncClient
from dynstore.client.core import RetryPolicy, Table
from dynstore.client.sync import Client

__all__ = ["AsyncClient", "Client", "RetryPolicy", "Table"]
