"""Benchmark the update's vocabulary head alone: the log-probs of 1024 completion tokens under the
135M model's 49,152 x 576 lm_head, forward + backward to the hidden states, with the entropy.

Two ways, alternating in one process (`--reps` of each): `frozen`, rlvr's default for a frozen head
(LoRA), takes the gradient in the forward pass (`FrozenHeadLogProbs`: two [C, H] x [H, V] products
per chunk); `recompute` checkpoints each chunk and recomputes its logits in the backward (three
products per chunk; what a trainable head needs). Random weights of the real shape: the arithmetic
does not depend on their values.

    .venv/bin/python bench/bench_head.py --reps 5 --out bench/results/head.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
import torch.nn.functional as F
from ceiling import machine, matmul_gflops

from rlvr.algorithms.logprobs import chunked_head_logprobs, chunked_token_logprobs
from rlvr import allocator

ROWS, HIDDEN, VOCAB = 1024, 576, 49152


def run(way: str, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> float:
    """Seconds of one forward + backward."""
    h = hidden.detach().requires_grad_(True)
    t0 = time.perf_counter()
    if way == "frozen":
        logp, _ = chunked_token_logprobs(h, weight, targets, chunk_size=chunk, with_entropy=True)
    else:
        logp, _ = chunked_head_logprobs(h, lambda x: F.linear(x, weight), targets, chunk_size=chunk, with_entropy=True)
    logp.sum().backward()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    allocator.start()  # rlvr's allocator, as `rlvr` sets it at start-up
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, ROWS, HIDDEN, generator=g)  # [N, K, H]
    weight = torch.randn(VOCAB, HIDDEN, generator=g) * 0.02  # [V, H], frozen
    targets = torch.randint(VOCAB, (1, ROWS), generator=g)
    ways = ["frozen", "recompute"]
    times: dict[str, list[float]] = {w: [] for w in ways}
    for w in ways:  # warm-up
        run(w, hidden, weight, targets, args.chunk_size)
    ceiling = matmul_gflops()
    for r in range(args.reps):
        for w in ways if r % 2 == 0 else ways[::-1]:
            times[w].append(run(w, hidden, weight, targets, args.chunk_size))
    flops = {"frozen": 2, "recompute": 3}
    summary = {}
    for w in ways:
        best, median = min(times[w]), statistics.median(times[w])
        frac = flops[w] * 2 * ROWS * HIDDEN * VOCAB / best / (ceiling * 1e9)
        summary[w] = {"best_s": best, "median_s": median, "matmul_frac": frac}
        print(f"{w:10s} best {best:.3f} s  median {median:.3f} s  ({flops[w]} head products, {frac:.0%} of "
              f"the {ceiling:.0f} GFLOP/s ceiling)")
    ratio = summary["recompute"]["median_s"] / summary["frozen"]["median_s"]
    print(f"recompute / frozen (medians): {ratio:.2f}x")
    if args.out:
        args.out.write_text(json.dumps({"settings": {"rows": ROWS, "hidden": HIDDEN, "vocab": VOCAB,
                                                     "chunk_size": args.chunk_size, "reps": args.reps,
                                                     "threads": args.threads},
                                        "machine": machine(), "ceiling_gflops": ceiling, "times": times,
                                        "summary": summary, "ratio_recompute_over_frozen": ratio}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
