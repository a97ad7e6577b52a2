"""Data-parallel GRPO on PyTorch's distributed runtime, through Hugging Face `accelerate`.

The same command runs on 1 or N processes (`accelerate launch --multi_gpu --num_processes N -m rlvr
train ...`, or `rlvr train --num-processes N`, which starts `torch.distributed.run`), and the
process count only splits the work: the global batch (grpo.prompts_per_step x num_generations
completions) is defined once, in the config. A process started without a launcher (WORLD_SIZE
unset or 1) gets `Dist()`, whose helpers are identities: no accelerate, no process group.

How one step is split across W processes (rank r of W):

- **Sampling.** Every process draws the same B examples and B per-prompt seeds (same stream and
  generator state everywhere, which is what a checkpoint saves), then samples its contiguous share
  of whole groups (`shard_bounds`). A prompt's completions depend only on its own seed, so they are
  what one process would sample. Rewards are gathered, so advantages (also scale_rewards=batch)
  and the zero-signal count see the whole batch.
- **Update.** Each optimizer batch is a chunk of one shuffle of all N rollouts of the step,
  identical on every process (`shard_optimizer_batches`); a process computes its own rows. The
  loss weights are global (sequences, micro-batches and DAPO's token count summed over processes)
  and multiplied by W, because DDP averages gradients: sum_r W * g_r / W = the one-process gradient.
  So 1 and N processes take the same optimizer steps up to float rounding, for loss types grpo,
  dr_grpo and dapo; bnpo normalises per micro-batch, so its result depends on the micro-batching.
- **Gradients** are averaged by DDP (accelerate's `prepare`), around `LogprobModel`: the trainer
  never calls the policy's own forward (it runs the decoder and a chunked head), and DDP
  synchronises only what goes through its forward. Micro-batches but the last skip the sync.
- **Logging.** Experiences and update metrics are gathered; only the main process evaluates, writes
  metrics, checkpoints, the final model and the report (the others wait at a barrier during eval).
- **Failure.** Collectives time out after RLVR_DIST_TIMEOUT seconds (default 1800; it must exceed
  the main process's evaluation). When a process dies, the launcher stops the others and exits
  non-zero; checkpoints are atomic, so the last one stays usable, and it resumes on any number of
  processes (it holds global state only).

Not handled: FSDP and DeepSpeed (refused at start: the sampler reads the full weights, which FSDP
shards, and DeepSpeed's engine wants to step the optimizer itself), multi-node resume without a
shared run directory (every process reads the checkpoint).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch

TIMEOUT_ENV = "RLVR_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0


class DistributedError(RuntimeError):
    """A collective operation failed: another process died, or timed out."""


# ----------------------------------------------------------------------------------------------
# pure helpers
# ----------------------------------------------------------------------------------------------

def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[lo, hi) of rank's contiguous share of n items; the first n % world ranks get one more.

    shard_bounds(5, 0, 2) == (0, 3), shard_bounds(5, 1, 2) == (3, 5).
    """
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def shard_for_rank(items: Sequence, rank: int, world: int) -> list:
    """Rank's contiguous share of items (see `shard_bounds`)."""
    lo, hi = shard_bounds(len(items), rank, world)
    return list(items[lo:hi])


def shard_optimizer_batches(rollouts: list, offset: int, groups: list[int], steps_per_generation: int,
                            micro_batch_size: int, generator: torch.Generator,
                            by_group: bool = False) -> list[list[list]]:
    """`Buffer.optimizer_batches` over the whole step's rollouts, keeping this process's rows.

    This process holds rollouts offset..offset+len(rollouts) of the step; `groups` are the group
    ids of all of them (every process's, in rank order). The shuffle is over all of them (same
    generator state everywhere, so the same permutation), so optimizer batch s holds the same
    rollouts as on one process; a process may own none of them (an empty list).
    """
    from rlvr.buffer import shuffled_order

    total = len(groups)
    order = shuffled_order(groups, generator, by_group)
    per_step = max(1, math.ceil(total / max(1, steps_per_generation)))
    batches = []
    for s in range(0, total, per_step):
        mine = [rollouts[i - offset] for i in order[s:s + per_step] if offset <= i < offset + len(rollouts)]
        batches.append([mine[m:m + micro_batch_size] for m in range(0, len(mine), micro_batch_size)])
    return batches


def combine_metrics(per_process: list[dict]) -> dict:
    """One metrics dict from each process's: throughput summed, times the slowest, the rest averaged."""
    out = {}
    for key in dict.fromkeys(k for m in per_process for k in m):
        values = [float(m[key]) for m in per_process if key in m]
        if key.startswith("throughput/"):
            out[key] = sum(values)
        elif key.startswith("time/") or key.endswith("_max"):
            out[key] = max(values)
        else:
            out[key] = sum(values) / len(values)
    return out


def world_size_from_env() -> int:
    """Processes in the job as the launcher (torchrun, accelerate launch) tells them: 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def relaunch_command(argv: list[str], num_processes: int) -> list[str]:
    """`python -m torch.distributed.run ... -m rlvr ARGV` with --num-processes removed from argv.

    --standalone picks a free local port, so two runs on one machine do not collide.
    """
    args, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--num-processes":
            skip = True
        elif not arg.startswith("--num-processes="):
            args.append(arg)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            str(num_processes), "-m", "rlvr", *args]


# ----------------------------------------------------------------------------------------------
# the process group
# ----------------------------------------------------------------------------------------------

class LogprobModel(torch.nn.Module):
    """The policy behind one forward, completion log-probs, so DDP can wrap what the trainer runs."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def forward(self, input_ids, attention_mask, logits_to_keep: int, **kwargs):
        from rlvr.policy import completion_logprobs

        return completion_logprobs(self.policy, input_ids, attention_mask, logits_to_keep, **kwargs)


