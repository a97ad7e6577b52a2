"""Data-parallel training on 2 CPU processes (gloo): the same weights as 1 process, and clean failures.

Unit tests of the pure helpers of `rlvr.distributed`, then real runs in subprocesses, as a user
starts them: `rlvr train --num-processes 2` (torch.distributed.run) and `accelerate launch
--multi_gpu --num_processes 2 -m rlvr train` (on a CPU machine accelerate then runs gloo), on a tiny
random character-level Llama saved as a model directory, the toy digit task (conftest.DigitTask)
and its dense reward (toy_rewards.digit_reward). Every process runs one thread.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT, char_model
from rlvr.buffer import Buffer, shuffled_order
from rlvr.checkpoint import latest_checkpoint
from rlvr.config import load_config
from rlvr.distributed import (Dist, combine_metrics, relaunch_command, setup_distributed, shard_bounds,
                              shard_for_rank, shard_optimizer_batches)
from rlvr.trainer import train

# ----------------------------------------------------------------------------------------------
# pure helpers
# ----------------------------------------------------------------------------------------------


def test_shards_are_contiguous_and_cover_everything():
    # 5 prompts on 2 processes: 3 + 2; 1 prompt on 2 processes: 1 + 0
    assert [shard_bounds(5, r, 2) for r in range(2)] == [(0, 3), (3, 5)]
    assert [shard_bounds(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]
    assert [shard_for_rank("abcdefg", r, 3) for r in range(3)] == [list("abc"), list("de"), list("fg")]


@pytest.mark.parametrize("by_group", [False, True])
def test_optimizer_batches_are_split_not_changed(by_group):
    """Each process's rows of optimizer batch s, put together, are one process's batch s."""
    rollouts = [SimpleNamespace(i=i, group=i // 3) for i in range(11)]  # 4 groups: 3, 3, 3, 2
    groups = [r.group for r in rollouts]
    one = Buffer(rollouts).optimizer_batches(3, 2, torch.Generator().manual_seed(5), by_group)
    shards = []
    for rank in range(2):
        lo, hi = shard_bounds(len(rollouts), rank, 2)
        shards.append(shard_optimizer_batches(rollouts[lo:hi], lo, groups, 3, 2,
                                              torch.Generator().manual_seed(5), by_group))
    assert len(one) == len(shards[0]) == len(shards[1]) == 3  # ceil(11 / 3) = 4 rows per step: 4, 4, 3
    for s, batch in enumerate(one):
        together = [x.i for shard in shards for micro in shard[s] for x in micro]
        assert sorted(together) == sorted(x.i for micro in batch for x in micro)
        assert all(len(micro) <= 2 for shard in shards for micro in shard[s])
    # one process: the same batches, micro-batches and order as the buffer's own
    assert shard_optimizer_batches(rollouts, 0, groups, 3, 2, torch.Generator().manual_seed(5), by_group) == one


def test_shuffled_order_by_group_keeps_groups_together():
    groups = [0, 0, 0, 1, 1, 1, 2, 2]
    order = shuffled_order(groups, torch.Generator().manual_seed(0), by_group=True)
    assert sorted(order) == list(range(8))
    runs = [groups[i] for i in order]
    assert runs == sorted(runs, key=runs.index)  # each group is one contiguous run
    assert [i for i in order if groups[i] == 1] == [3, 4, 5]  # in their own order
    assert {tuple(shuffled_order(groups, torch.Generator().manual_seed(s), True)) for s in range(20)} != {tuple(order)}
    plain = shuffled_order(groups, torch.Generator().manual_seed(0), by_group=False)
    assert plain == torch.randperm(8, generator=torch.Generator().manual_seed(0)).tolist()


def test_metrics_combine_by_kind():
    # throughput adds up, a time is the slowest process's, the rest is averaged
    m = combine_metrics([{"throughput/x_tok_s": 10.0, "time/update_s": 2.0, "loss/policy": 1.0},
                         {"throughput/x_tok_s": 30.0, "time/update_s": 5.0, "loss/policy": 3.0}])
    assert m == {"throughput/x_tok_s": 40.0, "time/update_s": 5.0, "loss/policy": 2.0}


def test_relaunch_command_drops_the_flag():
    cmd = relaunch_command(["--debug", "train", "--num-processes", "4", "-o", "x", "--num-processes=4", "a.b=1"], 4)
    assert cmd[:2] == [sys.executable, "-m"] and cmd[2] == "torch.distributed.run"
    assert cmd[cmd.index("--nproc-per-node") + 1] == "4"
    assert cmd[cmd.index("rlvr") + 1:] == ["--debug", "train", "-o", "x", "a.b=1"]


def test_one_process_needs_no_launcher(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist = setup_distributed()
    assert (dist.rank, dist.world, dist.accelerator, dist.is_main) == (0, 1, None, True)
    assert dist.gather([1, 2]) == [1, 2] and dist.all_sum(3.0, 4) == (3.0, 4)
    assert Dist().device("auto") == "auto"


@pytest.mark.parametrize("backend", ["fast", "hf"])
def test_a_prompt_samples_the_same_whatever_its_batch(backend):
    """With one generator per prompt, prompt B's completions do not depend on prompt A being there."""
    from rlvr.sampling.base import SamplingParams
    from rlvr.sampling import make_sampler

    model, tok = char_model(seed=0)
    sampler = make_sampler(backend, model, tok)
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    a, b = tok("say 1")["input_ids"], tok("say 22")["input_ids"]
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    both = sampler.generate([a, b], params, num_samples=3, generator=gens(11, 12))
    alone = sampler.generate([b], params, num_samples=3, generator=gens(12))
    assert [c.token_ids for c in both[3:]] == [c.token_ids for c in alone]
    assert [c.token_ids for c in both[:3]] != [c.token_ids for c in alone]


