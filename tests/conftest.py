"""Shared test options.

``--long`` turns on the soak and fault runs (more crash rounds, more hypothesis
examples, longer simulations); CI runs the fixed, shorter budget.
"""
import os

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


def long_mode() -> bool:
    return os.environ.get("DYNSTORE_LONG") == "1"


@pytest.fixture(params=["native", "reference"])
def storage_backend(request, monkeypatch):
    """Run a storage test once against the native code and once against the reference."""
    monkeypatch.setenv("DYNSTORE_STORAGE", request.param)
    return request.param
