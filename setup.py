"""Build the native storage extensions.

Two extensions are compiled by `pip install -e .`:

* ``dynstore.storage._btree`` from ``native/btree.pyx`` (Cython), the paged B+tree.
* ``dynstore.storage._wal`` from ``native/wal.c`` through cffi's API mode
  (``native/wal_build.py``), the write-ahead log with group commit.

``DYNSTORE_DEBUG=1`` builds without optimisation and with assertions on.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("DYNSTORE_DEBUG") == "1"
CFLAGS = ["-O0", "-g"] if DEBUG else ["-O2", "-DNDEBUG"]

btree = Extension(
    "dynstore.storage._btree",
    sources=["native/btree.pyx"],
    include_dirs=["native"],
    extra_compile_args=CFLAGS,
)

setup(
    ext_modules=cythonize([btree], language_level=3, compiler_directives={"boundscheck": DEBUG, "wraparound": False}),
    cffi_modules=["native/wal_build.py:ffibuilder"],
)
