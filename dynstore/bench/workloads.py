"""The request mixes of ``dynstore bench``: YCSB's core workloads A, B and C, and write-only W.

A workload is a read fraction; each request is a GetItem (read) or a PutItem of the whole
item (write: YCSB's "update" replaces the record's fields, and DESIGN.md §6 budgets PutItem).
Keys are chosen uniformly or from YCSB's scrambled Zipfian distribution (theta 0.99, a few
keys are hot and the hot keys are spread over the key space by a hash, as in YCSB).

Items on the wire (DynamoDB JSON), ``item_size`` bytes by DynamoDB's size rule (names plus
values, UTF-8)::

    {"pk": {"S": "user0000000042"}, "data": {"S": "<filler to reach item_size>"}}

Everything here is pure: randomness comes in as a seeded ``random.Random``, so two runs with
one seed send the same keys in the same order (what ``--compare`` relies on).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import orjson

KEY_ATTRIBUTE = "pk"
DATA_ATTRIBUTE = "data"
ZIPFIAN_THETA = 0.99  # YCSB's ZipfianGenerator.ZIPFIAN_CONSTANT


@dataclass(frozen=True)
class Workload:
    name: str
    read_fraction: float  # GetItem share; the rest are PutItem
    description: str


WORKLOADS = {w.name: w for w in (
    Workload("A", 0.50, "YCSB A, update heavy: 50% GetItem, 50% PutItem"),
    Workload("B", 0.95, "YCSB B, read mostly: 95% GetItem, 5% PutItem"),
    Workload("C", 1.00, "YCSB C, read only: 100% GetItem"),
    Workload("W", 0.00, "write only: 100% PutItem"),
)}

DISTRIBUTIONS = ("uniform", "zipfian")
ARRIVALS = ("constant", "poisson")  # open loop: fixed gaps between sends, or exponential ones


def key_name(index: int) -> str:
    return f"user{index:010d}"


KEYS_MAX = 10 ** 10  # key names are "user" and 10 digits, so every item has the same size


def make_filler(item_size: int) -> str:
    """The ``data`` string that makes every item ``item_size`` bytes."""
    overhead = len(KEY_ATTRIBUTE) + len(key_name(0)) + len(DATA_ATTRIBUTE)
    if item_size <= overhead:
        raise ValueError(f"item size must be more than {overhead} bytes (the key and attribute names)")
    return "x" * (item_size - overhead)


def item(index: int, filler: str) -> dict:
    """The item of key ``index`` as plain values (strings become S), for the load phase."""
    return {KEY_ATTRIBUTE: key_name(index), DATA_ATTRIBUTE: filler}


def _zeta(n: int, theta: float) -> float:
    """sum(1 / i**theta for i in 1..n): exact for the first terms, Euler-Maclaurin for the rest
    (relative error below 1e-12 from 10^4 terms on), so 10^9 keys cost no more than 10^4."""
    head = min(n, 10_000)
    total = sum(i ** -theta for i in range(1, head + 1))
    if n > head:
        a = head + 1
        total += ((n ** (1 - theta) - a ** (1 - theta)) / (1 - theta) + (a ** -theta + n ** -theta) / 2
                  + theta / 12 * (a ** (-theta - 1) - n ** (-theta - 1)))
    return total


def _fnv1a64(value: int) -> int:
    """YCSB's FNVhash64 of the 8 bytes of ``value``, little-endian, as scrambling uses it."""
    h = 0xCBF29CE484222325
    for _ in range(8):
        h = ((h ^ (value & 0xFF)) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        value >>= 8
    return h


class Zipfian:
    """YCSB's ScrambledZipfianGenerator over ``n`` keys (Gray et al., SIGMOD 1994): rank r
    has probability proportional to 1 / r**theta, and rank r is key fnv1a64(r) mod n."""

    def __init__(self, n: int, theta: float = ZIPFIAN_THETA):
        self.n = n
        self.theta = theta
        self.zetan = _zeta(n, theta)
        self.alpha = 1.0 / (1.0 - theta)
        self.eta = (1 - (2.0 / n) ** (1 - theta)) / (1 - _zeta(2, theta) / self.zetan) if n > 1 else 0.0
        self.half_pow_theta = 1 + 0.5 ** theta

    def rank(self, u: float) -> int:
        """The rank (0 is the hottest) for a uniform draw ``u`` in [0, 1)."""
        uz = u * self.zetan
        if uz < 1.0 or self.n == 1:
            return 0
        if uz < self.half_pow_theta:
            return 1
        return min(self.n - 1, int(self.n * (self.eta * u - self.eta + 1) ** self.alpha))

    def key(self, rng: random.Random) -> int:
        return _fnv1a64(self.rank(rng.random())) % self.n


class Requests:
    """The request stream of one generator process: ``next()`` -> (operation, JSON body)."""

    def __init__(self, workload: Workload, *, table: str, keys: int, item_size: int, distribution: str,
                 consistent: bool, rng: random.Random):
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, not {distribution!r}")
        if not 1 <= keys <= KEYS_MAX:
            raise ValueError(f"the key count must be from 1 to {KEYS_MAX}")
        self.read_fraction = workload.read_fraction
        self.table = table
        self.keys = keys
        self.rng = rng
        self.zipfian = Zipfian(keys) if distribution == "zipfian" else None
        self.consistent = consistent
        self.filler = make_filler(item_size)

    def next(self) -> tuple[str, bytes]:
        rng = self.rng
        index = self.zipfian.key(rng) if self.zipfian is not None else rng.randrange(self.keys)
        key = key_name(index)
        if rng.random() < self.read_fraction:
            return "GetItem", orjson.dumps({"TableName": self.table, "Key": {KEY_ATTRIBUTE: {"S": key}},
                                            "ConsistentRead": self.consistent})
        return "PutItem", orjson.dumps({"TableName": self.table, "Item": {KEY_ATTRIBUTE: {"S": key},
                                                                           DATA_ATTRIBUTE: {"S": self.filler}}})
