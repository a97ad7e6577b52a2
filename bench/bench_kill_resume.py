"""Kill `rlvr train` with SIGKILL at random moments, resume each time, and compare with a run never killed.

A tiny random Llama (the SmolLM2 tokenizer, hidden size 64: 12.9 MB of weights, tied embeddings)
is fully fine-tuned on subtraction with a checkpoint at every step (weights + Adam state, ~37 MB),
so a good part of each step is a checkpoint write. Each round starts `rlvr train --resume` in a
subprocess and SIGKILLs it, alternately, when a checkpoint's temporary directory appears (during a
write) or at a random moment in the three steps after the round's first new step; a kill that
leaves a new temporary directory behind was during a write. After K kills the run is resumed to
the end. The final weights are compared with an uninterrupted run of the same command (max abs
diff: 0.0 when resume is exact), and metrics.jsonl must hold each step once, with the same rewards.
Most of a round is the process start-up (~25 s on 2 busy cores).

    .venv/bin/python bench/bench_kill_resume.py                 # K=12 kills, 40 steps
    .venv/bin/python bench/bench_kill_resume.py --kills 15 --steps 20 --seed 1

Prints one JSON object and writes it to bench/results/kill_resume.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(ROOT / "src")}
TRAIN = ["--task", "subtraction", "task.options={n: 200, high: 10}", "model.use_peft=false",
         "grpo.prompts_per_step=2", "grpo.num_generations=4", "sampling.max_completion_length=8",
         "grpo.learning_rate=0.001", "eval.n=0", "eval.on_start=false", "run.doctor=off", "run.save_steps=1",
         "run.keep_checkpoints=2", "run.quiet=true", "run.log_samples_every=0", "run.threads=1"]


def make_model(path: Path) -> Path:
    """The tiny random Llama of the tests (`tiny_random_model`), saved as a model directory."""
    from rlvr.models import tiny_random_model

    model, tok = tiny_random_model(0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def command(model: Path, run: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "rlvr", "train", "--model", str(model), "-o", str(run), *TRAIN,
            f"grpo.max_steps={steps}", "--resume"]


def steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def temporary_dirs(run: Path) -> set[str]:
    """The checkpoints' temporary directories: one is there while a checkpoint is being written (and
    stays when the writer was killed, until the next checkpoint prunes it)."""
    root = run / "checkpoints"
    return {p.name for p in root.iterdir() if p.name.startswith(".step-") and ".tmp-" in p.name} if root.is_dir() else set()


def kill_round(cmd: list[str], run: Path, during_write: bool, rng: random.Random, step_s: float) -> dict:
    """Start the run, SIGKILL it (during a checkpoint write, or at a random moment after its first
    new step); return what happened."""
    before, stale = steps_logged(run), temporary_dirs(run)
    wait_steps = 1 + rng.randint(0, 1)  # a write during the round's first or second new step's checkpoint
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    delay = rng.uniform(0, 3 * step_s)
    started, first_new = time.time(), None
    try:
        while proc.poll() is None:
            if first_new is None and steps_logged(run) > before:
                first_new = time.time()
            if during_write and steps_logged(run) >= before + wait_steps and temporary_dirs(run) - stale:
                break
            if not during_write and first_new is not None and time.time() - first_new >= delay:
                break
            time.sleep(0.001 if during_write else 0.01)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    finally:
        proc.kill()
    return {"finished": finished, "returncode": proc.returncode, "during_write": bool(temporary_dirs(run) - stale),
            "steps_before": before, "steps_after": steps_logged(run), "seconds": round(time.time() - started, 1),
            "stderr": err.decode(errors="replace")[-500:] if finished and proc.returncode else ""}


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "final" / "merged" / "model.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "kill_resume.json"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    try:
        model = make_model(tmp / "model")
        t = time.time()
        ref = subprocess.run(command(model, tmp / "straight", args.steps), env=ENV, capture_output=True, text=True, check=False)
        assert ref.returncode == 0, ref.stderr[-3000:]
        times = [json.loads(line)["time"] for line in (tmp / "straight" / "metrics.jsonl").read_text().splitlines()]
        step_s = (times[-1] - times[0]) / max(1, len(times) - 1)  # one training step (and its checkpoint)
        startup_s = time.time() - t - step_s * args.steps
        run, rounds = tmp / "killed", []
        while len(rounds) < args.kills:
            r = kill_round(command(model, run, args.steps), run, len(rounds) % 2 == 0, rng, step_s)
            rounds.append(r)
            print(json.dumps(r), flush=True)
            if r["finished"]:
                break
        done = subprocess.run(command(model, run, args.steps), env=ENV, capture_output=True, text=True, check=False)
        resumed_ok = sum(1 for r in rounds if not r["stderr"]) + (done.returncode == 0)
        a, b = weights(tmp / "straight"), weights(run) if done.returncode == 0 else {}
        diff = max(float((a[k] - b[k]).abs().max()) for k in a) if b else None
        metric = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        straight = [json.loads(line) for line in (tmp / "straight" / "metrics.jsonl").read_text().splitlines()]
        key = "reward/total/mean"
        result = {
            "kills": sum(1 for r in rounds if not r["finished"]),
            "kills_during_checkpoint_write": sum(1 for r in rounds if r["during_write"] and not r["finished"]),
            "resumed_ok": resumed_ok, "runs": len(rounds) + 1, "final_returncode": done.returncode,
            "max_abs_weight_diff": diff,
            "metrics_steps_once": [m["step"] for m in metric] == list(range(1, args.steps + 1)),
            "metrics_same_rewards": [m.get(key) for m in metric] == [m.get(key) for m in straight],
            "steps": args.steps, "seed": args.seed, "step_seconds": round(step_s, 2),
            "startup_seconds": round(startup_s, 1),
            "checkpoint_mb": round(sum(f.stat().st_size for f in (run / "checkpoints").glob("step-*/*")) / 2**20
                                   / max(1, len(list((run / "checkpoints").glob("step-*")))), 1),
            "model_mb": round((model / "model.safetensors").stat().st_size / 2**20, 1),
            "seconds": round(time.time() - t0, 1), "rounds": rounds,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
