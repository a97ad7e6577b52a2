"""rlvr: teach small language models to reason with reinforcement learning from verifiable rewards.

The data path of one GRPO step (see README):

    Task -> Prompt -> Sampler -> Rewards -> Advantages -> Buffer -> Update -> Checkpoint/Eval/Report

From Python, in TRL's shape (rlvr.api, rlvr.sft_api): `from rlvr import GRPOConfig, GRPOTrainer` (and
`SFTConfig`, `SFTTrainer`). The names load on
first use, so `import rlvr` stays light (no torch, no transformers).

The source cites four public write-ups it reproduces as "seed 000", "seed 001", "seed 002" and
"seed 004": docs/SEEDS.md says what each is and what rlvr takes from it.
"""

__version__ = "0.1.0"

_LAZY = {"GRPOConfig": "rlvr.api", "GRPOTrainer": "rlvr.api", "SFTConfig": "rlvr.sft_api", "SFTTrainer": "rlvr.sft_api",
         "Config": "rlvr.config", "load_config": "rlvr.config"}
"""public name -> the module that defines it (imported on first use)"""

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rlvr' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
