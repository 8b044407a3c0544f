"""cffi (API mode) build of the native write-ahead log: ``dynstore.storage._wal``.

setup.py runs it through ``cffi_modules``; ``python3 native/wal_build.py`` builds the
module in place for quick iteration. The C declarations come from native/wal.h (the part
between its cdef markers), so the header is the one place the interface is written.

io_uring is driven through the raw system calls and needs only the kernel's
<linux/io_uring.h>, so the module builds, and falls back to fdatasync at run time, on any
Linux whether or not liburing is installed.
"""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEBUG = os.environ.get("DYNSTORE_DEBUG") == "1"


def _cdef() -> str:
    with open(os.path.join(HERE, "wal.h")) as f:
        text = f.read()
    return text.split("/* cdef begin */")[1].split("/* cdef end */")[0]


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "dynstore.storage._wal",
    '#include "wal.h"',
    # setuptools takes only paths relative to the project root (the working directory
    # of every build: setup.py and the __main__ block below both run from there).
    sources=["native/wal.c"],
    include_dirs=["native"],
    extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]
    + (["-O0", "-g"] if DEBUG else ["-O2", "-DNDEBUG"]),
    libraries=["pthread"],
)

if __name__ == "__main__":
    import shutil

    # cffi compiles inside its tmpdir, so the relative source paths must resolve there too.
    tmpdir = os.path.join(ROOT, "build", "cffi")
    os.makedirs(tmpdir, exist_ok=True)
    if not os.path.lexists(os.path.join(tmpdir, "native")):
        os.symlink(HERE, os.path.join(tmpdir, "native"))
    os.chdir(ROOT)
    built = ffibuilder.compile(tmpdir=tmpdir)
    # The name `pip install -e .` gives it (cffi builds for the stable ABI), so one replaces the
    # other; renamed into place so that running processes keep the file they mapped.
    target = os.path.join("dynstore", "storage", "_wal.abi3.so")
    shutil.copy(built, target + ".tmp")
    os.replace(target + ".tmp", target)
