"""Checkpoints against a hostile run folder and a hostile disk (issue 21, items 1, 5 and 10).

- a shared run folder must not run code on `--resume` (no pickle is ever loaded);
- a full disk (here: a file-size limit, which fails writes the same way) gives a message naming the
  file, the space needed and the previous checkpoint, which still loads;
- a run killed before its first checkpoint logs each step once after resuming;
- full fine-tuning stores tied embeddings once, and resume stays exact.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, DigitTask, char_model
from rlvr.checkpoint import (CheckpointError, decode_tree, encode_tree, latest_checkpoint, load_checkpoint,
                             read_checkpoint, save_checkpoint)
from rlvr.config import load_config
from rlvr.tracking import Tracker, read_jsonl
from rlvr.trainer import train


class _CreateFile:
    """Unpickling this creates the file `path` (a stand-in for any code an attacker wants run)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def tiny_run(tmp_path: Path, *overrides: str):
    """A 2-step GRPO run of the character-level Llama on DigitTask, checkpointed at every step."""
    model, tok = char_model(seed=0)
    cfg = load_config(None, [
        f"run.output_dir={tmp_path / 'run'}", "task.system_prompt=",
        f"task.rewards={{{ROOT / 'tests' / 'toy_rewards.py'}:digit_reward: 1.0}}",
        "sampling.max_completion_length=4", "sampling.stop_at_answer=false", "grpo.prompts_per_step=2",
        "grpo.num_generations=4", "grpo.max_steps=2", "eval.on_start=false", "eval.n=0", "run.save_steps=1",
        "run.keep_checkpoints=5", "run.quiet=true", "run.log_samples_every=0", "run.doctor=off", *overrides])
    return cfg, model, tok


def resume(cfg, steps: int):
    model, tok = char_model(seed=0)
    cfg.grpo.max_steps = steps
    return train(cfg, model=model, tokenizer=tok, task=DigitTask("7"), resume=True)


@pytest.fixture
def trained(tmp_path):
    cfg, model, tok = tiny_run(tmp_path)
    train(cfg, model=model, tokenizer=tok, task=DigitTask("7"))
    return cfg, tmp_path / "run"


def test_a_crafted_pickle_in_a_run_folder_does_not_run_on_resume(trained, tmp_path):
    """The old layout's optim_rng.pt, crafted to create a file when unpickled: resume refuses it
    (saying why and what to do) and the file is never created. Before the fix torch.load(weights_only=
    False) ran it."""
    cfg, run = trained
    marker = tmp_path / "pwned"
    ckpt = latest_checkpoint(run)
    for name in ("optim_rng.json", "optim_rng.safetensors"):
        (ckpt / name).unlink()
    with open(ckpt / "optim_rng.pt", "wb") as f:
        pickle.dump({"optimizer": _CreateFile(str(marker))}, f)
    with pytest.raises(CheckpointError, match=r"old pickle format \(optim_rng.pt\).*run any code.*without --resume"):
        resume(cfg, 3)
    assert not marker.exists()
    # the same pickle under the new names is not a safetensors / JSON file: refused, not run
    data = (ckpt / "optim_rng.pt").read_bytes()
    (ckpt / "optim_rng.safetensors").write_bytes(data)
    (ckpt / "optim_rng.json").write_bytes(data)
    with pytest.raises(CheckpointError, match="unreadable: optim_rng.safetensors"):
        read_checkpoint(ckpt)
    assert not marker.exists()


def test_the_json_accepts_only_what_rlvr_writes():
    tensors = {"t": torch.zeros(2)}
    tree = {"dict": [[0, {"tensor": "t"}], ["betas", {"tuple": [0.9, 0.999]}]]}
    assert decode_tree(tree, tensors)[0] is tensors["t"] and decode_tree(tree, tensors)["betas"] == (0.9, 0.999)
    for bad, why in [({"__reduce__": ["os.system", "touch x"]}, "unknown entry"),
                     ([1, 2], "unexpected list"),  # containers are always tagged
                     ({"tensor": "missing"}, "missing from optim_rng.safetensors"),
                     ({"ndarray": "t", "dtype": "|O", "shape": [2]}, "not accepted"),  # object arrays: pickles
                     ({"ndarray": "t", "dtype": "<u4", "shape": [3]}, "do not match")]:
        with pytest.raises(ValueError, match=why):
            decode_tree(bad, tensors)


