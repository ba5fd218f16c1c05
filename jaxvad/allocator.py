"""The process's memory allocator: TCMalloc, where it is installed, for every jaxvad command.

XLA:CPU allocates the temporaries of each execution of a compiled step with `malloc` (one
buffer per device and execution: 139 MiB for the `synthetic` train step) and frees them when
the step ends. glibc serves a chunk that large to a worker thread with `mmap` and gives it
back with `munmap` (above 64 MiB its per-thread arenas always do, whatever `mallopt` says), so
every step faults all its temporaries' pages in anew: about 71,000 page faults a step there,
a fifth of the step's CPU time spent in the kernel. TCMalloc keeps freed spans for reuse.
With it the `synthetic` train step runs about 1.25× as fast on the 2-core CPU (README: Watch).

A running process cannot change its allocator, so a command (`python -m jaxvad.…`) starts
again with TCMalloc preloaded (`LD_PRELOAD`), as the CPU launchers of Intel's and DeepSpeed's
PyTorch extensions do. `jaxvad/__init__.py` calls `use_tcmalloc`, so the restart comes before
the command imports JAX (it costs a Python start, not the ~3 s of the imports). The
environment variable `JAXVAD_TCMALLOC` decides:
- unset or `1`: preload it where the dynamic linker finds `libtcmalloc_minimal` (Debian/Ubuntu:
  `apt-get install libtcmalloc-minimal4`) and it is not loaded yet; otherwise run on;
- `0`: keep the system's allocator;
- `preloaded`: set by the restart itself, so a preload that failed is not tried again.
`python -m jaxvad` prints the line the training log and the benchmarks give about
it. Child processes (data workers, `ffmpeg`) inherit the preload. Anything else that imports
jaxvad (a script, pytest) is never restarted.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

ENV = "JAXVAD_TCMALLOC"
LIBRARY = "tcmalloc_minimal"
# TCMalloc reports every allocation above 1 GiB on stderr by default; a prepared dataset's
# arrays can be larger, and that is no news.
_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}


def loaded() -> bool:
    """Whether TCMalloc is mapped into this process (Linux; False elsewhere)."""
    try:
        return "tcmalloc" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def is_command(argv: list[str]) -> bool:
    """Whether `argv` (a `sys.orig_argv`) runs jaxvad: `python [options] -m jaxvad[.…]`."""
    if "-m" not in argv[:-1]:
        return False
    module = argv[argv.index("-m") + 1]
    return module == "jaxvad" or module.startswith("jaxvad.")


def use_tcmalloc(library: str | None = None) -> None:
    """Restarts this process's command (`sys.orig_argv`) with TCMalloc preloaded, where the
    module docstring's rules allow it; returns where they do not, and in any process that is
    not a jaxvad command. `library`: the shared object to preload (default: the one the
    dynamic linker finds for `libtcmalloc_minimal`)."""
    if sys.platform != "linux" or not is_command(sys.orig_argv):
        return
    if os.environ.get(ENV, "1") != "1" or loaded():
        return
    library = library or ctypes.util.find_library(LIBRARY)
    if not library:
        return
    preload = " ".join(filter(None, (library, os.environ.get("LD_PRELOAD"))))
    env = {**_QUIET, **os.environ, "LD_PRELOAD": preload, ENV: "preloaded"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def describe() -> str:
    """One line for a command's log: which allocator this process runs on, and why."""
    if loaded():
        return "memory allocator: TCMalloc"
    if os.environ.get(ENV) == "0":
        return f"memory allocator: the system's ({ENV}=0)"
    if sys.platform == "linux" and not ctypes.util.find_library(LIBRARY):
        return (
            "memory allocator: the system's; installing TCMalloc (Debian/Ubuntu: apt-get "
            "install libtcmalloc-minimal4) makes CPU steps about 1.25x as fast"
        )
    return "memory allocator: the system's"
