"""Benchmark one GRPO update step (forward + backward) of the bundled 135M model with LoRA: the naive
full-vocabulary log-softmax against the lean path (backbone + chunked, checkpointed lm_head), with
and without gradient checkpointing of the layers and a glibc allocator setting.

Each variant runs in a fresh subprocess, so its peak RSS is its own (os.wait4 on that child); with
--rounds >= 2 the variants' order rotates, so a noisy neighbour hurts all of them alike and the
least-disturbed run of each is reported. Each worker warms up on a quarter batch, then times one
full step. The parent times a 2048x2048 fp32 matmul loop (before and after) to express the update's
throughput as a fraction of this machine's matmul ceiling.

    .venv/bin/python bench/bench_update.py                  # ~4-5 minutes on 2 idle CPU cores
    .venv/bin/python bench/bench_update.py --rounds 2 --variants naive,lean+gc+mmap
    .venv/bin/python bench/bench_update.py --rounds 2 --variants naive,lean+share --out bench/results/update.json

Useful FLOPs of one step, LoRA on a frozen base (forward 2P + input-gradient backward 2P per token):
    4 * (P_backbone * N * T  +  V * H * N * K)      (lm_head counted on the K completion positions)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, also when imported by path
from ceiling import machine, matmul_gflops

N_SEQ, PROMPT, COMPLETION, G = 32, 64, 64, 8
BASES = {
    "naive": "model(...).logits at all T positions, log_softmax over V, gather (seed 004, the textbook)",
    "keep": "logits only at the K+1 completion positions (TRL's logits_to_keep) + selective log-softmax",
    "lean": "backbone only, then the chunked + checkpointed lm_head (rlvr.policy.completion_logprobs)",
}
FLAGS = {
    "gc": "gradient checkpointing of every decoder layer (model.activation_checkpointing_enable())",
    "mmap": "MALLOC_MMAP_THRESHOLD_=1048576: glibc serves blocks >= 1 MB by mmap and unmaps them on free "
            "(+mmapN: N MB)",
    "share": "each group's prompt run once, its G=8 completions on the prompt's keys/values (grpo.share_prompt)",
    "peft": "peft's own LoRA forward (five autograd nodes per linear) instead of rlvr.fused's fused ones",
    "linear": "of rlvr.fused's layers, the LoRA linears only (not the gated MLPs, not the RMSNorms)",
    "mlp": "of rlvr.fused's layers, the LoRA linears and the gated MLPs (not the RMSNorms)",
    "recompute": "the lm_head chunks checkpointed and recomputed in the backward, as before FrozenHeadLogProbs "
                 "(which takes the frozen head's gradient in the forward)",
    "mimalloc": "LD_PRELOAD=libmimalloc.so with MIMALLOC_PURGE_DELAY=-1, as the `rlvr` command runs (rlvr.allocator): "
                "freed memory is kept and reused, no page faults after the first step",
    "thp": "THP_MEM_ALLOC_ENABLE=1: PyTorch's CPU allocator asks for transparent huge pages (madvise) for "
           "tensors >= 2 MB, so fresh memory faults in 2 MB pages instead of 4 KB ones",
}
MMAP_THRESHOLD = 1 << 20


def _rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def _batch(generator, n: int, vocab: int):
    """[N, P+K] random token ids in groups of G rows sharing a prompt (GRPO's layout); prompts
    left-padded by 0-6 tokens, completions right-padded by 0-16. Also prompt_rows [N]."""
    import torch

    group = torch.arange(n) // G  # [N]
    prompts = torch.randint(3, vocab, (int(group.max()) + 1, PROMPT), generator=generator)  # [n/G, P]
    completions = torch.randint(3, vocab, (n, COMPLETION), generator=generator)  # [N, K]
    ids = torch.cat([prompts[group], completions], dim=1)  # [N, P+K]
    mask = torch.ones_like(ids)
    for i in range(n):
        mask[i, : 2 * (group[i] % 4)] = 0  # the group's prompt padding
        mask[i, PROMPT + COMPLETION - (i % 5) * 4:] = 0  # completions end early by 0-16 tokens
    return ids, mask, group * G


def _logprobs(variant: str, model, ids, mask, chunk_size: int, prompt_rows):
    from rlvr.algorithms.logprobs import selective_log_softmax
    from rlvr.policy import (
        completion_logprobs,
        naive_completion_logprobs,
        position_ids_from_mask,
    )

    base = variant.split("+")[0]
    if base == "naive":
        return naive_completion_logprobs(model, ids, mask, COMPLETION)
    if base == "keep":
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                       use_cache=False, logits_to_keep=COMPLETION + 1).logits[:, :-1]  # [N, K, V]
        return selective_log_softmax(logits, ids[:, -COMPLETION:])  # [N, K]
    rows = prompt_rows if "+share" in variant else None
    return completion_logprobs(model, ids, mask, COMPLETION, chunk_size=chunk_size, prompt_rows=rows)


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process: less sensitive than wall time to neighbours."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sys_s() -> float:
    """System CPU seconds: mostly page faults of freshly allocated memory."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def _faults() -> int:
    """Minor page faults so far: each is a fresh 4 KB page (or a 2 MB huge page) the kernel zeroed."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _step(variant: str, model, ids, mask, rows, chunk_size: int, micro_batch: int = 0) -> dict:
    """One forward + backward of the GRPO loss, in micro-batches of `micro_batch` rows (whole
    groups; 0: all rows at once) with gradients accumulated, as the trainer does: wall seconds of
    the forwards and of the backwards, CPU seconds."""
    import torch

    from rlvr.algorithms.advantages import group_advantages
    from rlvr.algorithms.losses import policy_loss

    g = torch.Generator().manual_seed(1)
    n = ids.shape[0]
    rewards = torch.randint(0, 2, (n,), generator=g).float()
    adv = group_advantages(rewards, G)
    step = micro_batch or n
    forward = backward = 0.0
    cpu0, sys0, faults0 = _cpu_s(), _sys_s(), _faults()
    for a in range(0, n, step):
        b = min(n, a + step)
        t0 = time.perf_counter()
        logp = _logprobs(variant, model, ids[a:b], mask[a:b], chunk_size, rows[a:b] - a)
        loss, _ = policy_loss(logp, logp.detach(), adv[a:b], mask[a:b, -COMPLETION:])
        t1 = time.perf_counter()
        (loss * (b - a) / n).backward()
        forward, backward = forward + t1 - t0, backward + time.perf_counter() - t1
    model.zero_grad(set_to_none=True)
    return {"forward_s": forward, "backward_s": backward, "cpu_s": _cpu_s() - cpu0, "sys_s": _sys_s() - sys0,
            "page_faults": _faults() - faults0}


def worker(variant: str, chunk_size: int, steps: int = 1, micro_batch: int = 0) -> None:
    """Load the model, attach LoRA, warm up on a quarter batch, time `steps` full steps; print the
    last one (and every step's seconds) as JSON."""
    if "+mimalloc" in variant:  # as the `rlvr` command starts: re-executed with mimalloc preloaded
        from rlvr import allocator

        if allocator.start() != "mimalloc":
            raise SystemExit(f"+mimalloc: running under {allocator.describe()}")
    import torch

    from rlvr.models import attach_lora, load_model

    torch.manual_seed(0)
    model, _ = load_model("smollm2-135m", device="cpu", dtype="fp32")
    model = attach_lora(model, r=16, alpha=32, target_modules="all-linear",
                        fused=not any(f in variant for f in ("+peft", "+linear", "+mlp")))
    if "+linear" in variant or "+mlp" in variant:
        from rlvr.fused import fuse_gated_mlps, fuse_lora

        fuse_lora(model)
        if "+mlp" in variant:
            fuse_gated_mlps(model)
    model.train()
    if "+recompute" in variant:  # the checkpointed chunks of rlvr.algorithms.logprobs, for a frozen head too
        import torch.nn.functional as F

        import rlvr.policy
        from rlvr.algorithms.logprobs import chunked_head_logprobs

        def recomputed(hidden, weight, targets, bias=None, **kwargs):
            return chunked_head_logprobs(hidden, lambda h: F.linear(h, weight, bias), targets, **kwargs)

        rlvr.policy.chunked_token_logprobs = recomputed
    if "+gc" in variant:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    base = model.get_base_model()
    vocab, hidden = base.config.vocab_size, base.config.hidden_size
    backbone = sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n and "embed_tokens" not in n)
    ids, mask, rows = _batch(torch.Generator().manual_seed(0), N_SEQ, vocab)
    rss_loaded = _rss_gb()
    quarter = N_SEQ // 4
    _step(variant, model, ids[:quarter], mask[:quarter], rows[:quarter], chunk_size)  # warm-up
    every = [_step(variant, model, ids, mask, rows, chunk_size, micro_batch) for _ in range(steps)]
    timed = every[-1]  # steady state: an allocator that keeps memory pays its page faults in step 1
    print(json.dumps({"variant": variant, **timed, "steps_s": [t["forward_s"] + t["backward_s"] for t in every],
                      "rss_loaded_gb": rss_loaded, "backbone_params": backbone, "vocab": vocab, "hidden": hidden}))


def run_variant(variant: str, chunk_size: int, steps: int = 1, micro_batch: int = 0) -> dict:
    """Run one variant in a fresh process; its own peak RSS comes from os.wait4 on that child."""
    env = dict(os.environ)
    mmap = re.search(r"\+mmap(\d*)", variant)  # +mmap: 1 MB, +mmap32: 32 MB
    if mmap:
        env["MALLOC_MMAP_THRESHOLD_"] = str(int(mmap.group(1) or 1) * MMAP_THRESHOLD)
    env["THP_MEM_ALLOC_ENABLE"] = "1" if "+thp" in variant else "0"
    cmd = [sys.executable, __file__, "--worker", variant, "--chunk-size", str(chunk_size), "--steps", str(steps),
           "--micro-batch", str(micro_batch)]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{variant} failed:\n{err.read()[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_gb"] = usage.ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds >= 2 alternate the variants' order")
    parser.add_argument("--variants", default="naive,lean,lean+share,lean+gc,lean+gc+mmap",
                        help="comma-separated base[+share][+gc][+mmap|+mimalloc][+peft|+linear|+mlp][+recompute][+thp], "
                        "bases: " + ", ".join(BASES))
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=1,
                        help="full steps per worker, the last one timed (2+: steady state, allocator memory kept)")
    parser.add_argument("--micro-batch", type=int, default=0,
                        help="rows per forward/backward, gradients accumulated (rlvr's default: 16); 0: all 32 at once")
    parser.add_argument("--out", help="also write the runs and the summary to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.chunk_size, args.steps, args.micro_batch)

    if args.micro_batch % G or args.micro_batch > N_SEQ:
        parser.error(f"--micro-batch must be whole groups of {G} rows, at most {N_SEQ}")
    import torch

    variants = args.variants.split(",")
    print(f"batch {N_SEQ} x ({PROMPT} prompt + {COMPLETION} completion) tokens ({N_SEQ // G} prompts x G={G}), "
          "LoRA r=16 all-linear, "
          f"fp32, {torch.get_num_threads()} threads, lm_head chunk {args.chunk_size} rows, "
          f"{f'micro-batches of {args.micro_batch} rows' if args.micro_batch else 'all rows in one pass'}")
    ceilings = [matmul_gflops()]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]  # rotate: alternate
        for v in order:
            results[v].append(run_variant(v, args.chunk_size, args.steps, args.micro_batch))
            print(f"  round {r + 1} {v}: {results[v][-1]['forward_s'] + results[v][-1]['backward_s']:.1f} s",
                  flush=True)
    ceilings.append(matmul_gflops())
    summary = report(results, max(ceilings))
    if args.out:
        record = {"settings": {"n_seq": N_SEQ, "prompt": PROMPT, "completion": COMPLETION, "G": G,
                               "lora": "r16 all-linear", "chunk_size": args.chunk_size, "rounds": args.rounds,
                               "steps": args.steps, "micro_batch": args.micro_batch,
                               "threads": torch.get_num_threads()},
                  "machine": machine(), "matmul_gflops": ceilings, "runs": results, "summary": summary}
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.out}")


