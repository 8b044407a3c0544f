"""Shared test options and fixtures.

``--long`` turns on the soak and fault runs (more crash rounds, more hypothesis
examples, longer simulations); CI runs the fixed, shorter budget.

A test that takes the ``api`` fixture runs twice: on ``Node`` (the operations
in-process, "single") and on ``ClusterNode`` (the same calls over HTTP to a
``dynstore up --nodes 3`` shared by the session, "cluster"; every table is deleted
after each test). ``@pytest.mark.single_node(reason)`` keeps a test on "single": for
tests that need what only the in-process harness has (restart, the injected clock,
the State).
"""
import os
import zlib

import pytest


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", help="run long soak, crash and fault runs")


def pytest_configure(config):
    if config.getoption("--long"):
        os.environ["DYNSTORE_LONG"] = "1"


def pytest_collection_modifyitems(config, items):
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="long run: pass --long")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


def pytest_generate_tests(metafunc):
    if "harness" in metafunc.fixturenames:
        single = metafunc.definition.get_closest_marker("single_node") is not None
        metafunc.parametrize("harness", ["single"] if single else ["single", "cluster"])


def long_mode() -> bool:
    return os.environ.get("DYNSTORE_LONG") == "1"


@pytest.fixture(params=["native", "reference"])
def storage_backend(request, monkeypatch):
    """Run a storage test once against the native code and once against the reference."""
    monkeypatch.setenv("DYNSTORE_STORAGE", request.param)
    return request.param


@pytest.fixture(scope="session")
def api_cluster(tmp_path_factory):
    """One `dynstore up --nodes 3` for every "cluster" run of the session."""
    from test_cluster import Cluster
    cluster = Cluster(tmp_path_factory.mktemp("api-cluster") / "data")
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def api(harness, tmp_path, request):
    """The operations, in-process or through a cluster node (see the module docstring)."""
    from operations_harness import ClusterNode, Node
    if harness == "single":
        node = Node(str(tmp_path / "data"))
        yield node
        node.close()
        return
    cluster = request.getfixturevalue("api_cluster")
    # Tests enter through different nodes (fixed by their name), so every node forwards to the others.
    node = ClusterNode(cluster.endpoints[1 + zlib.crc32(request.node.nodeid.encode()) % 3])
    try:
        node.drop_tables()  # what a test of another module sharing the cluster left
        yield node
    finally:
        node.drop_tables()
        node.close()
