"""Run calls of an untrusted function in a forked child, killed with its whole process group.

Used by `rlvr.rewards.score` for users' reward functions. Why a fork and not a thread: a hang inside
C code (`9**9**9` reached through seed 002's `eval`) holds the GIL, so no thread could stop it; a
child process can be killed. Why a process group: a reward that starts subprocesses of its own (a
sandbox, a compiler, `sleep`) left them running when only the child was killed (issue 21: 18
`sleep` processes reparented to PID 1 after one test run). The child makes itself the leader of a
new group (`os.setpgid(0, 0)`, the parent does the same for it, whichever runs first) and the
parent kills the whole group (`os.killpg`) when the child is done or timed out, before reaping it,
so the group id cannot have been reused. A grandchild that leaves the group on purpose
(`start_new_session=True`) escapes; nothing short of a container stops that.

Time-outs: a job silent for `timeout_s` is killed and reported as a time-out, and the jobs after it
are not run ("skipped"): one hanging function costs one time-out per call, not one per job
(issue 21: an always-hanging reward cost (completions + 1) x timeout per step). A child that dies
(os._exit, a segfault) fails only the job it was running; a new child resumes with the next one.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)
Outcome = tuple[str, Any]
"""(status, payload): ("ok", value), ("error", message), ("timeout", message) or ("skipped", message)"""


def run_forked(job: Callable[[int], Outcome], n_jobs: int, timeout_s: float) -> list[Outcome]:
    """[job(0), ..., job(n_jobs - 1)], each run in a forked child (one child for all, unless one dies).

    `job(k)` runs in the child and must return a picklable (status, payload) and not raise. A job
    silent for `timeout_s` seconds is ("timeout", ...) and every later one ("skipped", ...). Where
    fork is unavailable or fails, the jobs run here, without a time-out.
    """
    outcomes: list[Outcome | None] = [None] * n_jobs
    k = 0
    while k < n_jobs:
        k = _fork_from(job, n_jobs, k, timeout_s, outcomes)
    return outcomes  # type: ignore[return-value]


def run_inline(job: Callable[[int], Outcome], n_jobs: int) -> list[Outcome]:
    return [job(k) for k in range(n_jobs)]


def _fork_from(job, n_jobs: int, k0: int, timeout_s: float, outcomes: list) -> int:
    """One child runs jobs k0.., streaming one frame per job; returns where to resume (n_jobs: done)."""
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork() if hasattr(os, "fork") else -1
    except OSError as e:  # out of memory or processes
        logger.warning("cannot fork for a reward function (%s); running it in-process", e)
        pid = -1
    if pid < 0:
        os.close(read_fd), os.close(write_fd)
        outcomes[k0:] = [job(k) for k in range(k0, n_jobs)]
        return n_jobs
    if pid == 0:  # the child: never returns
        try:
            os.setpgid(0, 0)  # its own process group, so its subprocesses die with it
            os.close(read_fd)
            for k in range(k0, n_jobs):
                _write_frame(write_fd, (k, *job(k)))
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(0)
    try:
        os.setpgid(pid, pid)  # also here: the parent may run first
    except OSError:  # the child did it already, or has exited
        pass
    os.close(write_fd)
    reader, k = _FrameReader(read_fd), k0
    try:
        while k < n_jobs:
            frame = reader.read(timeout_s)
            if frame is None and reader.alive:  # silent past the time-out
                outcomes[k] = ("timeout", f"no result after {timeout_s:g} s")
                outcomes[k + 1:] = [("skipped", "not run: an earlier call timed out")] * (n_jobs - k - 1)
                return n_jobs
            if frame is None:
                outcomes[k] = ("error", "the child process died")
                return k + 1
            k, status, payload = frame
            outcomes[k] = (status, payload)
            k += 1
        return k
    finally:
        kill_group(pid)
        os.close(read_fd)


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by `pid` (and `pid` itself), then reap `pid`."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    os.waitpid(pid, 0)


def _write_frame(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj)
    data = struct.pack("<I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


class _FrameReader:
    """Length-prefixed pickles from a pipe, with a time-out per frame."""

    def __init__(self, fd: int):
        self.fd, self.buffer, self.alive = fd, b"", True

    def read(self, timeout_s: float) -> Any | None:
        deadline = time.monotonic() + timeout_s
        while True:
            if len(self.buffer) >= 4:
                size = struct.unpack("<I", self.buffer[:4])[0]
                if len(self.buffer) >= 4 + size:
                    frame, self.buffer = self.buffer[4 : 4 + size], self.buffer[4 + size :]
                    return pickle.loads(frame)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                self.alive = False
                return None
            self.buffer += chunk
