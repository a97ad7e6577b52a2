"""Benchmark: FastSampler against HF `generate` on the bundled SmolLM2-135M, measured in one run.

64 sequences (8 chat prompts asking a subtraction question x 8 samples), 64 new tokens each,
temperature 1.0, top_p 0.95, top_k off, EOS ignored (both generate exactly 64 tokens per sequence;
the script checks). The two alternate for --rounds rounds, since other jobs share the CPU; medians
are reported, with the tokens/s as a fraction of an fp32 matmul ceiling measured in the same run
(2 * parameters FLOPs per generated token).

    .venv/bin/python bench/bench_sampler.py [--rounds 3] [--threads N] [--hf-sampler] [--profile]

With vLLM (its own environment, scripts/setup_vllm.sh), each backend once in its own process, so
that each has its own peak RSS; vLLM's engine start and weight-sync seconds per push are measured too,
full fine-tuning and both LoRA sync paths (merge and push, adapter as a LoRARequest):

    .venv-vllm/bin/python bench/bench_sampler.py --vllm [--record bench/results/sampler_vllm.json]

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

from ceiling import machine  # noqa: E402
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


VLLM_BACKENDS = ["hf generate", "fast", "vllm", "vllm lora merge", "vllm lora adapter"]


def _perturb_lora(model, seed: int) -> None:
    """Seeded noise on the LoRA B matrices (zero at init): a stand-in for one update."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.01)


def one_backend(name: str, args) -> dict:
    """Time one backend in this process: tok/s of one generation (8 x 8 x 64), and for vLLM the
    engine start and the mean of 3 weight pushes (weights changed before each); peak RSS."""
    import resource

    model, tok = load_model("smollm2-135m", dtype=args.dtype)
    prompts = make_prompts(tok, args.prompts)
    out: dict = {"backend": name}
    if name == "hf generate":
        t0 = time.perf_counter()
        n = run_hf(model, tok, prompts, args.samples, args.new_tokens)
    else:
        if name == "fast":
            sampler = FastSampler(model, tok, max_batch_size=args.prompts * args.samples)
            run_sampler(sampler, prompts[:1], 2, 4, 0)  # warm-up, as time_rounds
        else:
            from rlvr.models import attach_lora
            from rlvr.sampling.vllm import VLLMSampler

            if "lora" in name:
                model = attach_lora(model, r=16, alpha=32)
                _perturb_lora(model, 0)
            sampler = VLLMSampler(model, tok, vllm_max_model_length=256, vllm_max_num_seqs=64,
                                  vllm_lora_sync="adapter" if "adapter" in name else "merge")
            sampler.start()
            out["start_s"] = sampler.start_seconds
        t0 = time.perf_counter()
        n = run_sampler(sampler, prompts, args.samples, args.new_tokens, 0)
    out["tok_s"] = n / (time.perf_counter() - t0)
    if name.startswith("vllm"):
        for step in range(3):
            if "lora" in name:
                _perturb_lora(model, step + 1)
            else:
                with torch.no_grad():
                    model.model.layers[step].mlp.down_proj.weight.mul_(1.001)
            sampler.release()
            sampler.sync_weights(model)
        out["sync_s"] = statistics.mean(sampler.sync_seconds)
        out["sync_s_each"] = sampler.sync_seconds
        sampler.close()
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out["load_after"] = os.getloadavg()[0]
    return out


def vllm_comparison(args) -> None:
    """Each backend in its own process (this interpreter: the vLLM environment), one run each."""
    import json
    import subprocess

    record = {"settings": {"prompts": args.prompts, "samples": args.samples, "new_tokens": args.new_tokens,
                           "temperature": 1.0, "top_p": 0.95, "dtype": args.dtype, "eos": "ignored",
                           "OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"], "python": sys.executable},
              "machine": machine(), "results": []}
    for name in VLLM_BACKENDS:
        cmd = [sys.executable, __file__, "--one", name, "--prompts", str(args.prompts), "--samples",
               str(args.samples), "--new-tokens", str(args.new_tokens), "--dtype", args.dtype]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        result = json.loads(line[7:]) if line else {"backend": name, "error": proc.stderr[-2000:]}
        print(json.dumps(result))
        record["results"].append(result)
    record["machine"]["load_after"] = os.getloadavg()
    if args.record:
        with open(args.record, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")


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
    parser.add_argument("--vllm", action="store_true", help="HF generate, fast and vLLM (full, LoRA merge, "
                        "LoRA adapter), each once in its own process: run with .venv-vllm/bin/python")
    parser.add_argument("--record", help="with --vllm: write the results (JSON) here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one backend, one JSON line
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # rounds show up as they finish, even through a pipe
    if args.one:
        import json

        print("RESULT " + json.dumps(one_backend(args.one, args)))
        return
    if args.vllm:
        vllm_comparison(args)
        return
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