# ----------------------------------------------------------------------------------------------
# real runs on 2 processes
# ----------------------------------------------------------------------------------------------

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def char_dir(tmp_path_factory):
    """The tiny character-level Llama (20k parameters) saved as a model directory (a model spec)."""
    model, tok = char_model(seed=0)
    path = tmp_path_factory.mktemp("char") / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def overrides(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [f"model.name={model_dir}", f"task.name={ROOT / 'tests' / 'conftest.py'}:DigitTask",
            f"run.output_dir={out}", "model.use_peft=false", "task.system_prompt=",
            f"task.rewards={{{ROOT / 'tests' / 'toy_rewards.py'}:digit_reward: 1.0}}",
            "sampling.max_completion_length=8", "sampling.stop_at_answer=false", "grpo.num_generations=8",
            "grpo.learning_rate=0.001", "eval.on_start=false", "eval.n=0", "run.quiet=true",
            "run.log_samples_every=0", "run.threads=1", *extra]


def checkpoint_step(out: Path) -> int:
    """The step of the run's newest complete checkpoint (0 if none). Older checkpoints are rotated
    away, and a fast machine runs a tiny-model step in well under the tests' polling interval, so a
    test cannot wait for one particular step's directory to appear."""
    ckpt = latest_checkpoint(out)
    return int(ckpt.name.removeprefix("step-")) if ckpt is not None else 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launch:
    """A launcher subprocess; its whole process tree is killed on exit, whatever happened.

    torch.distributed.run starts the workers in sessions of their own, so killing the launcher
    alone could leave them running: the tree is recorded while it runs.
    """

    def __init__(self, cmd: list[str], tmp_path: Path, env: dict | None = None):
        self.out, self.err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT,
                                         env={**os.environ, **ENV, **(env or {})})
        self.seen: set[int] = set()

    def workers(self) -> dict[int, int]:
        """rank -> pid of the live rlvr worker processes."""
        found = {}
        for pid in _descendants(self.proc.pid):
            self.seen.add(pid)
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            rank = [e[5:] for e in environ if e.startswith(b"RANK=")]
            if rank and b"rlvr" in cmdline:  # a forked reward child has its worker's environ and cmdline:
                found.setdefault(int(rank[0]), pid)  # keep the worker, listed before its children
        return found

    def wait_for(self, condition, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            self.workers()
            assert self.proc.poll() is None, f"the run ended early:\n{self.stderr()[-3000:]}"
            assert time.monotonic() < deadline, f"timed out:\n{self.stderr()[-3000:]}"
            time.sleep(0.2)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            self.workers()
            assert time.monotonic() < deadline, f"no exit within {timeout}s (a hang):\n{self.stderr()[-3000:]}"
            time.sleep(0.2)
        return self.proc.returncode

    def stderr(self) -> str:
        return self.err.read_text()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for pid in [self.proc.pid, *self.seen]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


def _descendants(pid: int) -> list[int]:
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [d for c in children for d in (c, *_descendants(c))]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("setup", [
    # DAPO: token-normalised over the whole accumulated batch (the count is summed over processes);
    # 3 prompts split 2 + 1, two optimizer steps per batch, micro-batches of 4 (so the processes run
    # different numbers of them), batch-std advantages
    ["grpo.loss_type=dapo", "grpo.prompts_per_step=3", "grpo.steps_per_generation=2",
     "grpo.per_device_train_batch_size=4", "grpo.scale_rewards=batch"],
    # GRPO with LoRA, a KL term against the adapter-free model, two passes over each batch
    ["grpo.loss_type=grpo", "grpo.prompts_per_step=4", "model.use_peft=true", "model.lora_r=4",
     "grpo.learning_rate=0.005", "grpo.beta=0.04", "grpo.num_iterations=2", "grpo.per_device_train_batch_size=16"],
], ids=["dapo-full", "grpo-lora-kl"])
def test_two_processes_train_the_same_weights_as_one(tmp_path, char_dir, setup):
    """3 steps of `rlvr train --num-processes 2` == 3 steps on one process, to 1e-5 in every weight."""
    steps = [*setup, "grpo.max_steps=3", "run.save_steps=0"]
    with Launch([sys.executable, "-m", "rlvr", "train", "--num-processes", "2",
                 *overrides(char_dir, tmp_path / "two", *steps)], tmp_path) as run:
        assert run.wait(timeout=150) == 0, run.stderr()[-3000:]
    train(load_config(None, overrides(char_dir, tmp_path / "one", *steps)))
    one, two = weights(tmp_path / "one" / "final" / "merged"), weights(tmp_path / "two" / "final" / "merged")
    start = weights(char_dir)
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    moved = max(float((one[k] - start[k]).abs().max()) for k in start)
    print(f"max |w_1proc - w_2proc| = {diff:.2e}; max |w - w_start| = {moved:.2e}")
    assert moved > 1e-3  # training did change the weights
    assert diff < 1e-5
    m1, m2 = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["step"] for m in m2] == [1, 2, 3]
    # the 2-process log holds every completion's reward, gathered: the same numbers as one process
    for key in ("reward/digit_reward/mean", "completion/length_mean", "optim/grad_norm", "train/groups"):
        assert [m[key] for m in m2] == pytest.approx([m[key] for m in m1], rel=1e-4, abs=1e-6), key