def test_states_round_trip_exactly():
    """Adam state (int keys, tuple betas, scalar step tensors) and every random state survive
    encode -> JSON -> decode bit for bit."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    value = {"optimizer": opt.state_dict(), "numpy": np.random.get_state(), "python": __import__("random").getstate(),
             "gen": torch.Generator().manual_seed(3).get_state()}
    tensors: dict = {}
    back = decode_tree(json.loads(json.dumps(encode_tree(value, tensors))), tensors)
    assert back["optimizer"]["param_groups"] == value["optimizer"]["param_groups"]
    for i, s in value["optimizer"]["state"].items():
        assert all(torch.equal(s[k], back["optimizer"]["state"][i][k]) for k in s)
    assert back["python"] == value["python"]
    assert back["numpy"][0] == "MT19937" and np.array_equal(back["numpy"][1], value["numpy"][1])
    assert back["numpy"][1].dtype == np.uint32 and back["numpy"][2:] == value["numpy"][2:]
    assert torch.equal(back["gen"], value["gen"])


def test_a_damaged_checkpoint_is_a_clear_error(trained):
    _, run = trained
    ckpt = latest_checkpoint(run)
    (ckpt / "optim_rng.json").write_text("[" * 100_000 + "]" * 100_000)  # nesting bomb
    with pytest.raises(CheckpointError, match="unreadable: optim_rng.json"):
        read_checkpoint(ckpt)
    (ckpt / "optim_rng.json").unlink()
    with pytest.raises(CheckpointError, match="unreadable: optim_rng.json"):
        read_checkpoint(ckpt)
    (ckpt / "state.json").write_text('{"step": "1; rm -rf /"}')
    with pytest.raises(CheckpointError, match="unreadable: state.json: no integer 'step'"):
        read_checkpoint(ckpt)


DISK_FULL = textwrap.dedent("""
    import resource, signal, sys, torch
    sys.path.insert(0, {tests!r})
    from conftest import char_model
    from rlvr.checkpoint import CheckpointError, save_checkpoint

    model, _ = char_model(seed=0)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    kw = dict(model=model, optimizer=opt, scheduler=sched, generators={{"g": torch.Generator()}}, trainer_state={{}})
    save_checkpoint({run!r}, 1, **kw)
    model(torch.tensor([[1, 2]])).logits.sum().backward()
    opt.step()
    # from here every file is limited to 64 kB: writes past that fail with EFBIG, as on a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    try:
        save_checkpoint({run!r}, 2, **kw)
    except CheckpointError as err:
        print(err)
