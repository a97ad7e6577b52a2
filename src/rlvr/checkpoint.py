"""Atomic checkpoints and exact resume, in files that load without running code.

A checkpoint holds everything that decides the rest of the run: the trainable weights (the LoRA
adapter, or all weights), the optimizer and scheduler, the step, and every random state (python,
numpy, torch, and the run's own generators). It is written into a temporary directory and renamed
into place, so a crash or a full disk never leaves a half-written checkpoint that resume would trust
(TRL #3247, #3179). Resume restores the random states *after* everything is built, so nothing
re-seeds over them (ms-swift #9935).

Layout of RUN/checkpoints/step-000042/:

    trainable.safetensors   the trainable weights; tied weights (a tied lm_head) are stored once, and
                            the metadata key "rlvr.tied" ({"alias": "stored name"}) restores the ties
    optim_rng.safetensors   every tensor of the optimizer state (Adam moments, step counts) and of the
                            random states (torch, the run's generators, numpy's Mersenne Twister)
    optim_rng.json          the rest: {"format": "rlvr-checkpoint/2", "optimizer", "scheduler", "rng"},
                            plain JSON where every tensor is a reference {"tensor": "<name>"} into
                            optim_rng.safetensors (see `encode_tree`)
    state.json              the trainer state and step; written last, its presence marks the checkpoint
                            complete

Nothing is unpickled: people share run folders, and `torch.load(weights_only=False)` of a crafted
file runs its code. A checkpoint of the older pickle layout (optim_rng.pt) is refused with a
message, never loaded.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

PREFIX = "step-"
FORMAT = "rlvr-checkpoint/2"
TRAINABLE_FILE = "trainable.safetensors"
TENSORS_FILE = "optim_rng.safetensors"
TREE_FILE = "optim_rng.json"
STATE_FILE = "state.json"
LEGACY_FILE = "optim_rng.pt"
TIED_KEY = "rlvr.tied"
_NDARRAY_KINDS = "biuf"  # bool, int, unsigned, float: numpy dtypes that are plain bytes


class CheckpointError(RuntimeError):
    pass


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (only renamed-into-place directories count)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()
            and (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name[len(PREFIX):]), default=None)


# ----------------------------------------------------------------------------- plain trees <-> JSON


def encode_tree(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """A tree of dicts, lists, tuples, numbers, strings, tensors and numpy arrays -> plain JSON.

    JSON numbers, strings, booleans and null stand for themselves; every container is tagged, so
    nothing in the file is ambiguous and decoding never guesses:
        list -> {"list": [...]}    tuple -> {"tuple": [...]}    dict -> {"dict": [[key, value], ...]}
        tensor -> {"tensor": name}                (the tensor goes into `tensors` under `name`)
        ndarray -> {"ndarray": name, "dtype": "<u4", "shape": [624]}   (its bytes, as a uint8 tensor)
    Dict keys are encoded too (optimizer states are keyed by int). Anything else is an error.
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (torch.Tensor, np.ndarray)) and path in tensors:
        raise ValueError(f"{path}: two tensors would be stored under this name")
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"tensor": path}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _NDARRAY_KINDS:
            raise TypeError(f"{path}: numpy dtype {obj.dtype} cannot be stored")
        tensors[path] = torch.from_numpy(np.frombuffer(obj.tobytes(), dtype=np.uint8).copy())
        return {"ndarray": path, "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (list, tuple)):
        items = [encode_tree(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
        return {"tuple" if isinstance(obj, tuple) else "list": items}
    if isinstance(obj, dict):
        return {"dict": [[encode_tree(k, tensors, f"{path}/key{i}"), encode_tree(v, tensors, f"{path}/{k}")]
                         for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"{path or 'value'}: a {type(obj).__name__} cannot be stored in a checkpoint")


def decode_tree(value: Any, tensors: dict[str, torch.Tensor], where: str = "") -> Any:
    """The inverse of `encode_tree`; anything it would not have written raises ValueError."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if not isinstance(value, dict) or len(value) not in (1, 3):
        raise ValueError(f"{where or 'top level'}: unexpected {type(value).__name__} (a tagged container was expected)")
    tag = next(iter(value))
    body = value[tag]
    if tag in ("list", "tuple") and len(value) == 1 and isinstance(body, list):
        items = [decode_tree(v, tensors, f"{where}/{i}") for i, v in enumerate(body)]
        return tuple(items) if tag == "tuple" else items
    if tag == "dict" and len(value) == 1 and isinstance(body, list):
        if not all(isinstance(pair, list) and len(pair) == 2 for pair in body):
            raise ValueError(f"{where}: a dict must be a list of [key, value] pairs")
        out = {}
        for k, v in body:
            key = decode_tree(k, tensors, f"{where}/key")
            if not isinstance(key, (int, float, str, bool, tuple)) and key is not None:
                raise ValueError(f"{where}: dict key of type {type(key).__name__}")
            out[key] = decode_tree(v, tensors, f"{where}/{key}")
        return out
    if tag == "tensor" and len(value) == 1 and isinstance(body, str):
        if body not in tensors:
            raise ValueError(f"{where}: tensor {body!r} is missing from {TENSORS_FILE}")
        return tensors[body]
    if tag == "ndarray" and set(value) == {"ndarray", "dtype", "shape"} and isinstance(body, str):
        return _decode_ndarray(value, tensors, where)
    raise ValueError(f"{where or 'top level'}: unknown entry {sorted(value)[:3]}")


def _decode_ndarray(value: dict, tensors: dict[str, torch.Tensor], where: str) -> np.ndarray:
    """{"ndarray": name, "dtype", "shape"} -> the array; only plain numeric dtypes are accepted."""
    dtype_str, shape = value["dtype"], value["shape"]
    if not isinstance(dtype_str, str) or not isinstance(shape, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ValueError(f"{where}: bad ndarray dtype or shape")
    try:
        dtype = np.dtype(dtype_str)
    except TypeError as err:
        raise ValueError(f"{where}: bad ndarray dtype {dtype_str!r}") from err
    if dtype.kind not in _NDARRAY_KINDS or value["ndarray"] not in tensors:
        raise ValueError(f"{where}: ndarray of dtype {dtype_str!r} or its bytes {value['ndarray']!r} not accepted")
    raw = tensors[value["ndarray"]]
    if raw.dtype != torch.uint8 or raw.dim() != 1 or raw.numel() != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"{where}: ndarray bytes do not match dtype {dtype_str} and shape {shape}")
    return np.frombuffer(raw.numpy().tobytes(), dtype=dtype).reshape(shape).copy()


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy tensors whose memory another one already uses (safetensors refuses shared memory)."""
    seen, out = set(), {}
    for name, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone() if ptr in seen and t.numel() else t
        seen.add(ptr)
    return out


# ----------------------------------------------------------------------------- trainable weights


def _declared_ties(model) -> dict[str, str]:
    """{alias: first name} for parameters the model holds under several names (a tied lm_head)."""
    first: dict[int, str] = {}
    ties = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(p), name) != name:
            ties[name] = first[id(p)]
    return ties


def _trainable_state(model, state: dict | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, ties): only what training changes, the LoRA tensors or every weight for full fine-tuning,
    with each tied weight once; ties maps each dropped name to the name it is stored under.

    state: the model's full state dict when `model.state_dict()` would not give it (FSDP shards).
    """
    try:
        from peft import PeftModel, get_peft_model_state_dict

        if isinstance(model, PeftModel):
            state = get_peft_model_state_dict(model, state)
            return {k: v.detach().cpu().contiguous() for k, v in state.items()}, {}
    except ImportError:  # pragma: no cover
        pass
    state = model.state_dict() if state is None else state
    declared = _declared_ties(model)
    ties, seen = {}, {}
    for name, t in state.items():
        if declared.get(name) in state:
            ties[name] = declared[name]
            continue
        view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and view in seen:  # the same tensor under two names (ties the model did not declare)
            ties[name] = seen[view]
            continue
        seen[view] = name
    kept = {k: v.detach().cpu().contiguous() for k, v in state.items() if k not in ties}
    return _unshare(kept), ties


def _load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    from peft import PeftModel, set_peft_model_state_dict

    if isinstance(model, PeftModel):
        result = set_peft_model_state_dict(model, state)
    else:
        result = model.load_state_dict(state, strict=False)
    if getattr(result, "unexpected_keys", None):
        raise CheckpointError(f"checkpoint weights have keys the model does not have: {result.unexpected_keys[:3]}")


# ----------------------------------------------------------------------------- random states


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


# ----------------------------------------------------------------------------- save


def save_checkpoint(run_dir: str | Path, step: int, *, model, optimizer, scheduler,
                    generators: dict[str, torch.Generator], trainer_state: dict, keep: int = 2,
                    model_state: dict | None = None, optimizer_state: dict | None = None) -> Path:
    """Write checkpoint `step` atomically; prune old ones, keeping the `keep` newest.

    model_state, optimizer_state: full state dicts gathered from shards (FSDP, `Dist.full_state`),
    instead of the model's and optimizer's own.
    A write that fails (a full disk, a file-size limit) raises CheckpointError naming the file, the
    space the checkpoint needs and the previous checkpoint, which is left as it was.
    """
    from safetensors.torch import save_file

    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    previous = latest_checkpoint(run_dir)
    weights, ties = _trainable_state(model, model_state)
    tensors: dict[str, torch.Tensor] = {}
    tree = {"format": FORMAT, "step": step, "optimizer": encode_tree(
        optimizer.state_dict() if optimizer_state is None else optimizer_state, tensors, "optimizer"),
        "scheduler": encode_tree(scheduler.state_dict(), tensors, "scheduler"),
        "rng": encode_tree(rng_state(generators), tensors, "rng")}
    writes: list[tuple[str, Callable[[Path], None]]] = [
        (TRAINABLE_FILE, lambda p: save_file(weights, str(p), metadata={TIED_KEY: json.dumps(ties)})),
        (TENSORS_FILE, lambda p: save_file(_unshare(tensors), str(p))),
        (TREE_FILE, lambda p: p.write_text(json.dumps(tree))),
        (STATE_FILE, lambda p: p.write_text(json.dumps({**trainer_state, "step": step}, indent=1))),  # last
    ]
    needed = sum(t.nbytes for t in (*weights.values(), *tensors.values()))
    current, tmp = "the checkpoint directory", None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))  # a full disk can fail this too
        for current, write in writes:
            write(tmp / current)
        current = "the checkpoint directory"
        _fsync_dir(tmp)
        _move_into_place(tmp, final)
    except (OSError, RuntimeError, _safetensor_error()) as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(_write_failure(final, current, err, needed, previous)) from err
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep)
    return final


def _safetensor_error() -> type[Exception]:
    from safetensors import SafetensorError

    return SafetensorError


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename tmp to final; an existing checkpoint of the same step is replaced only after that."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _prune(root: Path, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints, and temporary directories a crash left."""
    done = [p for p in root.iterdir() if p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    for old in sorted(done, key=lambda p: int(p.name[len(PREFIX):]))[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in [*root.glob(f".{PREFIX}*.tmp-*"), *root.glob(f".{PREFIX}*.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def _write_failure(final: Path, file_name: str, err: BaseException, needed: int, previous: Path | None) -> str:
    """What failed, how much room the checkpoint needs and what is free, and what is still usable."""
    reason = getattr(err, "strerror", None) or str(err)
    # safetensors: "Error while serializing: I/O error: No space left on device (os error 28)" (0.8),
    # or "... IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })" (older)
    found = re.search(r'message: "([^"]+)"', reason) or re.search(r"I/O error: (.+)$", reason)
    reason = found.group(1) if found else reason
    try:
        free = f"{_size(shutil.disk_usage(final.parent).free)} are free there"
    except OSError:
        free = "the free space is unknown"
    kept = (f"the previous checkpoint {previous.name} is intact: --resume continues from it" if previous is not None
            else "no earlier checkpoint exists")
    return (f"could not write checkpoint {final}: writing {file_name} failed: {reason}. The checkpoint needs "
            f"about {_size(needed)} (its tensors), {free}; {kept}")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


# ----------------------------------------------------------------------------- load


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's contents without a model: {"state", "trainable", "optimizer", "scheduler", "rng"}.

    trainable has the tied names restored (the same tensor under each). Reads JSON and safetensors
    only; anything else, including the older pickle layout, raises CheckpointError.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if (path / LEGACY_FILE).exists() and not (path / TREE_FILE).exists():
        raise CheckpointError(
            f"checkpoint {path} is in the old pickle format ({LEGACY_FILE}), which rlvr no longer loads: "
            "unpickling a file from a run folder can run any code in it. Finish this run with the rlvr "
            "version that wrote it, or start again without --resume (move the run folder away); the "
            f"weights in {TRAINABLE_FILE} are safe to load with safetensors")
    current = STATE_FILE
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
            raise ValueError("no integer 'step' >= 0")
        current = TRAINABLE_FILE
        trainable = load_file(str(path / TRAINABLE_FILE))
        with safe_open(str(path / TRAINABLE_FILE), "pt") as f:
            ties = json.loads((f.metadata() or {}).get(TIED_KEY, "{}"))
        if not isinstance(ties, dict) or not all(isinstance(v, str) and v in trainable for v in ties.values()):
            raise ValueError(f"metadata {TIED_KEY} does not name stored tensors")
        trainable.update({alias: trainable[name] for alias, name in ties.items()})
        current = TENSORS_FILE
        tensors = load_file(str(path / TENSORS_FILE))
        current = TREE_FILE
        tree = json.loads((path / TREE_FILE).read_text(encoding="utf-8"))
        if not isinstance(tree, dict) or tree.get("format") != FORMAT:
            raise ValueError(f"not an {FORMAT} file")
        parts = {k: decode_tree(tree.get(k), tensors, k) for k in ("optimizer", "scheduler", "rng")}
    except (OSError, ValueError, KeyError, RecursionError, UnicodeDecodeError, _safetensor_error()) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable: {current}: {err}") from err
    return {"state": state, "trainable": trainable, **parts}


def load_checkpoint(path: str | Path, *, model, optimizer, scheduler,
                    generators: dict[str, torch.Generator]) -> dict:
    """Restore weights, optimizer, scheduler and random states; return the trainer state."""
    blob = read_checkpoint(path)
    try:
        _load_trainable_state(model, blob["trainable"])
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        set_rng_state(blob["rng"], generators)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint {path} does not fit this run (weights, optimizer, scheduler or "
                              f"random state): {type(err).__name__}: {str(err)[:500]}") from err
    return blob["state"]


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir():
        with open(child, "rb") as f:
            os.fsync(f.fileno())
