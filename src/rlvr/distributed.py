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

**FSDP** (an accelerate config with `distributed_type: FSDP`, fsdp_version 2;
configs/accelerate/fsdp.yaml): the same split of the work, but the weights, gradients and AdamW
state are sharded over the processes instead of replicated. accelerate's own FSDP exists on
accelerators only (on CPU its Accelerator ignores the config and runs DDP), so `Dist.prepare`
applies torch's `fully_shard` itself, on accelerate's process group: each transformer block is a
unit, and the LogprobModel is the root (the embeddings, final norm and head, which the log-prob
forward reads directly). The loss weights are the same (FSDP's reduce-scatter averages gradients
like DDP). Every forward all-gathers and every backward reduce-scatters with the
other processes, so every process must run the same passes in the same order: the one with fewer
micro-batches adds zero-loss passes (`missing_passes`), gradients are reduced after every
micro-batch, and prompt forwards are not shared (they call the decoder once or twice by the rows).
Where full weights are needed they are gathered explicitly, on every process at the same point:
around sampling and the main process's evaluation (`full_weights`: gathered once, not inside the
decode loop, where processes generate different numbers of tokens), and into the main process for
checkpoints and the final model (`full_state`, `full_model`: the same files as without FSDP). The
optimizer is built, and resumed, on the full weights, then moved onto the shards.

Not handled: DeepSpeed (refused at start: its engine steps its own optimizer), FSDP's CPU offload,
its activation checkpointing and mixed precision (refused; layer checkpointing through the model
works), multi-node resume without a shared run directory (every process reads the checkpoint).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from rlvr.buffer import Buffer, shard_bounds, shuffled_order

TIMEOUT_ENV = "RLVR_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0


class DistributedError(RuntimeError):
    """A collective operation failed: another process died, or timed out."""


