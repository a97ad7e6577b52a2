"""The fp32 matmul ceiling the benchmarks report against (shared by the bench/ scripts)."""

from __future__ import annotations

import time


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