class NullTracker:
    """What a non-main process logs to: nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


@dataclass
class Dist:
    """This process's place in the job. `Dist()` is one process: every helper is then an identity."""

    rank: int = 0
    world: int = 1
    accelerator: Any = None
    wrapped: Any = None
    """the DDP-wrapped LogprobModel, once `prepare` has run (None on one process)"""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world

    def device(self, requested: str) -> str:
        """The model's device: this process's GPU when launched on GPUs, else as configured."""
        acc = self.accelerator
        if acc is not None and acc.device.type != "cpu" and requested in ("auto", acc.device.type):
            return str(acc.device)
        return requested

    def _collective(self, what: str, fn):
        """Run a collective operation; its failure becomes one clear DistributedError."""
        try:
            return fn()
        except RuntimeError as err:
            cause = (str(err).splitlines() or [repr(err)])[0]
            raise DistributedError(
                f"process {self.rank} of {self.world}: {what} failed ({cause}); another process probably died "
                "or timed out. The last checkpoint is kept: resume with --resume, on any number of processes") from err

    def gather(self, items: list) -> list:
        """Concatenate `items` over all processes, in rank order (every process gets the result)."""
        if self.world == 1:
            return list(items)
        out: list = [None] * self.world
        self._collective("gathering", lambda: torch.distributed.all_gather_object(out, list(items)))
        return [x for part in out for x in part]

    def all_sum(self, *values: float) -> tuple[float, ...]:
        """Each value summed over all processes (float64)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)  # [k]
        self._collective("summing", lambda: torch.distributed.all_reduce(t))
        return tuple(t.tolist())

    def barrier(self) -> None:
        if self.world > 1:
            self._collective("waiting at a barrier", torch.distributed.barrier)

    def gather_experience(self, exp, num_generations: int):
        """Every process's groups in one Experience (for metrics, curriculum, samples); `exp` on one process."""
        if self.world == 1:
            return exp
        from rlvr.rollout import concat_experience, experience_metrics

        parts = self.gather([exp])
        merged = concat_experience(parts)
        merged.group_success = exp.group_success  # already every process's
        merged.metrics = {**combine_metrics([p.metrics for p in parts]), **experience_metrics(merged, num_generations)}
        return merged

    def mean_metrics(self, metrics: dict) -> dict:
        """Update metrics combined over processes (`combine_metrics`)."""
        return metrics if self.world == 1 else combine_metrics(self.gather([metrics]))

    # -- the update ----------------------------------------------------------------------------

    def prepare(self, policy) -> None:
        """Wrap the policy's log-prob forward for gradient averaging (DDP through accelerate).

        Buffers (rotary tables) are not broadcast at each forward (`setup_distributed`): they are
        the same everywhere, and a broadcast per forward would need the same number of micro-batches
        on every process.
        """
        if self.world > 1:
            with warnings.catch_warnings():  # torch 2.13 deprecates broadcast_buffers for forward_sync_buffers
                warnings.simplefilter("ignore", FutureWarning)
                self.wrapped = self.accelerator.prepare(LogprobModel(policy))

    def optimizer_batches(self, rollouts: list, steps_per_generation: int, micro_batch_size: int,
                          generator: torch.Generator, by_group: bool = False) -> list[list[list]]:
        """This process's rows of each optimizer batch of the step (see `shard_optimizer_batches`)."""
        from rlvr.buffer import Buffer

        if self.world == 1:
            return Buffer(rollouts).optimizer_batches(steps_per_generation, micro_batch_size, generator, by_group)
        per_rank = self.gather([[r.group for r in rollouts]])  # each process's group ids, in rank order
        offset = sum(len(ids) for ids in per_rank[:self.rank])
        groups = [g for ids in per_rank for g in ids]
        return shard_optimizer_batches(rollouts, offset, groups, steps_per_generation, micro_batch_size,
                                       generator, by_group)

    def completion_logprobs(self, policy, *args, **kwargs):
        """`rlvr.policy.completion_logprobs`, through DDP when there is more than one process."""
        if self.wrapped is None:
            from rlvr.policy import completion_logprobs

            return completion_logprobs(policy, *args, **kwargs)
        return self.wrapped(*args, **kwargs)

    def sync(self, last: bool):
        """Context for one micro-batch: gradients are averaged over processes only after the last."""
        if self.wrapped is None or last:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(self.wrapped)

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self._collective("the gradient all-reduce", lambda: self.accelerator.backward(loss))

    def clip_grad_norm_(self, params: list, max_norm: float) -> torch.Tensor:
        if self.accelerator is None:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        return self.accelerator.clip_grad_norm_(params, max_norm)


def setup_distributed() -> Dist:
    """`Dist()` without a launcher; under one, an Accelerator (gloo on CPU) and this process's rank."""
    if world_size_from_env() <= 1:
        return Dist()
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S))
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout),
                                               DistributedDataParallelKwargs(broadcast_buffers=False)])
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM", "XLA"):
        raise DistributedError(
            f"accelerate is configured for {kind}, which rlvr does not support yet: its sampler needs every "
            "process to hold the full weights (FSDP and ZeRO-3 shard them) and its update steps a plain "
            "PyTorch optimizer (DeepSpeed's engine steps its own). Use data parallel (accelerate launch "
            "--multi_gpu, or --config_file configs/accelerate/ddp.yaml); see README 'Scaling up'")
    return Dist(rank=accelerator.process_index, world=accelerator.num_processes, accelerator=accelerator)
