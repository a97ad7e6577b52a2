"""How an `rlvr` process gets its memory: mimalloc when it can, else glibc with a 1 MB mmap threshold.

A training step on a CPU allocates gigabytes of short-lived tensors (activations, their gradients,
log-prob chunks). glibc serves them badly either way:
  - with its default settings, freed blocks stay in a fragmented heap: one 135M LoRA update peaked
    at 5.3 GB where 1.7 GB were live (bench/bench_update.py);
  - with a 1 MB mmap threshold (`limit_heap_fragmentation`, what rlvr did until December 2026) every
    large tensor is fresh memory from the kernel, zeroed one 4 KB page fault at a time: 2.8 million
    faults and 7.3 of 26 CPU seconds in the kernel in one update of 32 x 128 tokens.
mimalloc (Microsoft's allocator, shipped on PyPI as `cmeel-mimalloc`) keeps freed memory and reuses
it across sizes with little fragmentation; told never to return it to the kernel (MIMALLOC_PURGE_DELAY
=-1) it takes no page faults after the first update. Measured in `bench/bench_update.py +mimalloc`.

A process cannot change its malloc once running, so `relaunch_with_mimalloc` re-executes the
command (same pid, same arguments) with the library in LD_PRELOAD, before torch is imported; the
`rlvr` command does this first thing. RLVR_ALLOCATOR=glibc turns it off; MIMALLOC_* options set in
the environment are kept. The preload is taken out of the environment again once loaded, so
subprocesses (reward sandboxes, git, ...) start with the user's own environment.

This module imports nothing heavy: it runs before torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CHOICE_ENV = "RLVR_ALLOCATOR"
"""mimalloc (default where the library is installed, Linux) or glibc"""
_ADDED_ENV = "RLVR_PRELOADED"
"""set by the relaunch: the LD_PRELOAD entry it added (also stops a second relaunch)"""
MIMALLOC_DEFAULTS = {"MIMALLOC_PURGE_DELAY": "-1"}
"""never hand freed memory back to the kernel: the next update reuses it without page faults"""
PRELOADABLE = ("mimalloc", "jemalloc", "tcmalloc")
"""allocators a user may have preloaded themselves (left as they are)"""


def mimalloc_library() -> Path | None:
    """libmimalloc.so of the installed `cmeel-mimalloc` distribution, found without importing it."""
    from importlib import metadata

    try:
        files = metadata.distribution("cmeel-mimalloc").files or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "libmimalloc.so":
            path = Path(file.locate())
            if path.is_file():
                return path.resolve()
    return None


def active() -> str:
    """The malloc this process runs on: the preloaded allocator mapped into it (mimalloc, jemalloc,
    tcmalloc), else 'glibc' on Linux, 'system' elsewhere."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "system"
    for name in PRELOADABLE:
        if f"lib{name}" in maps:
            return name
    return "glibc" if sys.platform.startswith("linux") else "system"


def start() -> str:
    """What the `rlvr` command does first: `relaunch_with_mimalloc`, then `configure`; returns the
    allocator the process runs on (see `active`). Benchmarks call it to run as the command does."""
    relaunch_with_mimalloc()
    return configure()


def relaunch_with_mimalloc() -> None:
    """Re-execute this process with mimalloc preloaded; returns (doing nothing) when it should not.

    It does not when: not on Linux, RLVR_ALLOCATOR=glibc, mimalloc not installed, an allocator
    already preloaded (mimalloc, or the user's jemalloc / tcmalloc), or a relaunch already tried (a
    library the loader refused must not loop). The command line is `sys.orig_argv` (the
    interpreter and its own flags included); the pid stays the same."""
    if not sys.platform.startswith("linux") or os.environ.get(CHOICE_ENV, "mimalloc") != "mimalloc":
        return
    if _ADDED_ENV in os.environ or active() != "glibc":
        return
    library = mimalloc_library()
    if library is None:
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [str(library), env.get("LD_PRELOAD", "")]))
    env[_ADDED_ENV] = str(library)
    for key, value in MIMALLOC_DEFAULTS.items():
        env.setdefault(key, value)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def configure() -> str:
    """Settle this process's allocator at start-up; returns which it is (see `active`).

    After a relaunch: removes the preload it added from the environment. Without mimalloc: glibc's
    1 MB mmap threshold (`limit_heap_fragmentation`). Idempotent."""
    added = os.environ.pop(_ADDED_ENV, None)
    if added:
        rest = [p for p in os.environ.get("LD_PRELOAD", "").split() if p != added]
        if rest:
            os.environ["LD_PRELOAD"] = " ".join(rest)
        else:
            os.environ.pop("LD_PRELOAD", None)
    which = active()
    if which == "glibc":
        limit_heap_fragmentation()
    return which


def describe() -> str:
    """One line for `rlvr env` and reports: the malloc in use and why."""
    which, library = active(), mimalloc_library()
    if which == "mimalloc":
        return f"mimalloc ({library or 'preloaded'}; purge delay {os.environ.get('MIMALLOC_PURGE_DELAY', '-1')} ms)"
    if which == "glibc":
        why = ("RLVR_ALLOCATOR=glibc" if os.environ.get(CHOICE_ENV, "mimalloc") != "mimalloc"
               else "cmeel-mimalloc is not installed" if library is None else "not started by the rlvr command")
        return f"glibc, large blocks by mmap ({why})"
    return which


def limit_heap_fragmentation() -> None:
    """Serve large allocations with mmap so freed activations go back to the OS (Linux glibc only).

    glibc's default keeps freed blocks in its heap, and the many differently sized activation
    tensors of a training step fragment it: measured on the 135M model with LoRA (bench/bench_update.py),
    peak RSS fell from 5.3 GB to 1.7 GB with this one call. The price is page faults: every large
    tensor is fresh memory from the kernel. Measured on one update (32 x 128 tokens, LoRA, prompt
    sharing): 4.6 GB and 16.7 s with it, 6.9 GB and 12.0 s without. A threshold set in the
    environment (MALLOC_MMAP_THRESHOLD_, in bytes, which glibc reads at start-up) is left as it is.
    The fallback when mimalloc is not there (see the module docstring).
    """
    if not sys.platform.startswith("linux") or os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB
    except (OSError, AttributeError):
        pass
