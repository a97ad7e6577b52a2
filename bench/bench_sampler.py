"""Benchmark: FastSampler against HF `generate` on the bundled SmolLM2-135M, measured in one run.

64 sequences (8 chat prompts asking a subtraction question x 8 samples), 64 new tokens each,
temperature 1.0, top_p 0.95, top_k off, EOS ignored (both generate exactly 64 tokens per sequence;
the script checks). The two alternate for --rounds rounds, since other jobs share the CPU; medians
are reported, with the tokens/s as a fraction of an fp32 matmul ceiling measured in the same run
(2 * parameters FLOPs per generated token).

    .venv/bin/python bench/bench_sampler.py [--rounds 3] [--threads N] [--hf-sampler] [--profile]

OMP_WAIT_POLICY defaults to PASSIVE here: with the default (spinning) policy, two torch processes
sharing 2 cores make each parallel op wait for a descheduled thread, and a decode step measured
7.5 s instead of 0.45 s. Set OMP_WAIT_POLICY=ACTIVE in the environment to measure without it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see the docstring)

import argparse  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from rlvr.models import load_model  # noqa: E402
from rlvr.sampling import FastSampler, HFSampler, SamplingParams  # noqa: E402

SYSTEM = ("You are a careful math tutor. Think step by step inside <think> </think> tags, then give only "
          "the final number inside <answer> </answer> tags.")


def make_prompts(tok, n: int, seed: int = 0) -> list[list[int]]:
    """n chat prompts (~75 tokens) asking a subtraction question."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        a, b = rng.randint(100, 9999), rng.randint(10, 999)
        messages = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"What is {a} minus {b}? Show your reasoning briefly, "
                                                f"then put the final answer in <answer></answer>."}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        prompts.append(ids if isinstance(ids, list) else ids["input_ids"])
    return prompts


def matmul_gflops(seconds: float = 2.0) -> float:
    """fp32 GFLOP/s of a 1024^3 matmul (the best of repeated runs over `seconds`): the ceiling."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = max(best, 4 * 2 * 1024**3 / (time.perf_counter() - t0) / 1e9)
    return best


def run_hf(model, tok, prompts, samples: int, new_tokens: int) -> int:
    """Plain `model.generate` (no log-probs): the baseline. Returns the tokens generated."""
    from transformers import GenerationConfig

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    # top_k=0 (None would mean HF's default 50), eos_token_id=[] (None would mean the model's EOS)
    config = GenerationConfig(do_sample=True, temperature=1.0, top_p=0.95, top_k=0, max_new_tokens=new_tokens,
                              num_return_sequences=samples, eos_token_id=[], pad_token_id=tok.pad_token_id)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    assert out.shape == (len(prompts) * samples, width + new_tokens), out.shape
    return (out.shape[1] - width) * out.shape[0]


def run_sampler(sampler, prompts, samples: int, new_tokens: int, seed: int) -> int:
    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, top_p=0.95)
    out = sampler.generate(prompts, params, num_samples=samples, generator=torch.Generator().manual_seed(seed))
    n = sum(len(c.token_ids) for c in out)
    assert n == len(prompts) * samples * new_tokens, n
    return n


def time_rounds(model, tok, prompts, args) -> tuple[dict, dict, list]:
    """Alternate the backends for args.rounds rounds; tokens per wall second and per CPU second
    (process time: less sensitive to other jobs taking the cores, exact for one thread)."""
    fast = FastSampler(model, tok, max_batch_size=args.prompts * args.samples)
    hf_sampler = HFSampler(model, tok)
    run_sampler(fast, prompts[:1], 2, 4, 0)  # warm-up (weights fused, caches allocated)
    names = ["hf generate", "fast"] + (["hf sampler"] if args.hf_sampler else [])
    wall, cpu, gflops = {n: [] for n in names}, {n: [] for n in names}, []
    for r in range(args.rounds):
        gflops.append(matmul_gflops())
        for name in names:
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "hf generate":
                n = run_hf(model, tok, prompts, args.samples, args.new_tokens)
            else:
                n = run_sampler(fast if name == "fast" else hf_sampler, prompts, args.samples, args.new_tokens, r)
            wall[name].append(n / (time.perf_counter() - t0))
            cpu[name].append(n / (time.process_time() - c0))
            print(f"round {r + 1}: {name:12s} {wall[name][-1]:7.1f} tok/s  ({cpu[name][-1]:6.1f} tok per CPU s)  "
                  f"load {os.getloadavg()[0]:.1f}")
    return wall, cpu, gflops


def report(wall: dict, cpu: dict, gflops: list, params: int) -> None:
    ceiling = statistics.median(gflops) * 1e9 / (2 * params)
    print(f"\nfp32 matmul ceiling: {statistics.median(gflops):.0f} GFLOP/s = {ceiling:.0f} tok/s at 2*params "
          f"FLOPs/token (best 1024^3 matmul per round, median over rounds)")
    hf, hf_cpu = statistics.median(wall["hf generate"]), statistics.median(cpu["hf generate"])
    for name in wall:
        med, med_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:12s} median {med:7.1f} tok/s ({med / ceiling:5.1%} of ceiling, {med / hf:4.2f}x hf generate); "
              f"{med_cpu:6.1f} tok per CPU s ({med_cpu / hf_cpu:4.2f}x)")
    ratios = [f / h for f, h in zip(wall["fast"], wall["hf generate"])]
    print("per-round fast / hf generate:", " ".join(f"{x:.2f}" for x in ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--hf-sampler", action="store_true", help="also time HFSampler (generate + log-probs)")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of one fast run")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--dtype", default="fp32", help="model dtype for both backends (fp32, bf16)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # rounds show up as they finish, even through a pipe
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = load_model("smollm2-135m", dtype=args.dtype)
    prompts = make_prompts(tok, args.prompts)
    params = sum(p.numel() for p in model.parameters())  # tied embeddings counted once: the lm_head matmul
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ['OMP_WAIT_POLICY']}, load average {os.getloadavg()[0]:.1f}; {params / 1e6:.1f}M parameters; "
          f"{args.prompts} prompts x {args.samples} samples, prompt tokens {min(map(len, prompts))}-"
          f"{max(map(len, prompts))}, {args.new_tokens} new tokens, temperature 1.0, top_p 0.95, EOS ignored")
    wall, cpu, gflops = time_rounds(model, tok, prompts, args)
    report(wall, cpu, gflops, params)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run_sampler(FastSampler(model, tok), prompts, args.samples, args.new_tokens, 0)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
