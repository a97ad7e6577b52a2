"""Attacks on rlvr's checkpoints: a shared run folder that tries to run code or crash `--resume`, and
a disk that fills up during a write.

`attacks()` lists (name, check); a check builds its own checkpoint in a temporary directory, damages
it as an attacker (or a full disk) would, and returns True when rlvr handles it as designed: a
CheckpointError with a clear message, no code run (a marker file an unpickled payload would create
stays absent), the previous checkpoint still loadable. bench/bench_hostile.py runs every
bench/hostile_*.py.

    PYTHONPATH=src .venv/bin/python bench/hostile_checkpoint.py     # run these alone
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import torch

from rlvr.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent


class _Tied(torch.nn.Module):
    """Two layers sharing one weight (like a tied lm_head), and AdamW state to go with them."""

    def __init__(self, n: int = 8):
        super().__init__()
        self.embed = torch.nn.Linear(n, n, bias=False)
        self.head = torch.nn.Linear(n, n, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x):
        return self.head(self.embed(x))


class _Touch:
    """Unpickling creates the file `path`: stands for any code a payload would run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _parts(n: int = 8) -> dict:
    """A model, optimizer, scheduler and generators, one optimizer step in."""
    model = _Tied(n)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, n)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    return {"model": model, "optimizer": opt, "scheduler": sched, "generators": {"g": torch.Generator()}}