@pytest.mark.timeout(180)
def test_a_killed_process_fails_the_run_cleanly_and_the_checkpoint_resumes_on_one(tmp_path, char_dir):
    """SIGKILL rank 1 after step 2 (accelerate launch): non-zero exit within seconds, the last
    checkpoint intact; it resumes on one process."""
    out = tmp_path / "run"
    args = overrides(char_dir, out, "grpo.prompts_per_step=2", "grpo.max_steps=100000", "run.save_steps=1")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port()), "-m", "rlvr", "train", *args]
    with Launch(launcher, tmp_path, env={"RLVR_DIST_TIMEOUT": "30"}) as run:
        run.wait_for(lambda: checkpoint_step(out) >= 2, timeout=120)
        os.kill(run.workers()[1], signal.SIGKILL)
        killed = time.monotonic()
        code = run.wait(timeout=60)
        seconds = time.monotonic() - killed
    err = run.stderr()
    print(f"exit code {code} {seconds:.1f}s after the kill; stderr ends:\n{err[-1500:]}")
    assert code != 0
    assert "SIGKILL" in err  # the launcher's summary names the process that died and how
    ckpt = latest_checkpoint(out)
    step = json.loads((ckpt / "state.json").read_text())["step"]
    assert step >= 2
    result = train(load_config(None, [*args, f"grpo.max_steps={step + 2}"]), resume=True)
    assert result.steps == step + 2
    assert [m["step"] for m in metrics(out)] == list(range(1, step + 3))  # redone steps replace the lost ones
    assert (out / "final" / "merged" / "model.safetensors").exists()