# ----------------------------------------------------------------------------------------------
# pure helpers
# ----------------------------------------------------------------------------------------------

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
    """the DDP-wrapped (or FSDP-sharded) LogprobModel, once `prepare` has run (None on one process)"""
    fsdp: bool = False
    """weights, gradients and optimizer state sharded over the processes (FSDP2), not replicated"""
    reshard_after_forward: bool = True
    """FSDP: free each block's gathered weights after its forward (fsdp_reshard_after_forward)"""
    wrap: tuple = ()
    """FSDP: class names of the blocks sharded one by one (default: the model's `_no_split_modules`)"""
    metrics: dict = field(default_factory=dict)
    """what to log with every step: under FSDP, the share of the weights this process holds"""

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

    def prepare(self, policy, optimizer=None) -> None:
        """Wrap the policy's log-prob forward for gradient averaging (DDP through accelerate).

        Buffers (rotary tables) are not broadcast at each forward (`setup_distributed`): they are
        the same everywhere, and a broadcast per forward would need the same number of micro-batches
        on every process. Under FSDP the policy is sharded instead (`_shard`), and `optimizer`
        (built, and resumed, on the full weights) is moved onto the shards.
        """
        if self.fsdp:
            self._shard(policy, optimizer)
        elif self.world > 1:
            with warnings.catch_warnings():  # torch 2.13 deprecates broadcast_buffers for forward_sync_buffers
                warnings.simplefilter("ignore", FutureWarning)
                self.wrapped = self.accelerator.prepare(LogprobModel(policy))

    def optimizer_batches(self, rollouts: list, steps_per_generation: int, micro_batch_size: int,
                          generator: torch.Generator, by_group: bool = False) -> list[list[list]]:
        """This process's rows of each optimizer batch of the step (see `shard_optimizer_batches`)."""
        if self.world == 1:
            return Buffer(rollouts).optimizer_batches(steps_per_generation, micro_batch_size, generator, by_group)
        per_rank = self.gather([[r.group for r in rollouts]])  # each process's group ids, in rank order
        offset = sum(len(ids) for ids in per_rank[:self.rank])
        groups = [g for ids in per_rank for g in ids]
        return shard_optimizer_batches(rollouts, offset, groups, steps_per_generation, micro_batch_size,
                                       generator, by_group)

    def completion_logprobs(self, policy, *args, **kwargs):
        """`rlvr.policy.completion_logprobs`, through DDP (or FSDP) when there is more than one process.

        The wrapped forward is a collective too: DDP broadcasts its rebuilt gradient buckets from
        rank 0 at the first synchronised forward after the first backward, FSDP all-gathers each
        block's weights; a frozen peer times out there as anywhere else."""
        if self.wrapped is None:
            from rlvr.policy import completion_logprobs

            return completion_logprobs(policy, *args, **kwargs)
        return self._collective("the forward", lambda: self.wrapped(*args, **kwargs))

    def sync(self, last: bool):
        """Context for one micro-batch: gradients are averaged over processes only after the last.

        Under FSDP every micro-batch reduce-scatters its gradients (each process keeps its shard, so
        nothing full-size accumulates), and `missing_passes` evens out the number of micro-batches.
        """
        if self.wrapped is None or last or self.fsdp:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(self.wrapped)

    def missing_passes(self, passes: int) -> int:
        """FSDP: how many zero passes this process adds so that all run the same number of
        forward/backward passes (each one all-gathers and reduce-scatters with the others); 0 otherwise."""
        if not self.fsdp:
            return 0
        t = torch.tensor([passes])
        self._collective("counting micro-batches",
                         lambda: torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX))
        return int(t) - passes

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self._collective("the gradient all-reduce", lambda: self.accelerator.backward(loss))

    def clip_grad_norm_(self, params: list, max_norm: float) -> torch.Tensor:
        if self.accelerator is None:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        if self.fsdp:  # sharded gradients: torch sums the shards' norms over processes (a DTensor)
            return self._collective("the gradient norm",
                                    lambda: torch.nn.utils.clip_grad_norm_(params, max_norm).full_tensor())
        return self.accelerator.clip_grad_norm_(params, max_norm)

    # -- FSDP: sharding, and the full weights when something needs them -----------------------

    def _shard(self, policy, optimizer) -> None:
        """`fully_shard` each transformer block, then the LogprobModel around the policy (the root
        unit: embeddings, final norm and head, which the log-prob forward reads directly).

        The optimizer was built on the full parameters (and maybe resumed from a checkpoint): its
        parameters are swapped for the shards, by name, and its state is re-loaded through
        `set_optimizer_state_dict`, which keeps each process's slice.
        """
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        from torch.distributed.fsdp import fully_shard

        from rlvr.models import base_model

        names = {id(p): n for n, p in policy.named_parameters()}
        group_names = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
        full_state = optimizer.state_dict()  # {"state": {index: ...}, "param_groups": [...]}
        wrap = set(self.wrap or getattr(base_model(policy), "_no_split_modules", None) or ())
        blocks = [m for m in policy.modules() if type(m).__name__ in wrap]
        if not blocks:
            raise DistributedError(f"FSDP: no module of the classes {sorted(wrap)} in {type(policy).__name__} to "
                                   "shard block by block: set fsdp_transformer_layer_cls_to_wrap")
        root = LogprobModel(policy)
        for block in blocks:
            fully_shard(block, reshard_after_forward=self.reshard_after_forward)
        fully_shard(root)  # its own leftovers stay gathered from forward to backward (FSDP's default)
        shards = dict(policy.named_parameters())
        for group, group_names_ in zip(optimizer.param_groups, group_names):
            group["params"] = [shards[n] for n in group_names_]
        optimizer.state.clear()  # it was keyed by the full parameters
        if full_state["state"]:
            set_optimizer_state_dict(policy, optimizer, _state_by_name(full_state, group_names),
                                     options=StateDictOptions(full_state_dict=True))
        self.wrapped = root
        local = sum(p.to_local().numel() for p in policy.parameters())  # a DTensor's numel is the full one
        self.metrics = {"fsdp/local_param_frac": local / sum(p.numel() for p in policy.parameters())}
        # FSDP makes the first module to run forward its root: make it this one (every process runs
        # it, a collective), before the sampler runs any inner module's forward.
        ids = torch.ones(1, 2, dtype=torch.long, device=next(policy.parameters()).device)  # [1, 2]
        with torch.no_grad():
            self._collective("the first sharded forward", lambda: root(ids, torch.ones_like(ids), 1))

    def _units(self) -> list:
        from torch.distributed.fsdp import FSDPModule

        return [m for m in self.wrapped.modules() if isinstance(m, FSDPModule)]

    @contextlib.contextmanager
    def full_weights(self, sampler=None):
        """Context in which every process holds the full weights (FSDP; a no-op otherwise).

        For generation and evaluation, where processes decode different numbers of tokens: the
        weights are all-gathered once on entry (every process must enter), no forward inside
        gathers or frees anything (no collective inside a decode loop), and they are freed on exit,
        with what `sampler` derived from them (FastSampler's fused copies, which would otherwise
        keep a full-size copy between generations).
        """
        if not self.fsdp:
            yield
            return
        units = self._units()
        for unit in units:
            self._collective("gathering the weights", unit.unshard)
        self.wrapped.set_reshard_after_forward(False)  # recursive: every unit
        try:
            yield
        finally:
            for unit in units:
                unit.set_reshard_after_forward(unit is not self.wrapped and self.reshard_after_forward, recurse=False)
                unit.reshard()
            if sampler is not None:
                sampler.release()

    def full_state(self, policy, optimizer) -> tuple[dict | None, dict | None]:
        """FSDP: (model state dict, optimizer state dict), full, on the main process (every process
        must call it: the shards are gathered); the optimizer's in the one-process layout (keys are
        parameter indices), so a checkpoint resumes on any number of processes, sharded or not.
        (None, None) without FSDP: the model and optimizer hold full tensors already."""
        if not self.fsdp:
            return None, None
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        model_state = self._full_model_state(policy)
        optim_state = self._collective("gathering the optimizer state", lambda: get_optimizer_state_dict(
            policy, optimizer, options=_full_on_main()))
        return (model_state, _state_by_index(optim_state)) if self.is_main else (None, None)

    def full_model(self, policy):
        """The policy with full weights, for saving: itself, or under FSDP a plain copy on the main
        process (None on the others; every process must call it)."""
        if not self.fsdp:
            return policy
        state = self._full_model_state(policy)
        return _plain_copy(policy, state) if self.is_main else None

    def _full_model_state(self, policy) -> dict:
        """The full state dict on the main process ({} on the others)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return self._collective("gathering the weights",
                                lambda: get_model_state_dict(policy, options=_full_on_main()))


def _full_on_main():
    """State dict options: full tensors, gathered into CPU memory of the main process only."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _state_by_name(state: dict, group_names: list[list[str]]) -> dict:
    """An optimizer state dict keyed by parameter index (`Optimizer.state_dict()`) -> keyed by name
    (what torch.distributed.checkpoint's `set_optimizer_state_dict` takes)."""
    names = [n for group in group_names for n in group]
    groups = [{**g, "params": list(ns)} for g, ns in zip(state["param_groups"], group_names)]
    return {"state": {names[i]: v for i, v in state["state"].items()}, "param_groups": groups}


