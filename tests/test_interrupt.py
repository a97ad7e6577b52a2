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

from conftest import ROOT, DigitTask, char_model
from rlvr.config import load_config
from rlvr.trainer import train

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
    # SIGINT as a terminal delivers it: a shell ignores it in background jobs (`cmd &`), the child
    # would inherit that, and Python then keeps ignoring it (the "lost Ctrl-C" of earlier runs)
    proc = subprocess.Popen([*cmd, "grpo.max_steps=10000"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_swallowed_by_a_finaliser_still_stops_training(tmp_path):
    """CPython drops a KeyboardInterrupt raised in a `__del__`: the trainer's flag stops the run anyway.

    The reward's second call (step 2) presses Ctrl-C inside a finaliser; without the flag the run
    would train all 6 steps and return."""
    import signal as signal_module

    if signal_module.getsignal(signal_module.SIGINT) is not signal_module.default_int_handler:
        pytest.skip("SIGINT is not Python's default here (ignored by the shell?)")
    model, tok = char_model(seed=0)
    cfg = load_config(None, [
        f"run.output_dir={tmp_path / 'run'}", "model.use_peft=false", "task.system_prompt=",
        f"task.rewards={{{ROOT / 'tests' / 'toy_rewards.py'}:ctrl_c_in_finaliser_reward: 1.0}}",
        "sampling.max_completion_length=4", "sampling.stop_at_answer=false", "grpo.prompts_per_step=2",
        "grpo.num_generations=2", "grpo.max_steps=6", "eval.on_start=false", "eval.n=0",
        "run.save_steps=0", "run.quiet=true", "run.log_samples_every=0", "run.doctor=off",
    ])
    with pytest.raises(KeyboardInterrupt):
        train(cfg, model=model, tokenizer=tok, task=DigitTask("7"))
    assert _steps_logged(tmp_path / "run") == 2  # stopped before step 3
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-000002"]
    assert signal_module.getsignal(signal_module.SIGINT) is signal_module.default_int_handler  # restored
