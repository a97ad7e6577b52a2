"""Experience without padding, and minibatch collation.

Each completion is stored as its own token lists (seed 004, docs/SEEDS.md, tip 9: keep pad tokens out of the
buffer); padding is added only when a minibatch is built, to that minibatch's own longest prompt
and completion, so short batches cost short forwards.

Layout of a collated minibatch (prompts left-padded, completions right-padded):

    input_ids  [N, P + C]   pad pad p p p | c c c c pad
    attention  [N, P + C]    0   0  1 1 1 | 1 1 1 1  0
    completion_mask [N, C]                  1 1 1 1  0   (each rollout's loss_mask, then 0 padding)

so the last C positions are the completions of every row and `logits_to_keep = C`. `prompt_rows`
[N] names, for each row, the first row with the same prompt: the update runs each prompt once for
its G completions (`rlvr.policy.shared_prompt_hidden_states`), which is why micro-batches are made
of whole groups when `grpo.share_prompt` is on (`optimizer_batches(by_group=True)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class Rollout:
    """One sampled completion and what the update needs to learn from it."""

    prompt_ids: list[int]
    completion_ids: list[int]
    old_logprobs: list[float]
    """log-probs of completion_ids under the sampling policy (at the sampling temperature)"""
    advantage: float
    truncated: bool
    """the completion hit max_completion_length without stopping"""
    group: int = 0
    """index of its group (prompt) within the step"""
    loss_mask: list[float] | None = None
    """per completion token: 1.0 where the model wrote the token (it carries loss), 0.0 where it did
    not (a tool's output or a user turn inside a multi-turn episode). None means every token: it is
    filled in at construction, so a rollout always carries its mask explicitly."""

    def __post_init__(self):
        if self.loss_mask is None:
            self.loss_mask = [1.0] * len(self.completion_ids)
        elif len(self.loss_mask) != len(self.completion_ids):
            raise ValueError(f"loss_mask has {len(self.loss_mask)} entries for {len(self.completion_ids)} completion tokens")


@dataclass
class Minibatch:
    input_ids: torch.Tensor  # [N, P+C]
    attention_mask: torch.Tensor  # [N, P+C]
    completion_mask: torch.Tensor  # [N, C] float
    old_logprobs: torch.Tensor  # [N, C]
    advantages: torch.Tensor  # [N]
    truncated: torch.Tensor  # [N] bool
    prompt_rows: torch.Tensor  # [N] int64: the first row with the same prompt

    @property
    def logits_to_keep(self) -> int:
        return self.completion_mask.shape[1]

    def to(self, device) -> "Minibatch":
        return Minibatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.completion_mask,
                                                    self.old_logprobs, self.advantages, self.truncated,
                                                    self.prompt_rows)))


def collate(rollouts: list[Rollout], pad_token_id: int) -> Minibatch:
    """Pad a list of rollouts into one minibatch (see the module docstring for the layout)."""
    n = len(rollouts)
    p = max(len(r.prompt_ids) for r in rollouts)
    c = max(max(len(r.completion_ids) for r in rollouts), 1)
    input_ids = torch.full((n, p + c), pad_token_id, dtype=torch.long)  # [N, P+C]
    attention = torch.zeros((n, p + c), dtype=torch.long)  # [N, P+C]
    completion_mask = torch.zeros((n, c))  # [N, C]
    old = torch.zeros((n, c))  # [N, C]
    for i, r in enumerate(rollouts):
        lp, lc = len(r.prompt_ids), len(r.completion_ids)
        input_ids[i, p - lp:p] = torch.tensor(r.prompt_ids)
        attention[i, p - lp:p + lc] = 1
        if lc:
            input_ids[i, p:p + lc] = torch.tensor(r.completion_ids)
            completion_mask[i, :lc] = torch.tensor(r.loss_mask, dtype=completion_mask.dtype)
            old[i, :lc] = torch.tensor(r.old_logprobs[:lc])
    advantages = torch.tensor([r.advantage for r in rollouts], dtype=torch.float32)  # [N]
    truncated = torch.tensor([r.truncated for r in rollouts], dtype=torch.bool)  # [N]
    first: dict[tuple, int] = {}
    prompt_rows = torch.tensor([first.setdefault(tuple(r.prompt_ids), i) for i, r in enumerate(rollouts)])  # [N]
    return Minibatch(input_ids, attention, completion_mask, old, advantages, truncated, prompt_rows)


def shuffled_order(groups: list[int], generator: torch.Generator, by_group: bool) -> list[int]:
    """A random order of rollouts 0..len(groups)-1 (groups[i]: rollout i's group id).

    by_group: the groups are shuffled and each group's rollouts stay together, in their order, so a
    micro-batch holds whole groups and each prompt's forward is shared (`collate`). With one
    optimizer step per batch this changes only the summation order of the gradient. Otherwise every
    rollout is shuffled on its own (TRL's order).
    """
    if not by_group:
        return torch.randperm(len(groups), generator=generator).tolist()
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    ids = list(members)
    return [i for k in torch.randperm(len(ids), generator=generator).tolist() for i in members[ids[k]]]


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[lo, hi) of rank's contiguous share of n items; the first n % world ranks get one more.

    shard_bounds(5, 0, 2) == (0, 3), shard_bounds(5, 1, 2) == (3, 5).
    """
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


@dataclass
class Buffer:
    """The experience of one step: B groups x G completions."""

    rollouts: list[Rollout] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rollouts)

    def extend(self, rollouts: list[Rollout]) -> None:
        self.rollouts.extend(rollouts)

    def num_completion_tokens(self) -> int:
        return sum(len(r.completion_ids) for r in self.rollouts)

    def optimizer_batches(self, steps_per_generation: int, micro_batch_size: int,
                          generator: torch.Generator, by_group: bool = False) -> list[list[list[Rollout]]]:
        """Shuffle (`shuffled_order`), split into `steps_per_generation` optimizer batches, each into
        micro-batches.

        Sizes need not divide evenly (TRL #2858, Open-R1 #249): the last parts are smaller and the
        trainer weights each micro-batch by its share of the optimizer batch.
        """
        order = shuffled_order([r.group for r in self.rollouts], generator, by_group)
        shuffled = [self.rollouts[i] for i in order]
        per_step = math.ceil(len(shuffled) / max(1, steps_per_generation))
        batches = []
        for s in range(0, len(shuffled), per_step):
            part = shuffled[s:s + per_step]
            batches.append([part[m:m + micro_batch_size] for m in range(0, len(part), micro_batch_size)])
        return batches
