"""cffi (API mode) builds of the native C modules:

* ``dynstore.storage._wal`` from native/wal.c: the write-ahead log with group commit.
* ``dynstore.bench._sender`` from native/sender.c: the benchmark generator's sender.

setup.py runs them through ``cffi_modules``; ``python3 native/cffi_build.py`` builds both
in place for quick iteration. Each module's C declarations come from its header (the part
between its cdef markers), so the header is the one place its interface is written.

io_uring is driven through the raw system calls and needs only the kernel's
<linux/io_uring.h>, so the WAL builds, and falls back to fdatasync at run time, on any
Linux whether or not liburing is installed.
"""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEBUG = os.environ.get("DYNSTORE_DEBUG") == "1"


def _builder(module: str, name: str) -> FFI:
    """The builder of ``module`` from native/<name>.c and the cdef part of native/<name>.h."""
    with open(os.path.join(HERE, f"{name}.h")) as f:
        cdef = f.read().split("/* cdef begin */")[1].split("/* cdef end */")[0]
    ffibuilder = FFI()
    ffibuilder.cdef(cdef)
    ffibuilder.set_source(
        module,
        f'#include "{name}.h"',
        # setuptools takes only paths relative to the project root (the working directory
        # of every build: setup.py and the __main__ block below both run from there).
        sources=[f"native/{name}.c"],
        include_dirs=["native"],
        extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]
        + (["-O0", "-g"] if DEBUG else ["-O2", "-DNDEBUG"]),
        libraries=["pthread", "m"],
    )
    return ffibuilder


wal = _builder("dynstore.storage._wal", "wal")
sender = _builder("dynstore.bench._sender", "sender")

if __name__ == "__main__":
    import shutil

    # cffi compiles inside its tmpdir, so the relative source paths must resolve there too.
    tmpdir = os.path.join(ROOT, "build", "cffi")
    os.makedirs(tmpdir, exist_ok=True)
    if not os.path.lexists(os.path.join(tmpdir, "native")):
        os.symlink(HERE, os.path.join(tmpdir, "native"))
    os.chdir(ROOT)
    for ffibuilder, package, name in ((wal, "storage", "_wal"), (sender, "bench", "_sender")):
        built = ffibuilder.compile(tmpdir=tmpdir)
        # The name `pip install -e .` gives it (cffi builds for the stable ABI), so one replaces
        # the other; renamed into place so that running processes keep the file they mapped.
        target = os.path.join("dynstore", package, f"{name}.abi3.so")
        shutil.copy(built, target + ".tmp")
        os.replace(target + ".tmp", target)
