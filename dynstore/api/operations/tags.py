"""TagResource, UntagResource, ListTagsOfResource.

Tags live in the table's stored description (``Tags``: a list of ``{"Key", "Value"}``
in the order they were first set), so they are as durable as the table and go away
with it. A resource is named by its ARN, ``arn:aws:dynamodb:<region>:<account>:table/<name>``.
"""
from __future__ import annotations

import unicodedata

from dynstore import limits
from dynstore.api.errors import ResourceNotFoundException, ValidationException

_INVALID = "One or more parameter values were invalid: "
# AWS tag characters: Unicode letters, digits and white space, plus these.
_TAG_PUNCTUATION = frozenset("_.:/=+-@")


def _tag_text_ok(text: str) -> bool:
    return all(c in _TAG_PUNCTUATION or unicodedata.category(c)[0] in "LNZ" for c in text)


def validate_tags(tags: list[dict]) -> None:
    for tag in tags:
        key, value = tag["Key"], tag["Value"]
        if not 1 <= len(key) <= limits.TAG_KEY_CHARS_MAX or not _tag_text_ok(key):
            raise ValidationException(_INVALID + f"Illegal tag key: {key}")
        if len(value) > limits.TAG_VALUE_CHARS_MAX or not _tag_text_ok(value):
            raise ValidationException(_INVALID + f"Illegal tag value: {value}")
        if key.startswith("aws:"):
            raise ValidationException(_INVALID + "Tag keys starting with 'aws:' are reserved for system use")
    if len({tag["Key"] for tag in tags}) > limits.TAGS_PER_RESOURCE_MAX:
        raise ValidationException(
            _INVALID + f"The number of tags exceeds the limit of {limits.TAGS_PER_RESOURCE_MAX} per resource"
        )


def _table_of(state, arn: str) -> dict:
    """The stored description of the table an ARN names, with DynamoDB's errors."""
    if not arn.startswith("arn:"):
        raise ValidationException(f"ARNs must start with 'arn:': {arn}")
    parts = arn.split(":", 5)
    # A table's ARN, not one of its indexes' or streams' (table/<name>/index/<index>): those have
    # no tags of their own.
    if len(parts) != 6 or parts[2] != "dynamodb" or not parts[5].startswith("table/") or "/" in parts[5][6:]:
        raise ValidationException(f"Invalid TableArn: Invalid ResourceArn provided as input {arn}")
    name = parts[5][len("table/"):]
    desc = state.router.table(name)
    if desc is None or parts[3] != state.region or parts[4] != state.account_id:
        raise ResourceNotFoundException(f"Requested resource not found: ResourcArn: {arn} not found")
    return desc


async def tag_resource(state, request: dict) -> dict:
    tags = request["Tags"]
    async with state.router.catalog_lock:
        desc = _table_of(state, request["ResourceArn"])
        if not tags:
            raise ValidationException(_INVALID + "Atleast one tag is required")
        merged = {tag["Key"]: tag["Value"] for tag in desc["Tags"]}
        merged.update((tag["Key"], tag["Value"]) for tag in tags)
        new_tags = [{"Key": key, "Value": value} for key, value in merged.items()]
        validate_tags(new_tags)
        await state.router.update_table(dict(desc, Tags=new_tags))
    return {}


async def untag_resource(state, request: dict) -> dict:
    removed = set(request["TagKeys"])
    async with state.router.catalog_lock:
        desc = _table_of(state, request["ResourceArn"])
        if not removed:
            raise ValidationException(_INVALID + "Atleast one tag key is required")
        kept = [tag for tag in desc["Tags"] if tag["Key"] not in removed]
        if len(kept) != len(desc["Tags"]):
            await state.router.update_table(dict(desc, Tags=kept))
    return {}


async def list_tags_of_resource(state, request: dict) -> dict:
    desc = _table_of(state, request["ResourceArn"])
    return {"Tags": list(desc["Tags"])}
