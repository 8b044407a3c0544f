"""DescribeLimits and DescribeEndpoints: questions about the service, not a table."""
from __future__ import annotations

from dynstore import limits

# DescribeEndpoints: how long a client may cache the answer, DynamoDB's value.
_ENDPOINT_CACHE_MINUTES = 1440


async def describe_limits(state, request: dict) -> dict:
    return {
        "AccountMaxReadCapacityUnits": limits.ACCOUNT_PROVISIONED_UNITS_MAX,
        "AccountMaxWriteCapacityUnits": limits.ACCOUNT_PROVISIONED_UNITS_MAX,
        "TableMaxReadCapacityUnits": limits.PROVISIONED_UNITS_MAX,
        "TableMaxWriteCapacityUnits": limits.PROVISIONED_UNITS_MAX,
    }


async def describe_endpoints(state, request: dict) -> dict:
    # This node's own address: a client doing endpoint discovery must come back here,
    # not go to AWS.
    return {"Endpoints": [{"Address": state.address, "CachePeriodInMinutes": _ENDPOINT_CACHE_MINUTES}]}
