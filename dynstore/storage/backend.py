"""Choice between the native storage code and its pure-Python reference.

``DYNSTORE_STORAGE=native`` (the default) uses the C WAL and the Cython B+tree;
``DYNSTORE_STORAGE=reference`` uses the pure-Python versions, which write the
same file formats and exist so that every storage test can run against both.
"""
import os

BACKENDS = ("native", "reference")


def default_backend() -> str:
    name = os.environ.get("DYNSTORE_STORAGE", "native")
    if name not in BACKENDS:
        raise ValueError(f"DYNSTORE_STORAGE must be one of {BACKENDS}, not {name!r}")
    return name
