"""What the bench/ scripts share: the fp32 matmul ceiling they report against, and the machine."""

from __future__ import annotations

import os
import platform
import time


def machine() -> dict:
    """The CPU, core count and library versions, for a benchmark record."""
    import torch
    import transformers

    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                   cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}


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
