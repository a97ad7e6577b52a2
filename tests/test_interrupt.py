"""Ctrl-C during `rlvr train`, as a user presses it: the run stops soon, keeps a checkpoint, and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from rlvr.trainer import CtrlC

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(ROOT / "src")}
TRAIN = ["task.options={n: 200, high: 10}", "grpo.prompts_per_step=2", "grpo.num_generations=2",
         "sampling.max_completion_length=6", "eval.n=2", "run.save_steps=0"]


def _steps_logged(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return 0
    return len(metrics.read_text().splitlines())  # one line per finished step


def test_sigint_writes_a_checkpoint_and_the_run_resumes(tmp_path, tiny_dir):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "rlvr", "train", "--model", str(tiny_dir), "--task", "subtraction",
           "-o", str(run_dir), *TRAIN]
    proc = subprocess.Popen([*cmd, "grpo.max_steps=10000"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while _steps_logged(run_dir) < 2:  # let it get going: two steps done, no checkpoint saved yet
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "no training step logged in 300 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        try:  # stops within a few minutes on a loaded machine (seconds on an idle one), not after 10,000 steps
            out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"still running 180 s after SIGINT:\n{out[-2000:]}\n{err[-3000:]}") from None
    finally:
        proc.kill()
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "interrupted" in err and "Traceback" not in err, err[-2000:]
    saved = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert saved, "no checkpoint written on Ctrl-C"
    step = int(saved[-1].split("-")[-1])
    assert step >= 2

    # --resume continues from that step: one more step, then the final model
    done = subprocess.run([*cmd, f"grpo.max_steps={step + 1}", "--resume"], env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [json.loads(line).get("step") for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert step + 1 in steps
    assert (run_dir / "final" / "merged" / "config.json").exists()


class _PressesCtrlCWhileFinalised:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # Python code runs here, so the KeyboardInterrupt is raised in __del__
            time.sleep(0.001)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_swallowed_by_a_finaliser_still_stops_the_loop():
    """CPython ignores an exception raised in __del__, KeyboardInterrupt too: the flag keeps it."""
    ctrl_c = CtrlC().install()
    try:
        _PressesCtrlCWhileFinalised()  # freed at once: the interrupt lands in __del__ and is swallowed
        assert ctrl_c.requested
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()
    finally:
        ctrl_c.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_without_the_flag_that_ctrl_c_is_lost():
    """The failure CtrlC guards against, shown with Python's own handler."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    _PressesCtrlCWhileFinalised()  # prints "Exception ignored in ..." and carries on
