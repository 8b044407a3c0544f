"""UpdateTimeToLive, DescribeTimeToLive, and the task that deletes expired items.

The TTL setting is stored in the table's description (``TimeToLive``:
``{"AttributeName", "Enabled"}``). An item expires when its TTL attribute is a
number of epoch seconds at or before now; as in DynamoDB, a value more than five
years in the past, or an attribute of another type, never expires the item.

The expiry task walks each TTL-enabled table's items in rounds (partition after
partition, each within its range), resuming where the
previous round stopped (``state.ttl_cursors``), and deletes expired items through
store.write_item, re-checking the expiry on the current item, so an item rewritten
meanwhile with a later TTL survives. Each round reads and deletes a bounded number
of items per table, so expiry never starves requests. DynamoDB deletes within days;
here an expired item goes within a round or a few.
"""
from __future__ import annotations

import asyncio
import itertools
from decimal import Decimal, InvalidOperation

from dynstore import limits
from dynstore.api.errors import ValidationException
from dynstore.api.operations.codec import decode_item
from dynstore.api.operations.schema import ITEMS, owned_items, space_end
from dynstore.api.operations.schema import table as find_table
from dynstore.api.operations.store import write_item
from dynstore.api.operations.tables import existing


async def update_time_to_live(state, request: dict) -> dict:
    spec = request["TimeToLiveSpecification"]
    async with state.router.catalog_lock:
        desc = existing(state, request["TableName"])
        current = desc.get("TimeToLive")
        enabled = bool(current and current["Enabled"])
        if spec["Enabled"]:
            if enabled:
                raise ValidationException("TimeToLive is already enabled")
        else:
            if not enabled:
                raise ValidationException("TimeToLive is already disabled")
            if current["AttributeName"] != spec["AttributeName"]:
                raise ValidationException(
                    "TimeToLive is active on a different AttributeName: current AttributeName is "
                    + current["AttributeName"]
                )
        setting = {"AttributeName": spec["AttributeName"], "Enabled": bool(spec["Enabled"])}
        await state.router.update_table(dict(desc, TimeToLive=setting))
    return {"TimeToLiveSpecification": {"Enabled": setting["Enabled"], "AttributeName": setting["AttributeName"]}}


async def describe_time_to_live(state, request: dict) -> dict:
    desc = existing(state, request["TableName"])
    current = desc.get("TimeToLive")
    if current and current["Enabled"]:
        return {"TimeToLiveDescription": {"TimeToLiveStatus": "ENABLED", "AttributeName": current["AttributeName"]}}
    return {"TimeToLiveDescription": {"TimeToLiveStatus": "DISABLED"}}


def expired(item: dict | None, attribute: str, now: float) -> bool:
    if item is None:
        return False
    av = item.get(attribute)
    if av is None or "N" not in av:
        return False
    try:
        when = Decimal(av["N"])
    except InvalidOperation:
        return False
    return now - limits.TTL_PAST_MAX_S <= when <= Decimal(repr(now))


async def expire_once(state, leads=None) -> int:
    """One round over every TTL-enabled table; returns how many items it deleted.

    ``leads(partition)``, awaited, tells a cluster node whether it may write the partition
    (its replica leads it): a node expires only the partitions it leads.
    """
    deleted = 0
    for name in state.router.table_names():
        desc = state.router.table(name)
        if desc is None or not (desc.get("TimeToLive") or {}).get("Enabled"):
            continue
        table = find_table(state, name)
        attribute = table.ttl_attribute
        now = state.clock()
        start = state.ttl_cursors.get(table.table_id, ITEMS)
        doomed = []
        last = None
        partitions = state.router.partitions(desc)
        if leads is not None:
            partitions = [p for p in partitions if await leads(p)]
            if state.router.table(name) is not desc:
                continue  # the table changed while this node made sure it leads
        items = owned_items(partitions, start, space_end(ITEMS))
        for stored_key, value, _ in itertools.islice(items, limits.TTL_DELETES_PER_ROUND_MAX):
            last = stored_key
            item = decode_item(value)
            if expired(item, attribute, now):
                doomed.append(table.key_of(item))
        # Resume after the last item read, or start over once the table was walked.
        if last is None:
            state.ttl_cursors.pop(table.table_id, None)
        else:
            state.ttl_cursors[table.table_id] = last + b"\x00"

        def decide(old, attribute=attribute, now=now):
            return None if expired(old, attribute, now) else old

        for key in doomed:
            if state.router.table(name) is not desc:
                break  # the table changed or went away meanwhile; the next round sees the new one
            old, new = await write_item(state, table, key, decide)
            deleted += old is not None and new is None
    return deleted


async def expire_forever(state) -> None:
    while True:
        await asyncio.sleep(limits.TTL_SCAN_INTERVAL_S)
        await expire_once(state)
