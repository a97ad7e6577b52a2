"""What the bench/ scripts share: the fp32 matmul ceiling they report against, the machine record,
the reading of a run stopped by hand, and a control run's comparison with the real run."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def machine(**load) -> dict:
    """The one machine record every bench keeps: `rlvr env` (the CPU model, its cores, torch's kernel
    level and speed-relevant flags, versions, threads, malloc) as its lines, the CPU model and core
    count on their own, the load average now, and any `load` given (e.g. load_before=...)."""
    import subprocess
    import sys

    env = subprocess.run([sys.executable, "-m", "rlvr", "env"], capture_output=True, text=True, check=False,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout.strip().splitlines()
    cpu = next((line.split(None, 1)[1] for line in env if line.startswith("cpu ")), platform.processor() or platform.machine())
    return {"cpu": cpu, "cores": os.cpu_count(), "rlvr_env": env, "load": os.getloadavg(), **load}


def stopped_run(run_dir: Path, keys: tuple[str, ...]) -> tuple[dict, list[dict], dict]:
    """What the directory of an `rlvr run` stopped by hand during GRPO holds: its evaluations as rows
    (`keys` of each: base, sft = GRPO's "before", then "step N"), GRPO's per-step metrics, and the
    warm-up's summary (sft_summary.json)."""
    from rlvr.tracking import read_jsonl as lines

    base = json.loads((run_dir / "eval" / "base_summary.json").read_text())
    rows = {"base": {k: base.get(k) for k in keys},
            **{("sft" if e["stage"] == "before" else e["stage"]): {k: e.get(k) for k in keys}
               for e in lines(run_dir / "grpo" / "eval.jsonl")}}
    return rows, lines(run_dir / "grpo" / "metrics.jsonl"), json.loads((run_dir / "sft" / "sft_summary.json").read_text())


def compare_with_real(control_rows: list[dict], real_record: Path, control: str) -> dict | None:
    """A control run's GRPO change beside the real run's (the "rows" of the real run's bench record),
    labelled by `rlvr.report.compare_to_control`; None when the real record is missing."""
    from rlvr.report.data import compare_to_control

    if not real_record.exists():
        return None
    real_rows = json.loads(real_record.read_text())["rows"]
    label = lambda rows: [{"label": r["stage"], **r} for r in rows]  # noqa: E731
    c = compare_to_control(label(real_rows), label(control_rows), control)
    return {"real_record": str(real_record), "kind": c.kind, "text": c.text, "rows": c.rows, "notes": c.notes,
            "same_start": c.same_start}


def matmul_gflops(n: int = 2048, seconds: float = 3.0) -> float:
    """fp32 GFLOP/s at this process's thread count: the best of repeated n x n x n products."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best