""")


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path):
    """A real failed write (RLIMIT_FSIZE in a subprocess, no mock). Before the fix safetensors'
    `SafetensorError ... File too large` escaped instead of the message."""
    run = tmp_path / "run"
    script = DISK_FULL.format(tests=str(ROOT / "tests"), run=str(run))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    message = done.stdout
    # ~20k parameters: weights 0.08 MB + Adam moments 0.16 MB -> "about 0.2 MB"
    assert "could not write checkpoint" in message and "step-000002" in message
    assert "writing trainable.safetensors failed: File too large" in message
    assert "needs about 0.2 MB" in message and "are free there" in message
    assert "the previous checkpoint step-000001 is intact" in message
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000001"]  # no half-written dir left
    model, _ = char_model(seed=1)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    state = load_checkpoint(run / "checkpoints" / "step-000001", model=model, optimizer=opt, scheduler=sched,
                            generators={"g": torch.Generator()})
    assert state["step"] == 1
    assert torch.equal(model.model.embed_tokens.weight, char_model(seed=0)[0].model.embed_tokens.weight)


def test_a_run_killed_before_its_first_checkpoint_logs_each_step_once(tmp_path):
    """Killed at step 3 with no checkpoint, the run starts again from step 0 and the trainer makes a
    Tracker without purge_step: the old lines of steps 1-3 (and the step-0 evaluation) are replaced,
    not kept beside the new ones. Before the fix metrics.jsonl read steps 1, 2, 3, 1, 2, 3, 4."""
    with Tracker(tmp_path) as tracker:  # the killed run
        tracker.log_eval({"step": 0, "stage": "before", "accuracy": 0.1})
        for step in (1, 2, 3):
            tracker.log({"r": float(step)}, step)
    with Tracker(tmp_path) as tracker:  # --resume, no checkpoint
        tracker.log_eval({"step": 0, "stage": "before", "accuracy": 0.1})
        for step in (1, 2, 3, 4):
            tracker.log({"r": 10.0 * step}, step)
    assert [(r["step"], r["r"]) for r in read_jsonl(tmp_path / "metrics.jsonl")] == [
        (1, 10.0), (2, 20.0), (3, 30.0), (4, 40.0)]
    assert [r["step"] for r in read_jsonl(tmp_path / "eval.jsonl")] == [0]
    # a new run in an empty folder, and appending after the last logged step, remove nothing
    with Tracker(tmp_path) as tracker:
        tracker.log({"r": 50.0}, 5)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def _tied_model():
    model, tok = char_model(seed=0)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the tiny Llama ties its embeddings
    return model, tok


def test_full_fine_tuning_stores_tied_weights_once(tmp_path):
    """The checkpoint's trainable.safetensors is about the model's size (each tensor once), and
    the tie is restored on load. Before the fix it held the embedding twice."""
    model, _ = _tied_model()
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    ckpt = save_checkpoint(tmp_path, 1, model=model, optimizer=opt, scheduler=sched, generators={}, trainer_state={})
    unique = sum(p.nbytes for p in model.parameters()) + sum(b.nbytes for b in model.buffers())
    embedding = model.lm_head.weight.nbytes
    size = (ckpt / "trainable.safetensors").stat().st_size
    assert unique <= size < unique + min(embedding, 16 * 1024)  # + the JSON header, not a second embedding
    weights = read_checkpoint(ckpt)["trainable"]
    assert weights["lm_head.weight"] is weights["model.embed_tokens.weight"]
    assert set(weights) == set(model.state_dict())


def test_full_fine_tuning_resume_stays_exact(tmp_path):
    """4 full fine-tuning steps straight == 2 steps, then resumed for 2 more (tied weights, Adam state,
    random states), to the bit."""
    common = ["model.use_peft=false", "grpo.learning_rate=0.005", "grpo.lr_scheduler_type=constant",
              "grpo.warmup_ratio=0"]
    cfg, model, tok = tiny_run(tmp_path / "straight", *common, "grpo.max_steps=4")
    train(cfg, model=model, tokenizer=tok, task=DigitTask("7"))
    cfg2, model, tok = tiny_run(tmp_path / "split", *common, "grpo.max_steps=2")
    train(cfg2, model=model, tokenizer=tok, task=DigitTask("7"))
    resume(cfg2, 4)
    a, b = (read_checkpoint(tmp_path / d / "run" / "checkpoints" / "step-000004") for d in ("straight", "split"))
    assert set(a["trainable"]) == set(b["trainable"]) and "lm_head.weight" in a["trainable"]
    assert max(float((a["trainable"][k] - b["trainable"][k]).abs().max()) for k in a["trainable"]) == 0.0
    for i, s in a["optimizer"]["state"].items():
        assert all(torch.equal(s[k], b["optimizer"]["state"][i][k]) for k in s)
    assert [m["step"] for m in read_jsonl(tmp_path / "split" / "run" / "metrics.jsonl")] == [1, 2, 3, 4]
