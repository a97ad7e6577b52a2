"""rlvr: teach small language models to reason with reinforcement learning from verifiable rewards.

The data path of one GRPO step (see README):

    Task -> Prompt -> Sampler -> Rewards -> Advantages -> Buffer -> Update -> Checkpoint/Eval/Report
"""

__version__ = "0.1.0"