def _state_by_index(state: dict) -> dict:
    """The inverse of `_state_by_name`: parameters numbered in param-group order, as `Optimizer.state_dict()`."""
    index = {n: i for i, n in enumerate(n for g in state["param_groups"] for n in g["params"])}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def _plain_copy(policy, state: dict):
    """A plain (unsharded) model like `policy` (a peft model too) holding `state`, for saving.

    Built without allocating weights (accelerate's `init_empty_weights`), then given the gathered
    tensors themselves (`assign`), so it costs no memory beyond the full state dict.
    """
    from accelerate import init_empty_weights
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlvr.models import base_model

    with init_empty_weights():
        plain = AutoModelForCausalLM.from_config(base_model(policy).config)
        if isinstance(policy, PeftModel):
            plain = get_peft_model(plain, policy.peft_config[policy.active_adapter], adapter_name=policy.active_adapter)
    base_model(plain).generation_config = copy.deepcopy(base_model(policy).generation_config)  # pad/eos as loaded
    plain.load_state_dict(state, assign=True)
    base_model(plain).tie_weights()  # `assign` gave tied weights two tensors
    return plain.eval()


def setup_distributed() -> Dist:
    """`Dist()` without a launcher; under one, an Accelerator (gloo on CPU) and this process's rank.

    What `accelerate launch` exported is read before accelerate acts on it: on CPU its Accelerator
    ignores an FSDP or DeepSpeed config (plain gloo data parallel), and without DeepSpeed installed it
    fails on a DeepSpeed one with an ImportError that does not say rlvr would refuse it anyway.
    """
    if world_size_from_env() <= 1:
        return Dist()
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    for kind in ("DEEPSPEED", "MEGATRON_LM"):
        if _launched_with(kind):
            raise _unsupported(kind)
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S))
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout),
                                               DistributedDataParallelKwargs(broadcast_buffers=False)])
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    if kind in ("DEEPSPEED", "MEGATRON_LM", "XLA"):
        raise _unsupported(kind)
    dist = Dist(rank=accelerator.process_index, world=accelerator.num_processes, accelerator=accelerator)
    if kind == "FSDP" or _launched_with("FSDP"):
        _configure_fsdp(dist, accelerator)
    return dist