@pytest.mark.timeout(180)
def test_a_frozen_process_times_out_instead_of_hanging(tmp_path, char_dir):
    """SIGSTOP rank 1: rank 0's next collective times out (RLVR_DIST_TIMEOUT=10) with a clear message."""
    out = tmp_path / "run"
    args = overrides(char_dir, out, "grpo.prompts_per_step=2", "grpo.max_steps=100000", "run.save_steps=1")
    with Launch([sys.executable, "-m", "rlvr", "train", "--num-processes", "2", *args], tmp_path,
                env={"RLVR_DIST_TIMEOUT": "10"}) as run:
        run.wait_for(lambda: checkpoint_step(out) >= 1, timeout=120)
        workers = run.workers()
        os.kill(workers[1], signal.SIGSTOP)
        frozen = time.monotonic()
        while Path(f"/proc/{workers[0]}").exists() and time.monotonic() - frozen < 60:
            time.sleep(0.2)
        seconds = time.monotonic() - frozen
        try:
            os.kill(workers[1], signal.SIGKILL)  # else the launcher waits 30 s before killing a stopped process
        except ProcessLookupError:
            pass  # the launcher was quicker
        code = run.wait(timeout=60)
    err = run.stderr()
    print(f"rank 0 ended {seconds:.1f}s after rank 1 froze; exit code {code}")
    assert code != 0 and seconds < 60
    assert "DistributedError: process 0 of 2" in err and "another process probably died or timed out" in err, err[-3000:]
    assert latest_checkpoint(out) is not None


PEER_LEAVES_BEFORE_A_FORWARD = """
import os, sys
sys.path.insert(0, {tests!r})
import torch
from conftest import char_model
from rlvr.distributed import DistributedError, setup_distributed

dist = setup_distributed()
model, tok = char_model(seed=0)
dist.prepare(model)
ids = torch.tensor([tok("say 12")["input_ids"]])

def step():
    dist.backward(dist.completion_logprobs(model, ids, torch.ones_like(ids), 2).sum())

step()
if dist.rank == 1:
    os._exit(0)  # gone before the second step; a success to the launcher, so rank 0 is not killed
try:
    step()
    print("rank 0: no error")
except DistributedError as err:
    print(f"rank 0: DistributedError: {{err}}")
except RuntimeError as err:
    print(f"rank 0: {{type(err).__name__}}: {{err}}")
"""


@pytest.mark.timeout(120)
def test_a_collective_inside_the_ddp_forward_fails_as_a_distributed_error(tmp_path):
    """DDP's forward is a collective too (after the first backward it broadcasts its rebuilt gradient
    buckets from rank 0): a peer lost there is rlvr's DistributedError, as in a gather or a backward.
    Before, it was torch's bare RuntimeError (shown as such by the launcher): the likely cause of the
    frozen-process test above failing once under load, when the freeze landed there."""
    script = tmp_path / "worker.py"
    script.write_text(PEER_LEAVES_BEFORE_A_FORWARD.format(tests=str(ROOT / "tests")))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script)], capture_output=True, text=True, timeout=110, cwd=ROOT,
                          env={**os.environ, **ENV, "RLVR_DIST_TIMEOUT": "20"})
    line = next((x for x in done.stdout.splitlines() if x.startswith("rank 0:")), done.stdout + done.stderr[-2000:])
    assert line.startswith("rank 0: DistributedError: process 0 of 2: the forward failed"), line
