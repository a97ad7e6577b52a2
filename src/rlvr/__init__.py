"""rlvr: teach small language models to reason with reinforcement learning from verifiable rewards.

The data path of one GRPO step (see README):

    Task -> Prompt -> Sampler -> Rewards -> Advantages -> Buffer -> Update -> Checkpoint/Eval/Report

The source cites four public write-ups it reproduces as "seed 000", "seed 001", "seed 002" and
"seed 004": docs/SEEDS.md says what each is and what rlvr takes from it.
"""

__version__ = "0.1.0"
