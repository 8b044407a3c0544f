"""Build the native storage extensions.

Three extensions are compiled by `pip install -e .`:

* ``dynstore.storage._btree`` from ``native/btree.pyx`` (Cython), the paged B+tree.
* ``dynstore.storage._wal`` from ``native/wal.c`` through cffi's API mode
  (``native/cffi_build.py``), the write-ahead log with group commit.
* ``dynstore.bench._sender`` from ``native/sender.c``, likewise: the benchmark generator's
  sender, which writes requests at their instants and times their answers.

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
    cffi_modules=["native/cffi_build.py:wal", "native/cffi_build.py:sender"],
)