def _launched_with(kind: str) -> bool:
    """Whether `accelerate launch` was given a config of this kind (FSDP, DEEPSPEED, ...)."""
    return os.environ.get(f"ACCELERATE_USE_{kind}", "false").lower() == "true"


def _unsupported(kind: str) -> DistributedError:
    return DistributedError(
        f"accelerate is configured for {kind}, which rlvr does not support: its update steps a plain PyTorch "
        "optimizer (DeepSpeed's engine steps its own) and its sampler reads the full weights between updates. "
        "Use data parallel (configs/accelerate/ddp.yaml) or FSDP (configs/accelerate/fsdp.yaml); "
        "see README 'Scaling up'")


def _configure_fsdp(dist: Dist, accelerator) -> None:
    """FSDP2 with torch's `fully_shard` on accelerate's process group, as the accelerate config asks.

    accelerate's own FSDP (its `prepare`) exists on accelerators only: on CPU, `Accelerator` runs
    plain gloo data parallel and ignores an FSDP config. So rlvr reads the config the same way
    (accelerate's FullyShardedDataParallelPlugin, from what `accelerate launch` exported) and shards
    the model itself (`Dist.prepare`), the same on CPU and GPU. The options rlvr cannot honour
    are refused rather than ignored.
    """
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = getattr(accelerator.state, "fsdp_plugin", None) or FullyShardedDataParallelPlugin()
    refused = []
    if plugin.fsdp_version != 2:
        refused.append(f"fsdp_version {plugin.fsdp_version} (rlvr runs FSDP2: set fsdp_version: 2)")
    if type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy":
        refused.append("fsdp_offload_params: true (not supported)")
    if plugin.activation_checkpointing:
        refused.append("fsdp_activation_checkpointing: true (use model.gradient_checkpointing=true)")
    if accelerator.mixed_precision != "no":
        refused.append(f"mixed_precision {accelerator.mixed_precision} (set 'no': model.dtype sets the dtype)")
    if refused:
        raise DistributedError("the accelerate FSDP config asks for what rlvr does not do: " + "; ".join(refused))
    dist.fsdp = True
    # every process loads the full model itself (accelerate launch exports "true" by default, which makes
    # transformers leave the weights of ranks > 0 empty and wait for a broadcast rlvr does not make)
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
    dist.reshard_after_forward = bool(plugin.reshard_after_forward)
    dist.wrap = tuple(plugin.transformer_cls_names_to_wrap or ())
