"""Atomic checkpoints and exact resume.

A checkpoint holds everything that decides the rest of the run: the trainable weights (the LoRA
adapter, or all weights), the optimizer and scheduler, the step, and every random state (python,
numpy, torch, and the run's own generators). It is written into a temporary directory and renamed
into place, so a crash or a full disk never leaves a half-written checkpoint that resume would trust
(TRL #3247, #3179). Resume restores the random states *after* everything is built, so nothing
re-seeds over them (ms-swift #9935).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

PREFIX = "step-"


class CheckpointError(RuntimeError):
    pass


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (only renamed-into-place directories count)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return max(done, key=lambda p: int(p.name[len(PREFIX):]), default=None)


def _trainable_state(model, state: dict | None = None) -> dict[str, torch.Tensor]:
    """Only what training changes: the LoRA tensors, or every weight for full fine-tuning.

    state: the model's full state dict when `model.state_dict()` would not give it (FSDP shards).
    """
    try:
        from peft import PeftModel, get_peft_model_state_dict

        if isinstance(model, PeftModel):
            return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model, state).items()}
    except ImportError:  # pragma: no cover
        pass
    state = model.state_dict() if state is None else state
    return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}


def _load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    from peft import PeftModel, set_peft_model_state_dict

    if isinstance(model, PeftModel):
        result = set_peft_model_state_dict(model, state)
        if getattr(result, "unexpected_keys", None):
            raise CheckpointError(f"checkpoint adapter has unexpected keys: {result.unexpected_keys[:3]}")
    else:
        model.load_state_dict(state, strict=False)


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generators": {name: g.get_state() for name, g in generators.items()},
    }


def set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])


def save_checkpoint(run_dir: str | Path, step: int, *, model, optimizer, scheduler,
                    generators: dict[str, torch.Generator], trainer_state: dict, keep: int = 2,
                    model_state: dict | None = None, optimizer_state: dict | None = None) -> Path:
    """Write checkpoint `step` atomically; prune old ones, keeping the `keep` newest.

    model_state, optimizer_state: full state dicts gathered from shards (FSDP, `Dist.full_state`),
    instead of the model's and optimizer's own.
    """
    from safetensors.torch import save_file

    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        save_file(_trainable_state(model, model_state), str(tmp / "trainable.safetensors"))
        if optimizer_state is None:
            optimizer_state = optimizer.state_dict()
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                    "rng": rng_state(generators)}, tmp / "optim_rng.pt")
        # state.json last: its presence marks the checkpoint complete.
        (tmp / "state.json").write_text(json.dumps({**trainer_state, "step": step}, indent=1))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {final}: {err.strerror or err}"
                              " (the previous checkpoint is kept)") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted((p for p in root.iterdir() if p.name.startswith(PREFIX)),
                      key=lambda p: int(p.name[len(PREFIX):]))[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(f".{PREFIX}*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, *, model, optimizer, scheduler,
                    generators: dict[str, torch.Generator]) -> dict:
    """Restore weights, optimizer, scheduler and random states; return the trainer state."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        _load_trainable_state(model, load_file(str(path / "trainable.safetensors")))
        blob = torch.load(path / "optim_rng.pt", weights_only=False)
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable: {err}") from err
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"], generators)
    return state


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir():
        with open(child, "rb") as f:
            os.fsync(f.fileno())