def report(results: dict[str, list[dict]], ceiling: float) -> dict:
    """One row per variant (its least-disturbed run), then the ratios against naive."""
    tokens = N_SEQ * (PROMPT + COMPLETION)
    print(f"\nfp32 matmul ceiling (2048^3, best of two measurements): {ceiling:.0f} GFLOP/s")
    print(f"{'variant':<13} {'peak RSS GB':>11} {'loaded GB':>9} {'fwd s':>6} {'bwd s':>6} {'step s':>6} "
          f"{'CPU s':>6} {'sys s':>6} {'tokens/s':>8} {'% ceiling':>9}")
    summary, summary_json = {}, {}
    for v, runs in results.items():
        best = min(runs, key=lambda x: x["forward_s"] + x["backward_s"])  # least disturbed run
        seconds = best["forward_s"] + best["backward_s"]
        run = N_SEQ // G * PROMPT + N_SEQ * COMPLETION if "+share" in v else tokens  # tokens the backbone ran
        flops = 4 * (best["backbone_params"] * run + best["vocab"] * best["hidden"] * N_SEQ * COMPLETION)
        peak = max(x["peak_rss_gb"] for x in runs)
        summary[v] = (peak, seconds, min(x["cpu_s"] for x in runs))
        summary_json[v] = {"peak_rss_gb": peak, "step_s": seconds, "tokens_per_s": tokens / seconds,
                           "ceiling_frac": flops / seconds / 1e9 / ceiling}
        print(f"{v:<13} {peak:>11.2f} {best['rss_loaded_gb']:>9.2f} {best['forward_s']:>6.1f} "
              f"{best['backward_s']:>6.1f} {seconds:>6.1f} {best['cpu_s']:>6.1f} {best['sys_s']:>6.1f} "
              f"{tokens / seconds:>8.0f} {100 * flops / seconds / 1e9 / ceiling:>8.1f}%")
    print(f"(tokens/s counts all {tokens} prompt + completion tokens of the step, the same work for every "
          "variant; % ceiling = 4 x params FLOPs per token the backbone actually ran / step time / matmul ceiling)")
    first, *others = summary  # ratios against the first variant listed
    base_peak, base_s, base_cpu = summary[first]
    for v in others:
        peak, seconds, cpu = summary[v]
        print(f"{v} vs {first}: peak RSS x{peak / base_peak:.2f}, tokens/s x{base_s / seconds:.2f} "
              f"(CPU seconds x{cpu / base_cpu:.2f})")
    for name, text in {**BASES, **FLAGS}.items():
        print(f"  {name}: {text}")
    return summary_json


if __name__ == "__main__":
    main()
