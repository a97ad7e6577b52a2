"""rlvr.allocator: the `rlvr` command re-executes itself under mimalloc, and leaves the environment as it was.

Real processes: each test starts a Python child and reads what its own /proc/self/maps says.
"""

import os
import subprocess
import sys

import pytest

from rlvr import allocator

needs_mimalloc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or allocator.mimalloc_library() is None,
    reason="mimalloc is installed with rlvr on Linux only (cmeel-mimalloc)")

PROBE = """
import os
from rlvr import allocator
allocator.relaunch_with_mimalloc()
print(allocator.configure(), repr(os.environ.get("LD_PRELOAD")), os.environ.get("MIMALLOC_PURGE_DELAY"))
"""


def _child(code: str, **env) -> list[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("LD_PRELOAD", allocator.CHOICE_ENV, "MIMALLOC_PURGE_DELAY", "RLVR_PRELOADED")}
    proc = subprocess.run([sys.executable, "-c", code], check=False, env={**clean, **env}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@needs_mimalloc
def test_relaunch_runs_under_mimalloc_and_restores_the_environment():
    which, preload, delay = _child(PROBE)
    assert which == "mimalloc"
    assert preload == "None"  # children of rlvr get the user's environment back
    assert delay == "-1"


@needs_mimalloc
def test_relaunch_keeps_the_users_preload_and_mimalloc_options():
    which, preload, delay = _child(PROBE, LD_PRELOAD="libm.so.6", MIMALLOC_PURGE_DELAY="10")
    assert which == "mimalloc"
    assert preload == "'libm.so.6'"
    assert delay == "10"


def test_glibc_when_asked():
    which, preload, delay = _child(PROBE, RLVR_ALLOCATOR="glibc")
    assert which == "glibc"
    assert preload == "None" and delay == "None"


@needs_mimalloc
def test_a_refused_preload_does_not_loop(tmp_path):
    """A relaunch already tried (the marker set) is not tried again, whatever the loader did."""
    which, _, _ = _child(PROBE, RLVR_PRELOADED=str(tmp_path / "libmissing.so"))
    assert which == "glibc"


@needs_mimalloc
def test_the_rlvr_command_reports_mimalloc():
    proc = subprocess.run([sys.executable, "-m", "rlvr", "env"], check=False, capture_output=True, text=True,
                          timeout=300,
                          env={k: v for k, v in os.environ.items() if k != allocator.CHOICE_ENV})
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("malloc"))
    assert "mimalloc (" in line and str(allocator.mimalloc_library()) in line

