"""The replication messages' codec on the write path: per replicated 1 KB write, a leader
encodes an Accept to each follower and decodes their Accepted; a follower does the reverse
and also encodes the Entries record it logs.

Run: pytest bench/bench_messages.py --benchmark-only -p no:cacheprovider
"""
import pytest

from dynstore.replication.messages import Accept, Accepted, Ballot, Entries, Entry, decode, encode

ENTRY = Entry(41, Ballot(3, 1), 1, b"v" * 1100)  # one write batch of a 1 KB item
MESSAGES = {
    "Accept": Accept(7, 1, 2, Ballot(3, 1), 40, Ballot(3, 1), 40, 1234.5, (ENTRY,)),
    "Accepted": Accepted(7, 2, 1, Ballot(3, 1), Ballot(3, 1), True, 41, 1234.5),
    "Entries": Entries((ENTRY,)),
}


@pytest.mark.parametrize("name", MESSAGES)
def test_encode(benchmark, name):
    benchmark.group = "encode"
    benchmark(encode, MESSAGES[name])


@pytest.mark.parametrize("name", MESSAGES)
def test_decode(benchmark, name):
    benchmark.group = "decode"
    frame = encode(MESSAGES[name])
    assert benchmark(decode, frame) == MESSAGES[name]