def _refused(damage: Callable[[Path, Path], None], match: str) -> bool:
    """Save a checkpoint, `damage(ckpt, marker)` it, resume: True if it raised CheckpointError
    containing `match` and the marker file was not created."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(tmp, 1, trainer_state={}, **_parts())
        marker = Path(tmp) / "code-ran"
        damage(ckpt, marker)
        try:
            load_checkpoint(latest_checkpoint(tmp), **_parts())
        except CheckpointError as err:
            return match in str(err) and not marker.exists()
        return False


def _payload(marker: Path) -> bytes:
    return pickle.dumps({"optimizer": _Touch(str(marker))})


def _legacy_pickle(ckpt: Path, marker: Path) -> None:
    for name in ("optim_rng.json", "optim_rng.safetensors"):
        (ckpt / name).unlink()
    (ckpt / "optim_rng.pt").write_bytes(_payload(marker))


def _edit_tree(edit: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    def damage(ckpt: Path, marker: Path) -> None:
        tree = json.loads((ckpt / "optim_rng.json").read_text())
        edit(tree)
        (ckpt / "optim_rng.json").write_text(json.dumps(tree))
    return damage


def _write(name: str, data: Callable[[Path], bytes]) -> Callable[[Path, Path], None]:
    def damage(ckpt: Path, marker: Path) -> None:
        (ckpt / name).unlink()
        (ckpt / name).write_bytes(data(marker))
    return damage


def _symlink(name: str, target: str) -> Callable[[Path, Path], None]:
    def damage(ckpt: Path, marker: Path) -> None:
        (ckpt / name).unlink()
        os.symlink(target, ckpt / name)
    return damage


def _other_model(ckpt: Path, marker: Path) -> None:
    """A checkpoint of a bigger model (another run's) in this run's folder."""
    parts = _parts(16)
    save_checkpoint(ckpt.parent.parent, 2, trainer_state={}, **parts)


def _half_written() -> bool:
    """A checkpoint directory without state.json (a crash mid-write) is never the one resumed."""
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(tmp, 1, trainer_state={}, **_parts())
        (Path(tmp) / "checkpoints" / "step-000002").mkdir()
        (Path(tmp) / "checkpoints" / "step-000002" / "optim_rng.pt").write_bytes(b"junk")
        return latest_checkpoint(tmp).name == "step-000001"


_DISK_FULL = textwrap.dedent("""
    import resource, signal, sys, torch
    sys.path.insert(0, {bench!r})
    from hostile_checkpoint import _parts
    from rlvr.checkpoint import CheckpointError, save_checkpoint

    parts = _parts(256)  # 256 kB of weights, 768 kB with Adam's moments
    save_checkpoint({run!r}, 1, trainer_state={{}}, **parts)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then writes past 64 kB fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    try:
        save_checkpoint({run!r}, 2, trainer_state={{}}, **parts)
    except CheckpointError as err:
        print(err)
""")


def _disk_full() -> bool:
    """A write that fails (file-size limit, as a full disk fails it): the message names the file, the
    space needed and the previous checkpoint, which still loads."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        script = _DISK_FULL.format(bench=str(ROOT / "bench"), run=tmp)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                              timeout=300, check=False)
        msg = done.stdout
        ok = (done.returncode == 0 and "writing trainable.safetensors failed: File too large" in msg
              and "needs about 0.8 MB" in msg and "previous checkpoint step-000001 is intact" in msg)
        state = load_checkpoint(latest_checkpoint(tmp), **_parts(256))
        return ok and state["step"] == 1 and latest_checkpoint(tmp).name == "step-000001"


def _tied_once() -> bool:
    """Tied weights are stored once and tied again on load."""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        parts = _parts(64)
        ckpt = save_checkpoint(tmp, 1, trainer_state={}, **parts)
        stored = load_file(str(ckpt / "trainable.safetensors"))
        fresh = _parts(64)
        load_checkpoint(ckpt, **fresh)
        return (list(stored) == ["embed.weight"] and fresh["model"].head.weight is fresh["model"].embed.weight
                and torch.equal(fresh["model"].head.weight, parts["model"].embed.weight))


def attacks() -> list[tuple[str, Callable[[], bool]]]:
    """(name, check): each check returns True when rlvr handles the attack as designed."""
    return [
        ("checkpoint: crafted pickle as optim_rng.pt (old layout) is refused, never unpickled",
         lambda: _refused(_legacy_pickle, "old pickle format")),
        ("checkpoint: crafted pickle renamed optim_rng.safetensors",
         lambda: _refused(_write("optim_rng.safetensors", _payload), "unreadable: optim_rng.safetensors")),
        ("checkpoint: crafted pickle renamed trainable.safetensors",
         lambda: _refused(_write("trainable.safetensors", _payload), "unreadable: trainable.safetensors")),
        ("checkpoint: crafted pickle renamed optim_rng.json",
         lambda: _refused(_write("optim_rng.json", _payload), "unreadable: optim_rng.json")),
        ("checkpoint: JSON entry that is not rlvr's ({'__reduce__': ...})",
         lambda: _refused(_edit_tree(lambda t: t.update(rng={"__reduce__": ["os.system", "id"]})), "unknown entry")),
        ("checkpoint: numpy object array (a pickle inside) in the random state",
         lambda: _refused(_edit_tree(lambda t: t.update(rng={"ndarray": "x", "dtype": "|O", "shape": [1]})),
                          "not accepted")),
        ("checkpoint: ndarray claiming 10^12 elements",
         lambda: _refused(_edit_tree(lambda t: t["rng"]["dict"][1][1]["tuple"][1].update(shape=[10**12])),
                          "do not match")),
        ("checkpoint: JSON nesting bomb",
         lambda: _refused(_write("optim_rng.json", lambda m: b"[" * 200_000 + b"]" * 200_000), "unreadable")),
        ("checkpoint: tensor reference to a missing tensor",
         lambda: _refused(_edit_tree(lambda t: t.update(rng={"tensor": "nope"})), "missing from")),
        ("checkpoint: safetensors header claiming 1 TB",
         lambda: _refused(_write("optim_rng.safetensors", _huge_header), "unreadable: optim_rng.safetensors")),
        ("checkpoint: trainable.safetensors symlinked to /etc/passwd",
         lambda: _refused(_symlink("trainable.safetensors", "/etc/passwd"), "unreadable: trainable.safetensors")),
        ("checkpoint: state.json step is not an integer",
         lambda: _refused(_write("state.json", lambda m: b'{"step": "1; rm -rf ~"}'), "no integer 'step'")),
        ("checkpoint: tied-weight metadata naming a missing tensor",
         lambda: _refused(_write("trainable.safetensors", lambda m: _bad_ties()), "rlvr.tied")),
        ("checkpoint: another model's checkpoint in the run folder",
         lambda: _refused(_other_model, "does not fit this run")),
        ("checkpoint: half-written directory (no state.json) is not resumed", _half_written),
        ("checkpoint: disk full (RLIMIT_FSIZE) mid-write", _disk_full),
        ("checkpoint: tied weights stored once, tied again on load", _tied_once),
    ]


def _huge_header(marker: Path) -> bytes:
    """A safetensors file whose first 8 bytes say its JSON header is 1 TB long."""
    return struct.pack("<Q", 2**40) + b"{}"


def _bad_ties() -> bytes:
    from safetensors.torch import save

    return save({"embed.weight": torch.zeros(8, 8)}, metadata={"rlvr.tied": json.dumps({"head.weight": "gone"})})


if __name__ == "__main__":
    results = [(name, check()) for name, check in attacks()]
    for name, ok in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    print(f"{sum(ok for _, ok in results)}/{len(results)} handled as designed")
